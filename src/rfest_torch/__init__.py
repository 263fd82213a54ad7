"""PyTorch backend of rfest (entry point ``torch``): autograd on any ``nn.Module``."""

from rfest_torch._provider import MODEL_OUTPUT, TorchGradientProvider, provider

__all__ = ["MODEL_OUTPUT", "TorchGradientProvider", "provider"]
