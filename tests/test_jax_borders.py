"""Which JAX programs the provider proves border-free (no second-size check needed).

``border_free`` must answer True only where no padding, cropping, mask or data-dependent
routing touches a spatial axis (the argument is in ``rfest_jax._borders``); every padded
network keeps the check at a second size, and still gets its worked answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import rfest  # noqa: E402
import rfest_jax  # noqa: E402
from flax_models import (  # noqa: E402
    ReadmeNetLinen,
    conv,
    linen_pair,
    max_pool,
    random_kernel,
    readme_function,
)

pytestmark = pytest.mark.jax

K3 = random_kernel(1, 3, 3, 3, 4)
K1 = random_kernel(2, 1, 1, 4, 4)
K11 = random_kernel(3, 11, 11, 3, 2)
K6 = random_kernel(4, 6, 6, 3, 2)


def free(model: Any, shape: tuple[int, ...], **options: Any) -> bool:
    provider = rfest_jax.JaxGradientProvider(model, input_shape=shape, **options)
    (name,) = provider.output_names
    return provider.border_free(shape[:-1], name)


class ValidLinen(nn.Module):
    """Unpadded convolutions, bias, inference BatchNorm, ReLU, pools, a dense channel mix."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.relu(nn.Conv(8, (3, 3), padding="VALID")(x))
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Dense(6)(nn.avg_pool(x, (3, 3), (1, 1)))
        return nn.Conv(4, (3, 3), strides=2, padding="VALID")(nn.gelu(x))


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (readme_function(), (96, 96, 3)),
        (linen_pair(ReadmeNetLinen(), (64, 64, 3)), (64, 64, 3)),
        (linen_pair(ValidLinen(), (40, 40, 3)), (40, 40, 3)),
        # channels padded, sliced, concatenated; two branches of one jump added
        (lambda x: jnp.pad(conv(x, K3), ((0, 0), (0, 0), (0, 0), (1, 2))), (20, 20, 3)),
        (lambda x: conv(x, K3)[..., 1:3], (20, 20, 3)),
        (lambda x: jnp.concatenate([conv(x, K3), jnp.ones((1, 18, 18, 2))], -1), (20, 20, 3)),
        (lambda x: conv(conv(x, K3), K1, stride=2) + max_pool(conv(x, K3), 2, 2), (20, 20, 3)),
    ],
)
def test_unpadded_programs_are_border_free(model: Any, shape: tuple[int, ...]) -> None:
    assert free(model, shape)


def _mask(x: Any) -> Any:
    keep = lax.broadcasted_iota(jnp.int32, x.shape, 1) < 10
    return jnp.where(keep, x, 0.0)


REFUSED: dict[str, Callable[[Any], Any]] = {
    "same": lambda x: conv(x, K3, padding="SAME"),
    "pad": lambda x: conv(jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0))), K3),
    "reflect": lambda x: conv(jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), "reflect"), K3),
    "pool padding": lambda x: max_pool(conv(x, K3), 3, 2, padding=1),
    "crop": lambda x: conv(x[:, 1:-1], K3),
    "flip": lambda x: conv(jnp.flip(x, 1), K3),
    "mask": lambda x: conv(_mask(x), K3),
    "transposed": lambda x: conv(x, K3) + jnp.transpose(conv(x, K3), (0, 2, 1, 3)),
    "global pool": lambda x: jnp.mean(conv(x, K3), axis=(1, 2)),
    "upsampled": lambda x: jnp.repeat(conv(x, K3), 2, axis=1),
    # 13 pixels: k11 s2 and k6 s4 both give 2 units, a field that depends on the unit
    "jumps differ": lambda x: jnp.concatenate([conv(x, K11, stride=2), conv(x, K6, stride=4)], -1),
}


@pytest.mark.parametrize("name", REFUSED)
def test_anything_that_meets_a_border_or_moves_pixels_is_refused(name: str) -> None:
    shape = (13, 13, 3) if name == "jumps differ" else (20, 20, 3)
    assert not free(REFUSED[name], shape)


def test_only_the_linearized_program_is_judged() -> None:
    assert not free(readme_function(), (96, 96, 3), linearize=False)


class Spy:
    """The JAX provider, recording the sizes it is asked for gradient maps at."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self.sizes: list[tuple[int, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    def gradient_maps(self, spatial_shape: Any, output_name: str, units: Any) -> Any:
        self.sizes.append(tuple(spatial_shape))
        return self._provider.gradient_maps(spatial_shape, output_name, units)


def measure(model: Any, shape: tuple[int, ...]) -> tuple[rfest.ReceptiveField, list[Any]]:
    from rfest._estimate import estimate

    spy = Spy(rfest_jax.JaxGradientProvider(model, input_shape=shape))
    return estimate(spy, spy.output_names[0]), spy.sizes  # type: ignore[arg-type]


def test_a_border_free_net_skips_the_second_size() -> None:
    # 5, 3, pool 2, 3, 3, pool 2, 3, 3 (all VALID): r 34, stride 4, padding 0.
    rf, sizes = measure(readme_function(), (96, 96, 3))
    assert (rf.size, rf.stride, rf.padding) == ((34, 34), (4, 4), (0, 0))
    assert sizes == [(96, 96), (96, 96)]


@pytest.mark.parametrize("n", [16, 64])
def test_a_field_cut_by_padding_still_gets_the_second_size(n: int) -> None:
    # avg 4/4: r4 j4; k3 d8 p8: K17, r = 4 + 16 * 4 = 68, first = -8 * 4 = -32. At 16 the
    # outer taps jump 8 pool units (32 pixels) into padding: every unit is cut alike.
    kernel = random_kernel(5, 3, 1, 1)

    def net(x: Any) -> Any:
        pooled = lax.reduce_window(x, 0.0, lax.add, (1, 4, 1), (1, 4, 1), "VALID") / 4
        return conv(pooled, kernel, padding=((8, 8),), dilation=8)

    rf, sizes = measure(net, (n, 1))
    assert (rf.size, rf.stride, rf.padding) == ((68,), (4,), (32,))
    assert max(size[0] for size in sizes) >= 1024
