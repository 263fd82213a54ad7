"""PyTorch backend of rfest (entry point ``torch``): autograd on any ``nn.Module``."""

from rfest.kit import MODEL_OUTPUT
from rfest_torch._provider import TorchGradientProvider, provider

__all__ = ["MODEL_OUTPUT", "TorchGradientProvider", "provider"]
