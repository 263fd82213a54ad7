"""The toy framework: depthwise 2-D layers on ``(C, H, W)`` numpy arrays, and their adjoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Conv:
    """Depthwise convolution: the same ``weight`` (k, k) for every channel."""

    weight: np.ndarray
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class AvgPool:
    kernel: int
    stride: int


@dataclass
class MaxPool:
    kernel: int
    stride: int


Layer = Conv | AvgPool | MaxPool


@dataclass
class Net:
    """Layers applied in order, by name."""

    layers: dict[str, Layer] = field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers.values():
            x = forward(layer, x)
        return x


def out_size(layer: Layer, n: int) -> int:
    """Output length along one axis of an input of length ``n``."""
    pad = layer.padding if isinstance(layer, Conv) else 0
    reach = (layer.dilation if isinstance(layer, Conv) else 1) * (layer.kernel - 1) + 1
    size = (n + 2 * pad - reach) // layer.stride + 1
    if size < 1:
        raise ValueError(f"an input of {n} pixels is smaller than the layer's window {reach}")
    return size


def _taps(layer: Conv | AvgPool) -> tuple[np.ndarray, int, int]:
    if isinstance(layer, AvgPool):
        return np.full((layer.kernel, layer.kernel), 1.0 / layer.kernel**2), 0, 1
    return layer.weight, layer.padding, layer.dilation


def _windows(layer: Layer, shape: tuple[int, int]) -> list[tuple[int, int, slice, slice]]:
    (oh, ow), dilation = (out_size(layer, n) for n in shape), getattr(layer, "dilation", 1)
    return [
        (
            a,
            b,
            slice(a * dilation, a * dilation + layer.stride * (oh - 1) + 1, layer.stride),
            slice(b * dilation, b * dilation + layer.stride * (ow - 1) + 1, layer.stride),
        )
        for a in range(layer.kernel)
        for b in range(layer.kernel)
    ]


def forward(layer: Layer, x: np.ndarray) -> np.ndarray:
    """The layer on ``x`` (C, H, W)."""
    if isinstance(layer, MaxPool):
        return _max_windows(layer, x).max(axis=(-1, -2))
    weight, pad, _ = _taps(layer)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out = 0.0
    for a, b, rows, cols in _windows(layer, x.shape[1:]):
        out = out + weight[a, b] * xp[:, rows, cols]
    return np.asarray(out)


def backward(layer: Layer, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """The gradient with respect to the layer's input ``x`` given ``grad`` at its output."""
    if isinstance(layer, MaxPool):
        windows = _max_windows(layer, x)
        c, oh, ow, k, _ = windows.shape
        flat = windows.reshape(c, oh, ow, k * k).argmax(axis=-1)
        ci, i, j = np.indices((c, oh, ow))
        result = np.zeros_like(x)
        np.add.at(result, (ci, i * layer.stride + flat // k, j * layer.stride + flat % k), grad)
        return result
    weight, pad, _ = _taps(layer)
    h, w = x.shape[1:]
    result = np.zeros((x.shape[0], h + 2 * pad, w + 2 * pad), dtype=grad.dtype)
    for a, b, rows, cols in _windows(layer, (h, w)):
        result[:, rows, cols] += weight[a, b] * grad
    return result[:, pad : pad + h, pad : pad + w]


def _max_windows(layer: MaxPool, x: np.ndarray) -> np.ndarray:
    k, s = layer.kernel, layer.stride
    out_size(layer, x.shape[1]), out_size(layer, x.shape[2])  # raises when too small
    view = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return view[:, ::s, ::s]
