"""Keras 3 backend of rfest (entry point ``keras``): tensorflow, jax or torch underneath."""

from rfest_keras._provider import MODEL_OUTPUT, KerasGradientProvider, provider

__all__ = ["MODEL_OUTPUT", "KerasGradientProvider", "provider"]
