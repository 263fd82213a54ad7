"""A window of equal taps over every input channel, one output channel: the cheapest way.

The narrowed walk (:mod:`rfest_keras._narrow`) makes every convolution and pooling window
a kernel of equal taps, summing its input channels into one. TensorFlow runs float64
convolutions and pools with its generic CPU kernels, whose cost grows with the input
channels and which are slowest for the smallest kernels. Equal taps allow cheaper forms
with the same support (all taps positive) and the same values up to rounding:

- the channels are summed first and the window runs on one channel (a 7x7 stride-2
  window on a probe of an image's three channels: 64 ms to 44 ms forward and backward);
- a 1x1 window is then a scale, often by 1, strided by slicing (9 ms to 1.7 ms on a
  9 x 600 x 128 probe), which traces as fewer operations too;
- 1-D and 2-D pooling windows on one channel become such convolutions: TensorFlow's
  float64 average pool costs twice a convolution (3x3: 29 ms against 14 ms forward).

Splitting a k x k window into k x 1 and 1 x k ones does less arithmetic (3x3: 26 ms to
17 ms), but every convolution added costs about a millisecond of tracing: over ResNet50,
DenseNet121, InceptionV3, MobileNetV3Small and NASNetMobile it lost as much as it won
(NASNetMobile: 0.5 s more to trace), so it is not done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["per_axis", "uniform_window"]


def per_axis(value: Any, rank: int) -> tuple[int, ...]:
    """A layer's ``strides``/``dilation_rate`` (an int or one entry per axis) per axis."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank
    return tuple(int(v) for v in values) if values else (1,) * rank


def uniform_window(
    inputs: Any,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    padding: str,
    data_format: str,
    weight: float,
) -> Any:
    """``keras.ops.conv(inputs, full((*kernel, channels, 1), weight), ...)``, its channels
    summed first, a 1x1 window as a scale and a strided slice, in TensorFlow's own
    operations (the narrowed walk runs on TensorFlow only; ``keras.ops.conv`` makes a
    ``tf.function`` at every call, which doubles what a convolution costs to trace).

    ``padding`` is ``'valid'`` or ``'same'``; ``strides`` and ``dilation`` have one entry
    per spatial axis."""
    import tensorflow as tf

    channels_last = data_format == "channels_last"
    channel_axis = -1 if channels_last else 1
    if int(inputs.shape[channel_axis]) > 1:
        inputs = tf.reduce_sum(inputs, axis=channel_axis, keepdims=True)
    if any(k > 1 for k in kernel):
        taps = tf.constant(np.full((*kernel, 1, 1), weight), dtype=inputs.dtype)
        return tf.nn.convolution(
            inputs,
            taps,
            strides=tuple(strides),
            padding=padding.upper(),
            data_format=_FORMATS[channels_last][len(kernel)],
            dilations=tuple(dilation),
        )
    if weight != 1:
        inputs = tf.multiply(inputs, tf.constant(weight, inputs.dtype))
    if all(s == 1 for s in strides):
        return inputs
    steps = tuple(slice(None, None, s) for s in strides)
    every = slice(None)
    return inputs[(every, *steps, every) if channels_last else (every, every, *steps)]


_FORMATS = {
    True: {1: "NWC", 2: "NHWC", 3: "NDHWC"},
    False: {1: "NCW", 2: "NCHW", 3: "NCDHW"},
}
