"""An independent receptive-field calculator for Keras graph models: layer recurrences.

It walks a Functional/Sequential model's graph (nested models included) with, per tensor
and spatial axis, the tensor's size ``n``, its stride ``j`` in input pixels and the input
span ``[lo, hi]`` its unit 0 sees. Per layer, from the layer's own attributes:

- convolution / pooling (kernel ``k``, stride ``s``, dilation ``d``, padding ``p`` before):
  ``lo -= p * j``; ``hi += ((k - 1) * d - p) * j``; ``j *= s``. TensorFlow 'same':
  ``out = ceil(n / s)``, ``pad = max((out - 1) * s + (k - 1) * d + 1 - n, 0)``, ``p = pad // 2``;
- zero padding: ``lo -= p * j``, ``hi -= p * j``; cropping: ``+= c * j``;
- global pooling, Flatten, Reshape: global (every unit sees the whole input);
- layers with several inputs (Add, Multiply, Concatenate...): the union of their spans;
  with a global input (a squeeze-excite gate), global;
- anything else maps each unit to the unit at the same place (pointwise).

Size ``hi - lo + 1``, stride ``j``, padding ``-lo``. No gradients, nothing from rfest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras

__all__ = ["DEFAULT_SIZE", "MAX_INPUT_SIZE", "Span", "field_of"]

# Default input size of every keras.applications model (its ``default_size``).
DEFAULT_SIZE = {
    **dict.fromkeys(
        ["ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny", "ConvNeXtXLarge"], 224
    ),
    **dict.fromkeys(["DenseNet121", "DenseNet169", "DenseNet201"], 224),
    **dict(
        zip(
            [f"EfficientNetB{i}" for i in range(8)],
            [224, 240, 260, 300, 380, 456, 528, 600],
            strict=True,
        )
    ),
    **dict(zip([f"EfficientNetV2B{i}" for i in range(4)], [224, 240, 260, 300], strict=True)),
    "EfficientNetV2S": 384,
    "EfficientNetV2M": 480,
    "EfficientNetV2L": 480,
    "InceptionResNetV2": 299,
    "InceptionV3": 299,
    **dict.fromkeys(["MobileNet", "MobileNetV2", "MobileNetV3Large", "MobileNetV3Small"], 224),
    "NASNetLarge": 331,
    "NASNetMobile": 224,
    **dict.fromkeys(
        ["ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2"], 224
    ),
    **dict.fromkeys(["VGG16", "VGG19"], 224),
    "Xception": 299,
}

# Probe-size caps above rfest's default 4096 where the field needs them: from 299 the
# estimator grows 299 -> 1196 -> 4096 while every unit is clipped, and 4096 - 299 is not
# a multiple of the stride 32, so the 3039 field is seen but not fitted at the cap
# (rfest._estimate; reported). 8192 lets it step to an aligned size.
MAX_INPUT_SIZE = {"InceptionResNetV2": 8192}

_WINDOWED = ("Conv", "Pooling", "DepthwiseConv", "SeparableConv")


@dataclass(frozen=True)
class Span:
    """Per spatial axis ``(n, j, lo, hi)``; ``axes is None``: global."""

    axes: tuple[tuple[int, int, int, int], ...] | None

    def field(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
        if self.axes is None:
            return None
        return (
            tuple(hi - lo + 1 for _, _, lo, hi in self.axes),
            tuple(j for _, j, _, _ in self.axes),
            tuple(-lo for _, _, lo, _ in self.axes),
        )


GLOBAL = Span(None)


def _tuple(value: Any, rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * rank


def _window(span: Span, kernel: Any, strides: Any, dilation: Any, padding: str) -> Span:
    if span.axes is None:
        return span
    rank = len(span.axes)
    ks, ss, ds = _tuple(kernel, rank), _tuple(strides, rank), _tuple(dilation, rank)
    axes = []
    for (n, j, lo, hi), k, s, d in zip(span.axes, ks, ss, ds, strict=True):
        extent = (k - 1) * d + 1
        if padding == "valid":
            out, before = (n - extent) // s + 1, 0
        elif padding == "same":
            out = math.ceil(n / s)
            before = max((out - 1) * s + extent - n, 0) // 2
        elif padding == "causal":
            out, before = (n + extent - 1 - extent) // s + 1, extent - 1
        else:
            raise ValueError(f"padding {padding!r}")
        axes.append((out, j * s, lo - before * j, hi + (extent - 1 - before) * j))
    return Span(tuple(axes))


def _pad(span: Span, amounts: Any, sign: int) -> Span:
    if span.axes is None:
        return span
    rank = len(span.axes)
    if isinstance(amounts, int):
        amounts = ((amounts, amounts),) * rank
    pairs = [(a, a) if isinstance(a, int) else tuple(a) for a in amounts]
    axes = []
    for (n, j, lo, hi), (before, after) in zip(span.axes, pairs, strict=True):
        shift = sign * before * j
        axes.append((n + sign * (before + after), j, lo - shift, hi - shift))
    return Span(tuple(axes))


def _union(spans: list[Span]) -> Span:
    if any(s.axes is None for s in spans):
        return GLOBAL
    first = spans[0].axes
    assert first is not None
    axes = []
    for a, column in enumerate(zip(*(s.axes for s in spans if s.axes), strict=True)):
        ns, js = {c[0] for c in column}, {c[1] for c in column}
        if len(js) != 1:
            raise ValueError(f"branches with strides {js} along axis {a}: not uniform")
        axes.append((max(ns), js.pop(), min(c[2] for c in column), max(c[3] for c in column)))
    return Span(tuple(axes))


def _spans(args: Any) -> list[Span]:
    out: list[Span] = []
    stack = [args]
    while stack:
        item = stack.pop()
        if isinstance(item, Span):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
    return out


def _operation(op: Any) -> Any:
    name = type(op).__name__
    if isinstance(op, keras.Model):
        graph = getattr(op, "_functional", None) or op

        def nested(*args: Any, **kwargs: Any) -> Any:
            return graph._run_through_graph(_spans(args), operation_fn=_operation)

        return nested

    def apply(*args: Any, **kwargs: Any) -> Span:
        spans = _spans(args)
        if len(spans) != 1:
            return _union(spans)
        (span,) = spans
        if name.startswith("Global") or name in ("Flatten", "Reshape"):
            return GLOBAL
        if name.startswith(("ZeroPadding",)):
            return _pad(span, op.padding, 1)
        if name.startswith("Cropping"):
            return _pad(span, op.cropping, -1)
        if any(w in name for w in _WINDOWED) and hasattr(op, "strides"):
            kernel = getattr(op, "kernel_size", None) or op.pool_size
            dilation = getattr(op, "dilation_rate", 1)
            return _window(span, kernel, op.strides, dilation, op.padding)
        return span

    return apply


def field_of(
    model: keras.Model, spatial: tuple[int, ...], layer: str | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(size, stride, padding) of ``layer``'s output (None: the model's), or None if global."""
    source = Span(tuple((n, 1, 0, 0) for n in spatial))
    graph = model
    if layer is not None:
        graph = keras.Model(model.inputs, model.get_layer(layer).output)
    result = graph._run_through_graph([source], operation_fn=_operation)
    (span,) = _spans(result)
    return span.field()
