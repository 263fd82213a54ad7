"""Networks rfest once got wrong: the rows of issue 19's table and the examples the
property tests (``tests/test_properties.py``) shrank to. Each answer is worked from the
recurrences (``r += (K - 1) * j``, ``first -= before * j``, ``j *= s``; padding = -first)
in its comment, and again by ``rf_calculator`` where the test goes through ``check``.
"""

from __future__ import annotations

import pytest

import rfest
from rf_calculator import Branches, Conv, Net, Pool


def geometry(rf: rfest.ReceptiveField) -> tuple[object, object, object, bool]:
    return rf.size, rf.stride, rf.padding, rf.uniform


# ------------------------------------------------------------------ issue 19's table (torch)


@pytest.mark.torch
def test_border_units_that_see_only_padding_are_left_out() -> None:
    nn = pytest.importorskip("torch.nn")
    # k1 p1: r1 first-1; units 0 and 33 of 34 see only zero padding.
    rf = rfest.compute(nn.Conv2d(3, 4, 1, padding=1), (3, 32, 32))
    assert geometry(rf) == ((1, 1), (1, 1), (1, 1), True)


@pytest.mark.torch
def test_reflect_padding_folding_a_unit_that_sees_only_padding() -> None:
    nn = pytest.importorskip("torch.nn")
    # k2 s2 p2 reflect: r2 j2 first-2. Unit 0 reads [-2, -1], folded onto [1, 2].
    conv = nn.Conv2d(3, 4, 2, stride=2, padding=2, padding_mode="reflect")
    rf = rfest.compute(conv, (3, 50, 8))
    assert geometry(rf) == ((2, 2), (2, 2), (2, 2), True)


@pytest.mark.torch
def test_a_field_cut_inside_the_network_at_the_size_given() -> None:
    nn = pytest.importorskip("torch.nn")
    # avg 4/4: r4 j4; k5 d3 p6: K13, r = 4 + 12 * 4 = 52, first = -6 * 4 = -24. At 15 the
    # pool leaves 3 units and the dilated taps +-3, +-6 all land in its padding.
    net = nn.Sequential(nn.AvgPool1d(4, 4), nn.Conv1d(1, 1, 5, dilation=3, padding=6))
    for n in (15, 64):
        assert geometry(rfest.compute(net, (1, n))) == ((52,), (4,), (24,), True), n


@pytest.mark.torch
def test_circular_padding_whose_field_runs_past_small_inputs() -> None:
    pytest.importorskip("torch")
    from prop_networks import check

    # k7 s2 d2 p2 circular: K13, r13 j2 first-2; k3 p4 circular: r = 13 + 2 * 2 = 17,
    # first = -2 - 4 * 2 = -10. Wrapped supports of the end units once reached the cap.
    check(
        "torch",
        Net(1, (19,), (Conv((7,), (2,), (2,), ((2, 2),), "circular"),
                       Conv((3,), (1,), (1,), ((4, 4),), "circular"))),
    )  # fmt: skip
    # k5 s2 circular: r5 j2; k5 d2 p2: r = 5 + 8 * 2 = 21, first -4; k5 d2 p4: r37 first-12.
    check(
        "torch",
        Net(1, (27,), (Conv((5,), (2,), (1,), ((0, 0),), "circular"),
                       Conv((5,), (1,), (2,), ((2, 2),), "circular"),
                       Conv((5,), (1,), (2,), ((4, 4),), "circular"))),
    )  # fmt: skip


