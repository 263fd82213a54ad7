"""Two TensorFlow CPU quirks rfest steers around.

- TensorFlow's registered gradient of a convolution always computes the kernel gradient
  too, even when eager mode knows it is not wanted (the kernel is not watched): wasted
  work for rfest, which only needs the input gradient, and on TensorFlow 2.21 with
  oneDNN the kernel gradient of a 1x1 stride-2 convolution with 8 or 12 channels aborts
  the process (``conv2d_backprop_filter``). While :func:`input_gradients_only` is active
  the convolutions' gradient functions skip whatever the tape marks as not needed
  (``op.skip_input_indices``) and compute everything else as TensorFlow does. Graph
  programs prune unused gradients on their own and are not affected.
- oneDNN's float32 CPU kernels (on by default on x86) abort or corrupt memory on some
  thin probe inputs; it has no float64 kernels, so float64 passes run TensorFlow's own.
  :func:`onednn_active` tells the provider to keep every pass in float64.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["input_gradients_only", "onednn_active"]

_lock = threading.RLock()
_depth = 0
_saved: dict[str, Any] = {}


def _attrs(op: Any, *names: str) -> dict[str, Any]:
    return {name: op.get_attr(name) for name in names}


def _conv2d(op: Any, grad: Any) -> Any:
    from tensorflow.python.ops import array_ops, gen_nn_ops

    attrs = _attrs(
        op, "dilations", "strides", "padding", "explicit_paddings", "use_cudnn_on_gpu",
        "data_format",
    )  # fmt: skip
    return gen_nn_ops.conv2d_backprop_input(
        array_ops.shape(op.inputs[0]), op.inputs[1], grad, **attrs
    )


def _depthwise(op: Any, grad: Any) -> Any:
    from tensorflow.python.ops import array_ops, gen_nn_ops

    attrs = _attrs(op, "dilations", "strides", "padding", "explicit_paddings", "data_format")
    return gen_nn_ops.depthwise_conv2d_native_backprop_input(
        array_ops.shape(op.inputs[0]), op.inputs[1], grad, **attrs
    )


def _conv3d(op: Any, grad: Any) -> Any:
    from tensorflow.python.ops import array_ops, gen_nn_ops

    attrs = _attrs(op, "dilations", "strides", "padding", "data_format")
    return gen_nn_ops.conv3d_backprop_input_v2(
        array_ops.shape(op.inputs[0]), op.inputs[1], grad, **attrs
    )


def _transposed(op: Any, grad: Any) -> Any:
    from tensorflow.python.ops import gen_nn_ops

    attrs = _attrs(
        op, "dilations", "strides", "padding", "explicit_paddings", "use_cudnn_on_gpu",
        "data_format",
    )  # fmt: skip
    return gen_nn_ops.conv2d(grad, op.inputs[1], **attrs)


# op type -> (index of the data input, index of the kernel, gradient of the data input)
_DATA_ONLY: dict[str, tuple[int, int, Callable[[Any, Any], Any]]] = {
    "Conv2D": (0, 1, _conv2d),
    "DepthwiseConv2dNative": (0, 1, _depthwise),
    "Conv3D": (0, 1, _conv3d),
    "Conv2DBackpropInput": (2, 1, _transposed),
}


def _skipping(original: Callable[..., Any], data: int, kernel: int, rule: Any) -> Any:
    def gradient(op: Any, grad: Any) -> Any:
        skipped = getattr(op, "skip_input_indices", None) or ()
        if kernel not in skipped:
            return original(op, grad)
        grads: list[Any] = [None] * len(op.inputs)
        if data not in skipped:
            grads[data] = rule(op, grad)
        return grads

    return gradient


@contextlib.contextmanager
def input_gradients_only() -> Iterator[None]:
    """Convolution gradients skip unwatched kernels for the duration (re-entrant; the
    registry is put back as it was when the outermost one ends)."""
    global _depth
    from tensorflow.python.framework import ops

    registry = ops._gradient_registry._registry
    with _lock:
        if _depth == 0:
            for name, (data, kernel, rule) in _DATA_ONLY.items():
                if name in registry:
                    _saved[name] = registry[name]["type"]
                    registry[name]["type"] = _skipping(_saved[name], data, kernel, rule)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for name, original in _saved.items():
                    registry[name]["type"] = original
                _saved.clear()


def onednn_active() -> bool:
    """TensorFlow runs float32 convolutions with oneDNN (``TF_ENABLE_ONEDNN_OPTS``, read
    when TensorFlow was imported)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without the switch: assume the default, on
        return True
    return bool(_pywrap_util_port.IsMklEnabled())
