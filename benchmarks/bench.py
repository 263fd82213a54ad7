"""Speed and memory of rfest against one forward+backward pass of the same model.

Run ``python benchmarks/bench.py`` (or ``nox -s bench``). Each case runs in its own
process so peak resident memory is its own; times are medians of repeated runs after a
warm-up, measured in that process. Prints a table, and checks every answer is exact.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _median_time(function: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _torch_pass(model: Any, shape: tuple[int, ...]) -> Callable[[], None]:
    import torch

    def run() -> None:
        x = torch.ones((1, *shape), requires_grad=True)
        model(x).sum().backward()
        model.zero_grad(set_to_none=True)

    return run


def _resnet50_trunk(model: Any) -> Any:
    """ResNet-50 up to layer4: the part of the pass rfest measures (no pooling, no head)."""
    import torch

    return torch.nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool,
        model.layer1, model.layer2, model.layer3, model.layer4,
    )  # fmt: skip


def case_resnet50_torch(repeat: int) -> dict[str, Any]:
    import torch

    import rfest
    from torch_models import ResNet50

    torch.manual_seed(0)
    model = ResNet50().eval()
    trunk = _resnet50_trunk(model)
    baseline = _torch_pass(trunk, (3, 224, 224))
    baseline()
    base = _median_time(baseline, repeat)

    def square() -> None:  # what a user would otherwise do: centre unit of a 512² input
        x = torch.ones((1, 3, 512, 512), requires_grad=True)
        y = trunk(x)
        y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()

    square()
    square_time = _median_time(square, repeat)
    results = {}
    start = time.perf_counter()
    rfest.compute(model, (3, 224, 224), output="layer4")
    first_call = time.perf_counter() - start
    for dtype in ("float64", "float32"):
        rf = rfest.compute(model, (3, 224, 224), output="layer4", dtype=dtype)
        results[dtype] = _median_time(
            lambda dtype=dtype: rfest.compute(model, (3, 224, 224), output="layer4", dtype=dtype),
            repeat,
        )
        assert (rf.size, rf.stride, rf.padding) == ((427,) * 2, (32,) * 2, (213,) * 2), rf
    return {
        "case": "ResNet-50 (torch, torchvision layout) 3x224x224 layer4 -> 427/32/213",
        "baseline_s": base,
        "rfest_s": results["float64"],
        "rfest_f32_s": results["float32"],
        "rfest_first_call_s": first_call,
        "square_512_s": square_time,
    }


def case_resnet50_all_blocks(repeat: int) -> dict[str, Any]:
    import torch

    import rfest
    from torch_models import ResNet50

    torch.manual_seed(0)
    model = ResNet50().eval()
    names = [
        f"layer{s}.{b}" for s, n in zip(range(1, 5), (3, 4, 6, 3), strict=True) for b in range(n)
    ]
    baseline = _torch_pass(_resnet50_trunk(model), (3, 224, 224))
    baseline()
    base = _median_time(baseline, repeat)
    rfs = rfest.compute(model, (3, 224, 224), output=names)
    # Worked by hand: the stem and max pool give 11 at jump 4; every 3x3 adds 2 * jump at
    # its input, and the first 3x3 of stages 2-4 then doubles the jump.
    expected, size, jump = [], 11, 4
    for stage, blocks in enumerate((3, 4, 6, 3)):
        for block in range(blocks):
            size += 2 * jump
            if stage > 0 and block == 0:
                jump *= 2
            expected.append(size)
    measured = [rfs[n].size[0] for n in names]
    timed = _median_time(lambda: rfest.compute(model, (3, 224, 224), output=names), repeat)
    assert measured == expected, (measured, expected)
    return {
        "case": "ResNet-50 (torch): all 16 bottleneck outputs in one call",
        "baseline_s": base,
        "rfest_s": timed,
        "sizes": measured,
    }


def case_resnet50_report(repeat: int) -> dict[str, Any]:
    """rfest.report of every module of ResNet-50 (each call of a shared ReLU its own row),
    against one f32 forward+backward and against measuring the same rows one by one."""
    import torch

    import rfest
    from torch_models import ResNet50

    torch.manual_seed(0)
    model = ResNet50().eval()
    baseline = _torch_pass(_resnet50_trunk(model), (3, 224, 224))
    baseline()
    base = _median_time(baseline, repeat)
    report = rfest.report(model, (3, 224, 224))
    sizes = {record.name: record.size for record in report}
    # By hand: stem k7/2 then max pool k3/2 -> 7 + 2 * 2 = 11; each block adds 2 x the
    # jump at its 3x3 (see case_resnet50_all_blocks); relu:1 follows a 1x1 conv.
    assert sizes["maxpool"] == (11, 11), sizes
    assert sizes["layer1.0.relu:1"] == (11, 11), sizes
    assert sizes["layer1.0.relu:2"] == (19, 19), sizes
    assert sizes["layer4"] == (427, 427), sizes
    timed = _median_time(lambda: rfest.report(model, (3, 224, 224)), repeat)
    names = [r.name for r in report if r.error is None]
    start = time.perf_counter()
    alone = rfest.compute(model, (3, 224, 224), output=names)
    per_layer = time.perf_counter() - start
    for record in report:
        if record.error is None:
            rf = alone[record.name]
            assert (record.size, record.stride, record.padding) == (
                rf.size,
                rf.stride,
                rf.padding,
            ), record.name
    return {
        "case": f"ResNet-50 (torch): rfest.report, all {len(sizes)} module calls",
        "baseline_s": base,
        "rfest_s": timed,
        "per_layer_s": per_layer,
    }


def case_resnet50_report_keras(repeat: int) -> dict[str, Any]:
    """rfest.report of every layer of keras.applications.ResNet50 (Keras measures layer by
    layer: its provider has no gradient_maps_many yet)."""
    import keras
    import tensorflow as tf

    import rfest

    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))

    def look_once() -> float:
        x = tf.ones((1, 224, 224, 3))
        start = time.perf_counter()
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(model(x))
        tape.gradient(total, x)
        return time.perf_counter() - start

    look_once()
    base = statistics.median(look_once() for _ in range(repeat))
    start = time.perf_counter()
    report = rfest.report(model)
    timed = time.perf_counter() - start
    sizes = {record.name: record.size for record in report}
    # Keras layout, stride on the first 1x1 of each stage: conv5_block3_out 483 (issue 4).
    assert sizes["conv5_block3_out"] == (483, 483), sizes["conv5_block3_out"]
    return {
        "case": f"ResNet50 (keras/tensorflow): rfest.report, all {len(sizes)} layers",
        "baseline_s": base,
        "rfest_s": timed,
    }


def case_conv3d_torch(repeat: int) -> dict[str, Any]:
    import torch
    from torch import nn

    import rfest

    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv3d(1, 16, 3, padding=1)]
    for _ in range(3):
        layers += [
            nn.Conv3d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv3d(16, 16, 3, padding=1),
        ]
    model = nn.Sequential(*layers)
    # r: 3; per stage k3/2 at jump j adds 2j, k3 at 2j adds 4j: j=1 -> 3+2+4=9, j=2 -> 9+4+8=21,
    # j=4 -> 21+8+16=45; stride 8, padding 22.
    baseline = _torch_pass(model, (1, 64, 64, 64))
    baseline()
    base = _median_time(baseline, repeat)
    rf = rfest.compute(model, (1, 64, 64, 64))
    assert (rf.size, rf.stride, rf.padding) == ((45,) * 3, (8,) * 3, (22,) * 3), rf
    timed = _median_time(lambda: rfest.compute(model, (1, 64, 64, 64)), repeat)
    return {
        "case": "3-D conv net (torch) 1x64x64x64 -> 45/8/22",
        "baseline_s": base,
        "rfest_s": timed,
    }


def _vit_s16() -> Any:
    """ViT-S/16-sized (width 384, 12 blocks, 6 heads, 16-pixel patches), with its tokens put
    back on their 14 x 14 grid, the output a user measures."""
    import torch
    from torch import nn

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 384, 16, stride=16)
            self.blocks = nn.Sequential(
                *(
                    nn.TransformerEncoderLayer(384, 6, 1536, batch_first=True, norm_first=True)
                    for _ in range(12)
                )
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x)
            n, c, h, w = t.shape
            t = self.blocks(t.flatten(2).transpose(1, 2))
            return t.transpose(1, 2).reshape(n, c, h, w)

    torch.manual_seed(0)
    return ViT().eval()


def case_vit_s16_torch(repeat: int) -> dict[str, Any]:
    import rfest

    model = _vit_s16()
    baseline = _torch_pass(model, (3, 224, 224))
    baseline()
    base = _median_time(baseline, repeat)
    rf = rfest.compute(model, (3, 224, 224))
    assert rf.is_global, rf  # every token attends to every patch
    timed = _median_time(lambda: rfest.compute(model, (3, 224, 224)), repeat)
    return {
        "case": "ViT-S/16-sized (torch) 3x224x224 token grid -> global",
        "baseline_s": base,
        "rfest_s": timed,
    }


def _swin_t() -> Any:
    """Swin-T-sized (patches 4, widths 96-768, depths 2-2-6-2, heads 3-24, windows 7 shifted
    by 3, torchvision's -100 masks), written here; feature maps (N, C, H, W) between blocks.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    window, shift = 7, 3

    def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        return F.pad(x, (0, -w % multiple, 0, -h % multiple))

    def windows(x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        x = x.view(n, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, window * window, c)

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, shifted: bool) -> None:
            super().__init__()
            self.heads, self.shift = heads, shift if shifted else 0
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def _mask(self, hp: int, wp: int, device: torch.device) -> torch.Tensor:
            region = torch.zeros(hp, wp, device=device)
            cuts = (slice(0, -window), slice(-window, -self.shift), slice(-self.shift, None))
            for k, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
                region[rows, cols] = k
            ids = windows(region[None, :, :, None])[..., 0]
            different = ids[:, :, None] != ids[:, None, :]
            return torch.zeros(different.shape, device=device).masked_fill(different, -100.0)

        def _attend(self, x: torch.Tensor) -> torch.Tensor:
            n, h, w, c = x.shape
            if self.shift:
                x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
            tokens = windows(x)
            b, t, _ = tokens.shape
            qkv = self.qkv(tokens).reshape(b, t, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            mask = None
            if self.shift:
                mask = self._mask(h, w, x.device).repeat(n, 1, 1)[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = self.proj(out.transpose(1, 2).reshape(b, t, c))
            out = out.view(n, h // window, w // window, window, window, c)
            out = out.permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
            if self.shift:
                out = torch.roll(out, (self.shift, self.shift), (1, 2))
            return out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            t = pad_to(x, window).permute(0, 2, 3, 1)
            t = t + self._attend(self.norm1(t))
            t = t + self.mlp(self.norm2(t))
            return t.permute(0, 3, 1, 2)[..., :h, :w]

    class Merge(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.norm, self.reduce = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = pad_to(x, 2)
            parts = torch.cat([x[..., i::2, j::2] for i in (0, 1) for j in (0, 1)], 1)
            return self.reduce(self.norm(parts.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)

    class SwinT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 96, 4, stride=4)
            stages: list[nn.Module] = []
            for i, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24), strict=True)):
                dim = 96 * 2**i
                blocks = [Block(dim, heads, shifted=k % 2 == 1) for k in range(depth)]
                stages.append(nn.Sequential(*([Merge(dim // 2)] if i else []), *blocks))
            self.stages = nn.Sequential(*stages)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.stages(self.embed(x))

    torch.manual_seed(0)
    return SwinT().eval()


SWIN_STAGES = ["stages.0", "stages.1", "stages.2", "stages.3"]


def case_swin_t_torch(repeat: int) -> dict[str, Any]:
    import warnings

    import rfest

    model = _swin_t()
    baseline = _torch_pass(model, (3, 224, 224))
    baseline()
    base = _median_time(baseline, repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rfest.NonUniformWarning)

        def measure() -> dict[str, Any]:
            return rfest.compute(model, (3, 224, 224), output=SWIN_STAGES)

        fields = measure()
        # By hand: stage 1's shifted block joins two windows of 7 patches of 4 pixels.
        assert fields["stages.0"].size == (56, 56)
        assert not fields["stages.0"].uniform
        timed = _median_time(measure, repeat)
    stages = "; ".join(
        "global" if rf.is_global else f"{rf.size[0]}/{rf.stride[0]}" for rf in fields.values()
    )
    return {
        "case": f"Swin-T-sized (torch) 3x224x224, stages 1-4 size/stride: {stages}",
        "baseline_s": base,
        "rfest_s": timed,
    }


def _keras_case(
    build: Callable[[], Any],
    output: str,
    shape: tuple[int, int, int],
    expected: tuple[int, int, int],
    repeat: int,
) -> dict[str, Any]:
    """rfest on a Keras application against what a user pays to look at the model once:
    rebuilding it from its config and one eager float32 forward+backward at ``shape``."""
    import keras
    import tensorflow as tf

    import rfest

    model = build()

    def look_once() -> tuple[float, float]:
        start = time.perf_counter()
        copy = keras.Model.from_config(model.get_config())
        rebuilt = time.perf_counter()
        x = tf.ones((1, *shape))
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(copy(x))
        tape.gradient(total, x)
        return rebuilt - start, time.perf_counter() - rebuilt

    look_once()
    looks = [look_once() for _ in range(repeat)]
    rebuild = statistics.median(t for t, _ in looks)
    passes = statistics.median(t for _, t in looks)
    rf = rfest.compute(model, output=output)
    size, stride, padding = expected
    assert (rf.size, rf.stride, rf.padding) == ((size,) * 2, (stride,) * 2, (padding,) * 2), rf
    timed = _median_time(lambda: rfest.compute(model, output=output), repeat)
    return {
        "case": f"{model.name} (keras/tensorflow) {shape} {output} -> {size}/{stride}/{padding}",
        "baseline_s": rebuild + passes,
        "rfest_s": timed,
        "rebuild_s": rebuild,
        "forward_backward_s": passes,
    }


def case_inception_v3_keras(repeat: int) -> dict[str, Any]:
    import keras

    def build() -> Any:
        return keras.applications.InceptionV3(weights=None, input_shape=(299, 299, 3))

    # Issue 4 table: Mixed_7c (mixed10) of InceptionV3 at 299: 1311 / 32 / 618.
    return _keras_case(build, "mixed10", (299, 299, 3), (1311, 32, 618), repeat)


def case_densenet121_keras(repeat: int) -> dict[str, Any]:
    import keras

    def build() -> Any:
        return keras.applications.DenseNet121(weights=None, input_shape=(224, 224, 3))

    # Worked by hand: stem pad 3 + k7/2 -> r7 j2 p3; pad 1 + max 3/2 -> r11 j4 p5; each
    # dense layer's 'same' 3x3 at jump j adds 2j to the size and j to the padding, each
    # transition's 2x2/2 average pool adds j and doubles j: block1 (6 layers, j4) r59 p29,
    # -> r63 j8; block2 (12) r255 p125 -> r263 j16; block3 (24) r1031 p509 -> r1047 j32;
    # block4 (16) r2071 p1021.
    return _keras_case(build, "relu", (224, 224, 3), (2071, 32, 1021), repeat)


def _jax_case(
    model: Any,
    shape: tuple[int, ...],
    output: str | None,
    trunk: Callable[[Any], Any],
    expected: tuple[int, int, int],
    label: str,
    repeat: int,
) -> dict[str, Any]:
    """rfest on a JAX model against one jitted float32 ``jax.grad`` of ``trunk`` (the model
    up to the measured output) at ``shape``. The first calls of both are timed too, rfest's
    first, each including its compilations, in this fresh process."""
    import jax
    import jax.numpy as jnp

    import rfest

    x = jnp.ones((1, *shape), jnp.float32)
    grad = jax.jit(jax.grad(lambda x: trunk(x).sum()))

    def baseline() -> None:
        grad(x).block_until_ready()

    start = time.perf_counter()
    rf = rfest.compute(model, shape, output=output, backend="jax")
    first_call = time.perf_counter() - start
    start = time.perf_counter()
    baseline()
    first_baseline = time.perf_counter() - start
    base = _median_time(baseline, repeat)
    size, stride, padding = expected
    n = len(shape) - 1
    assert (rf.size, rf.stride, rf.padding) == ((size,) * n, (stride,) * n, (padding,) * n), rf
    timed = _median_time(lambda: rfest.compute(model, shape, output=output, backend="jax"), repeat)
    return {
        "case": f"{label} {shape} {output or ''} -> {size}/{stride}/{padding}",
        "baseline_s": base,
        "rfest_s": timed,
        "rfest_first_call_s": first_call,
        "baseline_first_call_s": first_baseline,
    }


def _linen_layer(module: Any, variables: Any, name: str) -> Callable[[Any], Any]:
    """The Linen model up to ``name`` (its first call), as a function of the input."""

    def trunk(x: Any) -> Any:
        _, state = module.apply(
            variables,
            x,
            capture_intermediates=lambda m, method: m.name == name,
            mutable=["intermediates"],
        )
        return state["intermediates"][name]["__call__"][0]

    return trunk


def case_resnet50_linen(repeat: int) -> dict[str, Any]:
    from flax_models import ResNet50, linen_pair

    module, variables = linen_pair(ResNet50(), (224, 224, 3))
    trunk = _linen_layer(module, variables, "layer4")
    # Worked by hand in case_resnet50_torch: the same layout, 427 / 32 / 213.
    return _jax_case(
        (module, variables), (224, 224, 3), "layer4", trunk, (427, 32, 213),
        "ResNet-50 (Flax Linen)", repeat,
    )  # fmt: skip


def case_resnet50_nnx(repeat: int) -> dict[str, Any]:
    from flax import nnx

    from flax_models import NNXResNet50, nnx_model

    model: Any = nnx_model(NNXResNet50)

    def trunk(x: Any) -> Any:
        x = nnx.relu(model.bn1(model.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return model.layer4(model.layer3(model.layer2(model.layer1(x))))

    return _jax_case(
        model, (224, 224, 3), "layer4", trunk, (427, 32, 213), "ResNet-50 (Flax NNX)", repeat
    )


def case_conv3d_jax(repeat: int) -> dict[str, Any]:
    import flax.linen as nn

    from flax_models import linen_pair

    class Conv3D(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.Conv(16, (3, 3, 3), padding=1)(x)
            for _ in range(3):
                x = nn.relu(nn.Conv(16, (3, 3, 3), strides=2, padding=1)(x))
                x = nn.Conv(16, (3, 3, 3), padding=1)(x)
            return x

    module, variables = linen_pair(Conv3D(), (64, 64, 64, 1))
    # By hand as in case_conv3d_torch: 45 / 8 / 22.
    return _jax_case(
        (module, variables), (64, 64, 64, 1), None,
        lambda x: module.apply(variables, x), (45, 8, 22), "3-D conv net (Flax Linen)", repeat,
    )  # fmt: skip


def case_lax_function(repeat: int) -> dict[str, Any]:
    from flax_models import readme_function

    net = readme_function()
    # The receptivefield README network in jax.lax: 5, 3, pool 2, 3, 3, pool 2, 3, 3 ->
    # r 5, 7, 8 (j2), 12, 16, 18 (j4), 26, 34; stride 4, padding 0 (all VALID).
    return _jax_case(net, (96, 96, 3), None, net, (34, 4, 0), "README net (jax.lax)", repeat)


def case_keras_application(name: str, repeat: int) -> dict[str, Any]:
    """One row of the Keras catalogue: ``keras.applications.<name>`` (weights=None,
    include_top=False, default size), its last feature map, against one eager float32
    forward+backward of the same model (no rebuild), checked against layer recurrences.

    rfest runs first (its first call, after one small TensorFlow op), so the peak memory
    measured right after it is rfest's (model included); the baseline's own peak (large
    ConvNeXts take gigabytes for one eager float32 pass) is reported apart."""
    import keras
    import tensorflow as tf

    import rfest
    from keras_recurrence import DEFAULT_SIZE, MAX_INPUT_SIZE, field_of

    size = DEFAULT_SIZE[name]
    model = getattr(keras.applications, name)(
        weights=None, include_top=False, input_shape=(size, size, 3)
    )
    expected = field_of(model, (size, size))
    tf.reduce_sum(tf.ones((2, 2)))
    start = time.perf_counter()
    rf = rfest.compute(model, max_input_size=MAX_INPUT_SIZE.get(name, 4096))
    timed = time.perf_counter() - start
    rfest_peak = _peak_rss_gib()
    got = None if rf.is_global else (rf.size, rf.stride, rf.padding)
    assert got == expected, (got, expected)
    field = "global" if expected is None else f"{expected[0][0]}/{expected[1][0]}/{expected[2][0]}"
    print(json.dumps({"rfest_s": timed, "rfest_peak_rss_gib": rfest_peak}), flush=True)

    def forward_backward() -> None:
        x = tf.ones((1, size, size, 3))
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(model(x, training=False))
        tape.gradient(total, x)

    forward_backward()
    base = _median_time(forward_backward, repeat)
    return {
        "case": f"{name} (keras/tensorflow) {size}x{size} -> {field}",
        "baseline_s": base,
        "rfest_s": timed,
        "rfest_peak_rss_gib": rfest_peak,
    }


def case_keras_on_backend(backend: str, name: str, repeat: int) -> dict[str, Any]:
    """``keras.applications.<name>`` on KERAS_BACKEND=jax or =torch: rfest against that
    framework's float32 forward+backward (JAX: ``jax.jit(jax.grad(...))`` of
    ``stateless_call``), both warmed up (a repeat on the same model), and both first
    calls in this fresh process (JAX: with their compilation)."""
    import keras
    import numpy as np

    import rfest
    from keras_recurrence import DEFAULT_SIZE, MAX_INPUT_SIZE, field_of

    assert keras.backend.backend() == backend, keras.backend.backend()
    size = DEFAULT_SIZE[name]
    model = getattr(keras.applications, name)(
        weights=None, include_top=False, input_shape=(size, size, 3)
    )
    x = np.ones((1, size, size, 3), "float32")
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        def total(x: Any) -> Any:
            return model.stateless_call(trainable, frozen, x, training=False)[0].sum()

        grad = jax.jit(jax.grad(total))

        def forward_backward() -> None:
            jax.block_until_ready(grad(x))

    else:
        import torch

        def forward_backward() -> None:
            tensor = torch.ones((1, size, size, 3), requires_grad=True)
            model(tensor, training=False).sum().backward()

    start = time.perf_counter()
    forward_backward()
    first_pass = time.perf_counter() - start
    base = _median_time(forward_backward, repeat)
    expected = field_of(model, (size, size))
    cap = MAX_INPUT_SIZE.get(name, 4096)
    start = time.perf_counter()
    rf = rfest.compute(model, max_input_size=cap)
    first = time.perf_counter() - start
    got = None if rf.is_global else (rf.size, rf.stride, rf.padding)
    assert got == expected, (got, expected)
    again = _median_time(lambda: rfest.compute(model, max_input_size=cap), max(1, repeat - 1))
    field = "global" if expected is None else f"{expected[0][0]}/{expected[1][0]}/{expected[2][0]}"
    return {
        "case": f"{name} (keras/{backend}) {size}x{size} -> {field}",
        "baseline_s": base,  # steady state, as rfest_s: both warmed up
        "rfest_s": again,
        "rfest_first_call_s": first,
        "baseline_first_call_s": first_pass,
    }


def _seconds(value: float) -> str:
    """Seconds, with four decimals below 0.1 s (the plain function's milliseconds)."""
    return f"{value:8.4f}" if value < 0.1 else f"{value:8.2f}"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


CASES: dict[str, Callable[[int], dict[str, Any]]] = {
    "resnet50": case_resnet50_torch,
    "resnet50-blocks": case_resnet50_all_blocks,
    "resnet50-report": case_resnet50_report,
    "resnet50-report-keras": case_resnet50_report_keras,
    "conv3d": case_conv3d_torch,
    "vit-s16": case_vit_s16_torch,
    "swin-t": case_swin_t_torch,
    "inception-v3": case_inception_v3_keras,
    "densenet121": case_densenet121_keras,
    "resnet50-linen": case_resnet50_linen,
    "resnet50-nnx": case_resnet50_nnx,
    "conv3d-jax": case_conv3d_jax,
    "lax-function": case_lax_function,
}


KERAS_APPLICATIONS = "keras-applications"
"""Case group: every keras.applications model (``keras:<Name>`` runs one)."""

KERAS_BACKENDS = ("keras-jax:ResNet50", "keras-torch:ResNet50")
"""Cases (not run by default): an application on the JAX and torch Keras backends
(``keras-jax:<Name>``, ``keras-torch:<Name>``)."""


def _keras_backend(name: str) -> str:
    prefix = name.partition(":")[0]
    return prefix.removeprefix("keras-") if prefix in ("keras-jax", "keras-torch") else "tensorflow"


def _expand(names: list[str]) -> list[str]:
    out = []
    for name in names:
        if name == KERAS_APPLICATIONS:
            from keras_recurrence import DEFAULT_SIZE

            out += [f"keras:{app}" for app in sorted(DEFAULT_SIZE)]
        else:
            out.append(name)
    return out


def _child(name: str, repeat: int) -> None:
    if name.startswith("keras:"):
        result = case_keras_application(name.partition(":")[2], repeat)
    elif _keras_backend(name) != "tensorflow":
        result = case_keras_on_backend(_keras_backend(name), name.partition(":")[2], repeat)
    else:
        result = CASES[name](repeat)
    result["peak_rss_gib"] = _peak_rss_gib()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "cases",
        nargs="*",
        default=list(CASES),
        help=f"any of {list(CASES)}, {KERAS_APPLICATIONS!r} (the Keras catalogue table: "
        f"every application, one process each), 'keras:<Application>', or "
        f"'keras-jax:<Application>' / 'keras-torch:<Application>' (e.g. {KERAS_BACKENDS})",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.repeat)
        return
    print(f"{'case':70} {'rfest s':>8} {'1 f+b s':>8} {'ratio':>6} {'peak GiB':>8}")
    for name in _expand(args.cases):
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--repeat", str(args.repeat)],
            capture_output=True,
            text=True,
            env=os.environ
            | {
                "PYTHONWARNINGS": "ignore",
                "KERAS_BACKEND": _keras_backend(name),
                "TF_ENABLE_ONEDNN_OPTS": "0",
            },
        )
        if out.returncode != 0 and "rfest_s" not in out.stdout:
            print(f"{name}: FAILED\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if "case" not in r:  # the baseline failed after rfest's figures were out
            print(
                f"{name}: rfest {r['rfest_s']:.2f} s, peak {r['rfest_peak_rss_gib']:.2f} GiB; "
                f"baseline FAILED\n{out.stderr[-2000:]}"
            )
            continue
        ratio = r["rfest_s"] / r["baseline_s"]
        times = f"{_seconds(r['rfest_s'])} {_seconds(r['baseline_s'])} {ratio:6.1f}"
        print(f"{r['case']:70} {times} {r['peak_rss_gib']:8.2f}")
        if "rfest_peak_rss_gib" in r:
            print(
                f"{'  peak GiB after rfest, before the baseline ran':70} {'':24} "
                f"{r['rfest_peak_rss_gib']:8.2f}"
            )
        extras = ("rfest_f32_s", "rfest_first_call_s", "square_512_s", "rebuild_s", "per_layer_s")
        if "baseline_first_call_s" in r:
            first = r["rfest_first_call_s"] / r["baseline_first_call_s"]
            print(
                f"{'  first calls (rfest, 1 f+b), fresh process':70} "
                f"{_seconds(r['rfest_first_call_s'])} {_seconds(r['baseline_first_call_s'])} "
                f"{first:6.1f}"
            )
        for key in (*extras, "forward_backward_s"):
            if key in r and not (key == "rfest_first_call_s" and "baseline_first_call_s" in r):
                print(f"{'  ' + key:70} {r[key]:8.2f} {'':8} {r[key] / r['baseline_s']:6.1f}")
        if "square_512_s" in r:
            faster = r["square_512_s"] / r["rfest_s"]
            print(f"{'  rfest is faster than the 512² square probe by':70} {faster:8.1f}x")


if __name__ == "__main__":
    main()
