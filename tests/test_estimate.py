"""The estimator on synthetic gradient maps: no framework involved.

Every expected value is the geometry the fake provider was built from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import rfest
from fake_provider import Axis, FakeProvider, same_padding, symmetric


@pytest.fixture(autouse=True)
def fake_backend() -> None:
    rfest.register_backend("fake", lambda model, **options: model, replace=True)


def measure(provider: FakeProvider, **options: Any) -> rfest.ReceptiveField:
    return rfest.compute(provider, backend="fake", **options)


def test_plain_geometry_1d() -> None:
    rf = measure(FakeProvider([Axis(7, 2, symmetric(3))], (40,)))
    assert (rf.size, rf.stride, rf.padding, rf.offset) == ((7,), (2,), (3,), (0.0,))
    assert rf.uniform and not rf.is_global and not rf.grown
    assert rf.output_shape == ((40 + 6 - 7) // 2 + 1,)


def test_non_square_everything_2d() -> None:
    axes = [Axis(11, 4, symmetric(2)), Axis(5, 1, symmetric(0))]
    rf = measure(FakeProvider(axes, (64, 23)))
    assert rf.size == (11, 5)
    assert rf.stride == (4, 1)
    assert rf.padding == (2, 0)
    assert rf.offset == (3.0, 2.0)


def test_three_axes() -> None:
    axes = [Axis(3, 1, symmetric(1)), Axis(9, 2, symmetric(4)), Axis(13, 4, symmetric(0))]
    rf = measure(FakeProvider(axes, (10, 30, 60)))
    assert (rf.size, rf.stride, rf.padding) == ((3, 9, 13), (1, 2, 4), (1, 4, 0))


def test_field_larger_than_input_grows_by_whole_strides() -> None:
    provider = FakeProvider([Axis(427, 32, symmetric(213))], (224,))
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((427,), (32,), (213,))
    assert rf.grown and rf.input_shape == (224,)
    assert (rf.probe_shape[0] - 224) % 32 == 0
    assert rf.output_shape == (7,)


def test_same_padding_geometry_is_that_of_the_given_size() -> None:
    # One TF-'same' layer, kernel 41, stride 4: left padding depends on n mod 4.
    for n, left in ((30, 19), (31, 19), (32, 18), (33, 20)):
        axis = Axis(41, 4, same_padding(41, 4))
        assert axis.pad(n)[0] == left
        rf = measure(FakeProvider([axis], (n,)))
        assert (rf.size, rf.stride, rf.padding) == ((41,), (4,), (left,)), n
        assert rf.grown and (rf.probe_shape[0] - n) % 4 == 0


@pytest.mark.parametrize("n", [299, 300, 301, 302])
def test_unreachable_tail_of_a_valid_stem_is_a_border(n: int) -> None:
    # InceptionV3-like: a stride-4 'valid' stem never reaches the last n % 4 pixels, so
    # supports of clipped units end before n - 1; they must not count as exact ends.
    provider = FakeProvider([Axis(1311, 32, symmetric(618), stem=4)], (n,))
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((1311,), (32,), (618,))
    assert (rf.probe_shape[0] - n) % 32 == 0


def test_holes_from_dilation_are_not_mistaken_for_clipping() -> None:
    # Support {s, s+4, s+8, ...}: 3 pixels skipped between elements.
    rf = measure(FakeProvider([Axis(13, 1, symmetric(6), hole=3)], (16,)))
    assert (rf.size, rf.stride, rf.padding) == ((13,), (1,), (6,))


@pytest.mark.parametrize("border", ["reflect", "circular"])
def test_folding_and_wrapping_padding(border: str) -> None:
    rf = measure(FakeProvider([Axis(9, 2, symmetric(4), border=border)], (24,)))
    assert (rf.size, rf.stride, rf.padding) == ((9,), (2,), (4,))


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_upsampling_phases_are_non_uniform(factor: int) -> None:
    provider = FakeProvider([Axis(7, 4, symmetric(3), upsample=factor)], (64,))
    with pytest.warns(rfest.NonUniformWarning, match="differ"):
        rf = measure(provider)
    assert not rf.uniform
    assert rf.size == (7,)


def test_global_pooling() -> None:
    provider = FakeProvider([Axis(1, 1, whole=True, fixed_out=1)] * 2, (32, 20))
    rf = measure(provider)
    assert rf.is_global
    assert rf.size is rf.stride is rf.padding is rf.offset is None


def test_global_path_whose_output_still_grows() -> None:
    # Squeeze-excite: output keeps its size, every unit sees everything.
    provider = FakeProvider([Axis(3, 1, symmetric(1), whole=True)], (32,))
    rf = measure(provider, max_input_size=256)
    assert rf.is_global


def test_no_spatial_output_depending_on_all_input_is_global() -> None:
    provider = FakeProvider([Axis(1, 1), Axis(1, 1)], (8, 8), no_spatial_output=True)
    assert measure(provider).is_global


def test_fixed_size_output_is_refused() -> None:
    provider = FakeProvider([Axis(1, 1, fixed_out=7)], (224,))
    with pytest.raises(rfest.SizeDependentGeometryError, match="does not grow"):
        measure(provider)


def test_field_beyond_the_cap_names_the_option() -> None:
    provider = FakeProvider([Axis(301, 8, symmetric(150))], (64,))
    with pytest.raises(rfest.ProbeSizeError, match="max_input_size"):
        measure(provider, max_input_size=256)


def test_tiny_gradients_still_count() -> None:
    provider = FakeProvider([Axis(5, 1, symmetric(2))], (16,), value=1e-300)
    assert measure(provider).size == (5,)


def test_nan_gradients_are_an_error() -> None:
    provider = FakeProvider([Axis(5, 1, symmetric(2))], (16,), value=float("nan"))
    with pytest.raises(rfest.NonFiniteGradientError, match="NaN"):
        measure(provider)


def test_zero_gradient_is_an_error_not_nan() -> None:
    provider = FakeProvider([Axis(5, 1, symmetric(2))], (16,), value=0.0)
    with pytest.raises(rfest.NoDependenceError, match="does not depend"):
        measure(provider)


def test_free_size_is_chosen() -> None:
    rf = measure(FakeProvider([Axis(5, 1, symmetric(2)), Axis(3, 1, symmetric(1))], (None, 12)))
    assert rf.size == (5, 3)
    assert rf.input_shape == (32, 12)


@pytest.mark.parametrize("bad", [(0,), (-3,), (2.5,), (True,), (1, 2, 3, 4)])
def test_bad_spatial_sizes(bad: tuple[Any, ...]) -> None:
    with pytest.raises(rfest.InputShapeError):
        measure(FakeProvider([Axis(1, 1)] * len(bad), bad))


def test_provider_returning_wrong_shape_is_caught() -> None:
    class Broken(FakeProvider):
        def gradient_maps(self, *args: Any) -> np.ndarray:
            return np.ones((1, 3))

    with pytest.raises(rfest.EstimationError, match="expected"):
        measure(Broken([Axis(1, 1)], (8,)))


def test_probes_are_batched_and_thin() -> None:
    provider = FakeProvider([Axis(427, 32, symmetric(213))] * 2, (224, 224))
    measure(provider)
    # Per axis, on an input thin in the other axis: two batched probes (224, then 224 +
    # 7 * 32 = 448 to hold a whole field) and a check of the middle and end units at a
    # second size, twice as large with a whole field clear on each side (>= 448 + 2 *
    # 427, in whole strides: 1312; the middle unit, its neighbour and both ends); then one
    # confirmation grown along both axes.
    assert len(provider.calls) == 7
    batched = [(shape, count) for shape, count in provider.calls if count > 1]
    assert [max(shape) for shape, _ in batched] == [224, 448, 1312] * 2
    assert all(min(shape) == 16 for shape, _ in batched)
    assert [count for _, count in batched] == [7, 9, 4] * 2
    confirmations = [shape for shape, count in provider.calls if count == 1]
    assert confirmations == [(448, 448)]


def test_confirmation_is_only_as_large_as_a_whole_unit_needs() -> None:
    # DenseNet121 at 224: a field of 2071 pixels, stride 32, 1021 padding (7 units at
    # 224). The thin probes need 3808 pixels to fit it; the confirmation only needs the
    # smallest 224 + k * 32 that holds some unit with a pixel clear of each end.
    def pad(n: int) -> tuple[int, int]:
        return 1021, (-(-n // 32) - 1) * 32 + 2071 - n - 1021

    axis = Axis(2071, 32, pad)
    provider = FakeProvider([axis, axis], (224, 224))
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((2071, 2071), (32, 32), (1021, 1021))

    def holds(n: int) -> bool:
        return any(
            u * 32 - 1021 >= 1 and u * 32 - 1021 + 2070 <= n - 2 for u in range(axis.out_len(n))
        )

    smallest = next(n for n in range(224, 4096, 32) if holds(n))
    assert smallest == 2080
    confirmations = [shape for shape, count in provider.calls if count == 1]
    assert confirmations == [(smallest, 224), (224, smallest)]
    assert max(max(shape) for shape, _ in provider.calls) == 4096  # the thin probes' cap


def test_a_backend_can_decline_thin_probes() -> None:
    # thin_probes=False (a backend paying a compilation per probe shape): each axis is
    # measured at the user's size in the other axis, with no confirmation probe.
    provider = FakeProvider([Axis(427, 32, symmetric(213))] * 2, (224, 224))
    provider.thin_probes = False  # type: ignore[attr-defined]
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((427, 427), (32, 32), (213, 213))
    assert all(min(shape) >= 224 for shape, _ in provider.calls)
    assert all(count > 1 for _, count in provider.calls)


@pytest.mark.parametrize(("free_below", "second"), [(None, True), (100, True), (2000, False)])
def test_a_backend_that_proves_no_border_skips_the_second_size(
    free_below: int | None, second: bool
) -> None:
    # One probe at 40, then the check at a second size (the floor, 1024 + 0 * 2) unless the
    # provider proves the field border-free both at 40 and there.
    provider = FakeProvider([Axis(7, 2, symmetric(0))], (40,))
    provider.thin_probes = False  # type: ignore[attr-defined]
    asked: list[tuple[int, ...]] = []
    if free_below is not None:

        def border_free(spatial_shape: tuple[int, ...], output_name: str) -> bool:
            asked.append(tuple(spatial_shape))
            return spatial_shape[0] < free_below

        provider.border_free = border_free  # type: ignore[attr-defined]
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((7,), (2,), (0,))
    assert [shape for shape, _ in provider.calls] == ([(40,), (1024,)] if second else [(40,)])
    assert asked == ([] if free_below is None else [(40,), (1024,)])


class LosesPathsWhenThin(FakeProvider):
    """A branch whose field along axis 0 shows only when axis 1 is wide (a lost route)."""

    def gradient_maps(self, spatial_shape, output_name, units):  # type: ignore[no-untyped-def]
        maps = super().gradient_maps(spatial_shape, output_name, units)
        if spatial_shape[1] > 16:
            for k, (i, j) in enumerate(units):
                maps[k, max(0, i - 4) : i + 5, j] = 1.0
        return maps


def test_thin_probe_that_loses_a_branch_is_caught_by_the_confirmation() -> None:
    provider = LosesPathsWhenThin([Axis(3, 1, symmetric(1)), Axis(3, 1, symmetric(1))], (40, 40))
    rf = measure(provider)
    assert rf.size == (9, 3) and rf.padding == (4, 1)


@pytest.mark.parametrize("value", [1.0, float("inf")])
def test_a_scout_that_hides_gradient_is_overruled(value: float) -> None:
    from rfest._estimate import estimate

    axes = [Axis(9, 2, symmetric(4)), Axis(5, 1, symmetric(2))]
    # As float32 underflow would: the outermost pixel on each side goes missing.
    shrunk = [Axis(7, 2, symmetric(3)), Axis(3, 1, symmetric(1))]
    scout = FakeProvider(shrunk, (40, 40), value=value)
    precise = FakeProvider(axes, (40, 40))
    rf = estimate(precise, "out", scout=scout)
    assert (rf.size, rf.stride, rf.padding) == ((9, 5), (2, 1), (4, 2))
    if value == 1.0:  # a consistent but wrong scout answer is caught by the confirmation:
        # the joint probe, then one probe per axis, then both axes measured in full (a
        # probe and a check at a second size, here the floor of 1024, each)
        assert [count for _, count in precise.calls[:3]] == [1, 1, 1]
        assert [count for _, count in precise.calls[3:]] == [9, 4, 9, 4]


def test_a_scout_wrong_along_one_axis_costs_a_full_measurement_of_that_axis_only() -> None:
    from rfest._estimate import estimate

    axes = [Axis(9, 2, symmetric(4)), Axis(5, 1, symmetric(2))]
    shrunk = [Axis(7, 2, symmetric(3)), Axis(5, 1, symmetric(2))]
    precise = FakeProvider(axes, (40, 40))
    rf = estimate(precise, "out", scout=FakeProvider(shrunk, (40, 40)))
    assert (rf.size, rf.stride, rf.padding) == ((9, 5), (2, 1), (4, 2))
    # joint probe (axis 0 fails), one probe per axis (axis 1 holds), axis 0 in full
    assert [count for _, count in precise.calls[:3]] == [1, 1, 1]
    assert [(shape, count) for shape, count in precise.calls[3:]] == [
        ((40, 40), 9),
        ((1024, 40), 4),
    ]


def test_a_right_scout_is_confirmed_with_one_full_probe() -> None:
    from rfest._estimate import estimate

    axes = [Axis(9, 2, symmetric(4)), Axis(5, 1, symmetric(2))]
    precise = FakeProvider(axes, (40, 40))
    rf = estimate(precise, "out", scout=FakeProvider(axes, (40, 40)))
    assert (rf.size, rf.stride, rf.padding) == ((9, 5), (2, 1), (4, 2))
    assert [count for _, count in precise.calls] == [1]


@pytest.mark.parametrize("float32_scout", [True, False])
def test_a_backend_can_decline_the_float32_scout(float32_scout: bool) -> None:
    made: list[str] = []

    class Provider(FakeProvider):
        pass

    Provider.float32_scout = float32_scout  # type: ignore[attr-defined]

    def factory(model: Any, **options: Any) -> FakeProvider:
        made.append(options["dtype"])
        return Provider([Axis(9, 2, symmetric(4)), Axis(5, 1, symmetric(2))], (40, 40))

    rfest.register_backend("fake-scouting", factory, replace=True)
    rf = rfest.compute(object(), backend="fake-scouting")
    assert (rf.size, rf.stride, rf.padding) == ((9, 5), (2, 1), (4, 2))
    assert made == (["float64", "float32"] if float32_scout else ["float64"])


@dataclass
class TakesSomeSizes(FakeProvider):
    """A network that refuses input sizes along any axis where ``takes`` says no."""

    takes: Callable[[int], bool] = lambda n: True

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        if not all(self.takes(n) for n in spatial_shape):
            raise rfest.ModelCallError(f"the model refuses an input of size {spatial_shape}")
        return super().output_shapes(spatial_shape)


def test_thin_probes_are_as_thin_as_the_model_takes() -> None:
    # InceptionV3-like: 'valid' layers reject inputs under 75 pixels
    provider = TakesSomeSizes([Axis(45, 8, symmetric(0))] * 2, (299, 299), takes=lambda n: n >= 75)
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((45, 45), (8, 8), (0, 0))
    batched = [shape for shape, count in provider.calls if count > 1]
    # 16, 32 and 64 are rejected, 128 runs; between 64 and 128 the model takes 75 and up
    # (a probe and a check at a second size per axis, all 75 thin)
    assert sorted(min(shape) for shape in batched) == [75] * 4


def test_thin_probes_of_a_model_taking_only_some_sizes_run_at_one_it_takes() -> None:
    # U-Net-like: skip connections meet only at multiples of 16, from 48. 16 and 32 are
    # refused, 64 runs; between them only 48 runs (40, 44, 46 and 47 are refused): every
    # thin probe is 48 wide, and sizes along the axis stay whole blocks
    provider = TakesSomeSizes(
        [Axis(21, 16, symmetric(2))] * 2, (256, 256), takes=lambda n: n % 16 == 0 and n >= 48
    )
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((21, 21), (16, 16), (2, 2))
    batched = [shape for shape, count in provider.calls if count > 1]
    assert {min(shape) for shape in batched} == {48}
    assert all(n % 16 == 0 for shape in batched for n in shape)


def _declaring_axes_alike(provider: FakeProvider, asked: list[str]) -> FakeProvider:
    def axes_alike(output_name: str) -> bool:
        asked.append(output_name)
        return True

    provider.axes_alike = axes_alike  # type: ignore[attr-defined]
    return provider


@pytest.mark.parametrize("thin", [True, False])
def test_axes_declared_alike_are_measured_once_along_the_last(thin: bool) -> None:
    # 3-D, all three axes the same size and alike: only the last axis is probed beyond
    # the user's size (thin probes, or full ones where thin probes are declined)
    asked: list[str] = []
    provider = _declaring_axes_alike(FakeProvider([Axis(9, 2, symmetric(4))] * 3, (40,) * 3), asked)
    provider.thin_probes = thin  # type: ignore[attr-defined]
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((9, 9, 9), (2, 2, 2), (4, 4, 4))
    assert asked == ["out"]
    shapes = [shape for shape, _ in provider.calls]
    assert max(shape[2] for shape in shapes) > 40
    assert all(shape[:2] in ((16, 16), (40, 40)) for shape in shapes)
    alone = FakeProvider([Axis(9, 2, symmetric(4))] * 3, (40,) * 3)
    alone.thin_probes = thin  # type: ignore[attr-defined]
    assert measure(alone) == rf
    assert len(provider.calls) < len(alone.calls) / 2


def test_axes_declared_alike_but_of_other_sizes_are_each_measured() -> None:
    # axes 0 and 2 share a size: axis 2 answers for both; axis 1 is measured itself. A
    # 2-D input of two sizes does not even ask.
    asked: list[str] = []
    axes = [Axis(9, 2, symmetric(4)), Axis(5, 1, symmetric(2)), Axis(9, 2, symmetric(4))]
    provider = _declaring_axes_alike(FakeProvider(axes, (40, 24, 40)), asked)
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((9, 5, 9), (2, 1, 2), (4, 2, 4))
    assert asked == ["out"]
    assert all(shape[0] <= 40 for shape, _ in provider.calls)
    assert max(shape[1] for shape, _ in provider.calls) > 24
    asked.clear()
    plain = _declaring_axes_alike(FakeProvider(axes[:2], (40, 24)), asked)
    assert measure(plain).size == (9, 5)
    assert asked == []


def test_a_field_larger_than_the_input_skips_a_probe_size() -> None:
    # 1311 / 32 / 618 at 299, InceptionV3 mixed10: every support at 299 runs border to
    # border, so the next probe is near 4 x 299 = 1196, not 598, in steps that keep 299
    # modulo a large stride (the stride is still unknown): 299 + 5 * 192 = 1259. There
    # stride 32 shows, and 299 + 33 * 32 = 1355 holds a whole unit; the check at a second
    # size, >= 1355 + 2 * 1311 in whole strides, is 3979.
    provider = FakeProvider([Axis(1311, 32, symmetric(618)), Axis(3, 1)], (299, 40))
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((1311, 3), (32, 1), (618, 0))
    sizes = [shape[0] for shape, count in provider.calls if count > 1 and shape[1] == 16]
    assert sizes == [299, 1259, 1355, 3979]


def test_a_small_input_is_still_probed_thin() -> None:
    # 24 wide: the 16-pixel thin probe is tried (and used) although 32 would not be.
    provider = FakeProvider([Axis(5, 1, symmetric(2)), Axis(3, 1, symmetric(1))], (40, 24))
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((5, 3), (1, 1), (2, 1))
    assert ((40, 16), 9) in provider.calls


def test_the_ends_at_the_cap_place_the_next_probe() -> None:
    # DenseNet121 at 224 (2071 / 32 / 1021): every unit is whole at 224 and at 896, so the
    # two end units are probed at the cap (4096) to rule out a global field. They are not
    # whole there: unit 0 ends at 2071 - 1021 - 1 = 1049, the last (unit 127) starts at
    # 127 * 32 - 1021 = 3043, and the output gains 100 units over 3200 pixels (stride 32).
    # The next probe is then just long enough for the first unit inside (unit 32, field
    # 3..2073) with a stride to spare: 224 + 59 * 32 = 2112, not the four-fold 3808.
    provider = FakeProvider([Axis(2071, 32, symmetric(1021)), Axis(3, 1)], (224, 40))
    rf = measure(provider)
    assert (rf.size, rf.stride, rf.padding) == ((2071, 3), (32, 1), (1021, 0))
    probes = [(shape[0], count) for shape, count in provider.calls if shape[1] == 16]
    assert probes[:5] == [(224, 7), (896, 9), (4096, 2), (2112, 9), (4096, 4)]


_hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _large_fields(draw: Any) -> tuple[Axis, int, int]:
    """One axis whose field is several times the input: 'same' or symmetric padding, holes
    (dilation), a 'valid' stem that leaves a tail unreachable; a cap of any residue."""
    n0 = draw(st.integers(16, 300))
    stride = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
    size = draw(st.integers(4 * n0, 12 * n0))
    hole = draw(st.sampled_from([0, 0, 0, 1]))
    size -= (size - 1) % (hole + 1)  # taps land on the first and the last pixel
    if draw(st.booleans()):
        pad = same_padding(size, stride)
    else:
        pad = symmetric(draw(st.integers(0, size - 1)))
    stem = draw(st.sampled_from([1, 1, stride])) if 2 * stride <= n0 else 1
    cap = draw(st.integers(3 * size + 4 * stride, 3 * size + 4 * stride + 2000))
    return Axis(size, stride, pad, hole=hole, stem=stem), n0, cap


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(case=_large_fields())
def test_fields_several_times_the_input_are_exact(case: tuple[Axis, int, int]) -> None:
    """Wherever the ends at the cap place the next probe (right, or off by the padding of
    another residue), the answer is the geometry's: size, stride and the left padding at
    the size given."""
    axis, n0, cap = case
    if axis.out_len(n0) < 1:
        return
    rf = measure(FakeProvider([axis, Axis(3, 1)], (n0, 40)), max_input_size=cap)
    assert (rf.size[0], rf.stride[0], rf.padding[0]) == (axis.size, axis.stride, axis.pad(n0)[0])