@pytest.mark.torch
def test_branches_that_line_up_only_at_odd_sizes() -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net_(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv1d(1, 1, 3, stride=2, padding=1)
            self.b = nn.AvgPool1d(2, 2, padding=1)
            self.c = nn.Conv1d(1, 1, 7, dilation=3, padding=9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.a(x) + self.b(x))

    # k3 s2 p1: r3 j2 first-1; avg 2/2 p1: r2 j2 first-1; union r3 first-1.
    # k7 d3 p9: K19, r = 3 + 18 * 2 = 39, first = -1 - 9 * 2 = -19. ceil(n/2) units on
    # one branch, n // 2 + 1 on the other: only odd sizes run.
    rf = rfest.compute(Net_(), (1, 3))
    assert geometry(rf) == ((39,), (2,), (19,), True)
    assert rf.probe_shape[0] % 2 == 1


@pytest.mark.keras
def test_keras_zero_padding_layers_of_the_resnet50_stem() -> None:
    keras = pytest.importorskip("keras")
    from keras import layers as L

    # conv1_pad 3: r1 first-3; conv1 k7 s2: r7 j2 first-3; pool1_pad 1: first-5;
    # pool1 k3 s2: r11 j4 first-5. Units at the ends of a padding layer see only padding.
    inputs = keras.Input((64, 64, 3))
    x = L.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = L.Conv2D(4, 7, strides=2, name="conv1")(x)
    x = L.ZeroPadding2D(1, name="pool1_pad")(x)
    x = L.MaxPooling2D(3, strides=2, name="pool1")(x)
    rfs = rfest.compute(keras.Model(inputs, x), output=["conv1_pad", "pool1_pad", "pool1"])
    assert geometry(rfs["conv1_pad"]) == ((1, 1), (1, 1), (3, 3), True)
    assert geometry(rfs["pool1_pad"]) == ((7, 7), (2, 2), (5, 5), True)
    assert geometry(rfs["pool1"]) == ((11, 11), (4, 4), (5, 5), True)


# ------------------------------------------------------------------ shrunk by Hypothesis


@pytest.mark.torch
def test_shrunk_pool_smaller_than_its_window_is_a_clear_model_error() -> None:
    pytest.importorskip("torch")
    from prop_networks import check

    # torch refuses an input smaller than the pool window whatever the padding: rfest
    # must say the model cannot run at that size (check accepts only that error).
    check("torch", Net(1, (1, 1, 1), (Pool("avg", (1, 2, 1), (1, 1, 1), (0, 1, 0)),)))


@pytest.mark.torch
def test_shrunk_branches_then_circular_same_padding() -> None:
    pytest.importorskip("torch")
    from prop_networks import check

    # axis 0: add(k2 s2 -> r2 j2, max 3/2 ceil -> r3 j2): r3 j2 first 0; k3 d2 'same'
    # (pad 2 each side) circular: r = 3 + 4 * 2 = 11, first -4; again zeros: r19 first-8.
    net = Net(
        1,
        (15, 1),
        (
            Branches(
                "add",
                (
                    (Conv((2, 1), (2, 2), (1, 1), "valid"),),
                    (Pool("max", (3, 1), (2, 2), (0, 0), ceil_mode=True),),
                ),
            ),
            Conv((3, 1), (1, 1), (2, 1), "same", "circular"),
            Conv((3, 1), (1, 1), (2, 1), "same"),
        ),
    )
    check("torch", net)


def _brute_force_and_torch(net: Net) -> None:
    """The estimator on the calculator's tap-by-tap maps (no framework), then in torch."""
    import importlib.util

    from rf_calculator import BruteForceProvider, check_recurrence, recurrence
    from rfest._estimate import estimate

    check_recurrence(net)
    rf = estimate(BruteForceProvider(net), "output")
    expected = recurrence(net)
    assert geometry(rf) == (
        tuple(f.size for f in expected),
        tuple(f.stride for f in expected),
        tuple(f.padding for f in expected),
        True,
    )
    if importlib.util.find_spec("torch") is not None:
        from prop_networks import check

        check("torch", net)


def test_shrunk_units_of_wrapped_padding_lining_up_with_a_wrong_stride() -> None:
    # Three k1 s2 circular: j8; first = -(0 + 3 * 2 + 1 * 4) = -10; r1. At 7 the three
    # units read -10, -2 and 6: two wrap onto 0 and 1, and 1 and 6 line up at stride 5.
    net = Net(1, (7,), (Conv((1,), (2,), (1,), ((0, 2),), "circular"),
                        Conv((1,), (2,), (1,), ((3, 2),), "circular"),
                        Conv((1,), (2,), (1,), ((1, 0),), "circular")))  # fmt: skip
    _brute_force_and_torch(net)


def test_shrunk_units_of_folded_padding_suggesting_a_stride_the_output_denies() -> None:
    # k1 s2 p(3, 2) reflect, k1 s2 p(0, 3) reflect, k1 s2: r1 j8 first -3. Folded units
    # suggested stride 2, which the output's length (3 units at 6 and at 8) denies.
    net = Net(1, (6,), (Conv((1,), (2,), (1,), ((3, 2),), "reflect"),
                        Conv((1,), (2,), (1,), ((0, 3),), "reflect"),
                        Conv((1,), (2,), (1,), "valid")))  # fmt: skip
    _brute_force_and_torch(net)


def test_shrunk_dilated_field_whose_end_units_see_only_padding() -> None:
    # axis 1: k5 d3 p(3, 2): K13, r13 first-3; k1 p4: first -7. At 9 the second layer's
    # 4 + 4 padded units see nothing, so the probed ends gave no reach and the dilation
    # holes (2 wide) kept every start and end from counting as unclipped.
    first = Conv((1, 5), (1, 1), (1, 3), ((4, 4), (3, 2)))
    second = Conv((5, 1), (1, 1), (1, 3), ((4, 4), (4, 4)), groups="grouped")
    net = Net(1, (11, 9), (first, second))
    _brute_force_and_torch(net)


def test_shrunk_strided_dilated_conv_on_an_input_smaller_than_its_field() -> None:
    # k3 s3 d2 p4: K5, r5 j3 first-4. At 3 the three units read taps -4, -2, 0; -1, 1, 3;
    # 2, 4, 6: each sees one pixel (0, 1, 2), as a 1 / 1 / 0 field would.
    net = Net(1, (3, 1), (Conv((3, 1), (3, 1), (2, 1), ((4, 4), (0, 0))),))
    _brute_force_and_torch(net)


def test_shrunk_single_unit_whose_branches_line_up_only_at_some_sizes() -> None:
    # k2 s3 p1: r2 j3 first-1; add(k1 s2, max 2/2): r = 2 + 1 * 3 = 5, j6, first -1. At 3
    # the one unit sees the whole input; the size far away that tells a global pool from
    # a field must be one the branches line up at.
    branches = Branches("add", ((Conv((1,), (2,), (1,), "valid"),),
                                (Pool("max", (2,), (2,), (0,)),)))  # fmt: skip
    net = Net(1, (3,), (Conv((2,), (3,), (1,), ((1, 1),)), branches))
    _brute_force_and_torch(net)


@pytest.mark.parametrize("n", [4, 8, 16])
def test_dilated_taps_cut_alike_at_the_size_given_and_at_twice_it(n: int) -> None:
    # avg 4/4: r4 j4; k3 d8 p8: K17, r = 4 + 16 * 4 = 68, first = -8 * 4 = -32. The outer
    # taps jump 8 pool units (32 pixels): every unit is cut to its own block at n and 2n.
    net = Net(1, (n,), (Pool("avg", (4,), (4,), (0,)), Conv((3,), (1,), (8,), ((8, 8),))))
    _brute_force_and_torch(net)


@pytest.mark.torch
@pytest.mark.parametrize("n", [299, 300, 333])
def test_dilated_taps_past_a_whole_intermediate_map_and_growth_that_lands_off_residue(
    n: int,
) -> None:
    nn = pytest.importorskip("torch.nn")
    # 5 x (k3 s2 p1): r 1 + 2 * (1 + 2 + 4 + 8 + 16) = 63, j 32, padding 31. Then
    # 3 x (k3 d16 p16) at jump 32: r += 3 * 2 * 16 * 32 = 3072 -> 3135, padding += 3 * 16 *
    # 32 -> 1567. At n < 512 the intermediate map has fewer than 16 entries, so every
    # dilated tap but the middle one reads padding: the field looks like 63 at n and at 2n.
    # Growth by 4 from 299 lands at the cap 4096, off the user's residue modulo 32.
    layers = [nn.Conv1d(1, 1, 3, stride=2, padding=1) for _ in range(5)]
    layers += [nn.Conv1d(1, 1, 3, dilation=16, padding=16) for _ in range(3)]
    rf = rfest.compute(nn.Sequential(*layers), (1, n))
    assert geometry(rf) == ((3135,), (32,), (1567,), True)
    assert (rf.probe_shape[0] - n) % 32 == 0


def test_last_unit_seeing_only_padding_and_an_unreachable_tail_on_the_periodic_path() -> None:
    """Found by the large-field property test (tests/test_estimate.py): a field of 345
    pixels, stride 8, padding 344 on each side, behind a 'valid' stride-8 stem that never
    reaches the last 29 % 8 = 5 pixels. At 29 pixels there are (29 + 688 - 345) // 8 + 1 =
    47 units; the last one's field starts at 46 * 8 - 344 = 24, the first pixel the stem
    cannot reach, so it sees only padding. The probes of the periodic search raised
    NoDependenceError on it; they now leave it out as the estimator's own probes do."""
    from fake_provider import Axis, FakeProvider, symmetric

    rfest.register_backend("fake", lambda model, **options: model, replace=True)
    axis = Axis(345, 8, symmetric(344), stem=8)
    provider = FakeProvider([axis, Axis(3, 1)], (29, 40))
    rf = rfest.compute(provider, backend="fake", max_input_size=1067)
    assert (rf.size, rf.stride, rf.padding) == ((345, 3), (8, 1), (344, 0))


def test_shrunk_padding_wider_than_the_field_leaves_two_dead_units_at_one_end() -> None:
    # k2 d2 p(0, 4): K3, r3 first 0. At 3 the five units read {0, 2}, {1, 3}, {2, 4},
    # {3, 5}, {4, 6}: units 3 and 4 see only padding. The periodic prober allowed one
    # dead unit at each end only, and called unit 3 "does not depend on the input".
    net = Net(1, (3,), (Conv((2,), (1,), (2,), ((0, 4),)),))
    _brute_force_and_torch(net)


def test_shrunk_circular_padding_wrapping_end_units_round_the_input() -> None:
    # axis 1: k1 circular p1: first -1; max k4 p1: r4 first -2. At the cap the first and
    # last units wrap round (reads -2..1: the last two pixels and the first two), so both
    # reached both ends of the input and the global verdict took them for whole.
    net = Net(1, (1, 1, 1), (Pool("max", (1, 1, 1), (1, 1, 1), (0, 0, 0)),
                             Conv((1, 1, 1), (1, 1, 1), (1, 1, 1), ((0, 0), (1, 1), (0, 0)),
                                  "circular"),
                             Pool("max", (1, 4, 1), (1, 1, 1), (0, 1, 0))))  # fmt: skip
    _brute_force_and_torch(net)


def test_shrunk_circular_same_dilated_conv_after_a_padded_pool() -> None:
    # max k2 p1: r2 first -1; k1; k2 d2 'same' circular (pads 1, 1): r4 first -2;
    # max k1 s2: j2. 4 / 2 / 2; its end units wrap round at every size.
    net = Net(1, (1,), (Pool("max", (2,), (1,), (1,)),
                        Conv((1,), (1,), (1,), "valid"),
                        Conv((2,), (1,), (2,), "same", "circular"),
                        Pool("max", (1,), (2,), (0,))))  # fmt: skip
    _brute_force_and_torch(net)
