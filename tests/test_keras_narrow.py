"""The user's own graph run one channel per layer (rfest_keras._narrow, TensorFlow): what
the one-channel copy computes, exact fields, no copy built, the model untouched."""

from __future__ import annotations

from typing import Any

import pytest

keras = pytest.importorskip("keras")

import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

import rfest  # noqa: E402
import rfest_keras._narrow as narrow_module  # noqa: E402
import rfest_keras._provider as provider_module  # noqa: E402
from keras_recurrence import field_of  # noqa: E402
from rfest_keras._autodiff import to_numpy  # noqa: E402
from rfest_keras._graph import run_graph, weight_values  # noqa: E402
from rfest_keras._narrow import narrowable, run_narrowed  # noqa: E402
from rfest_keras._rebuild import build_copy  # noqa: E402
from rfest_keras._union import Windows  # noqa: E402

pytestmark = [
    pytest.mark.keras,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="the compiled route is TensorFlow's"
    ),
]


def _every_kind_2d() -> keras.Model:
    """Every 2-D layer kind of the table: strided, dilated and grouped convolutions,
    depthwise and separable ones with a multiplier, a transposed one with output padding,
    every merge (one of tensors of two ranks), a squeeze-excite gate, a dense layer on a
    feature map, pooling, padding, cropping and upsampling."""
    x = inputs = keras.Input((None, None, 3))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, padding="same")(x)))
    b = L.Conv2D(8, 3, padding="same", dilation_rate=2, groups=4)(a)
    c = L.ZeroPadding2D(1)(L.DepthwiseConv2D(3, depth_multiplier=2)(a))
    d = L.SeparableConv2D(8, 3, padding="same", depth_multiplier=2, activation="relu")(a)
    e = L.MaxPooling2D(2)(L.Conv2DTranspose(8, 3, strides=2, padding="same", output_padding=1)(a))
    m = L.Subtract()([L.Add()([b, d]), b])
    m = L.Minimum()([L.Maximum()([L.Multiply()([m, d]), b]), d])
    joined = L.Concatenate()([L.Average()([m, e]), c])
    gate = L.Reshape((1, 1, 24))(L.Dense(24)(L.GlobalAveragePooling2D()(joined)))
    y = L.Dense(8)(L.Multiply()([joined, gate]))
    y = L.Maximum()([y, L.GlobalAveragePooling2D()(y)])  # ranks 4 and 2: Keras expands
    y = L.Cropping2D(1)(L.UpSampling2D(2)(L.AveragePooling2D(2)(y)))
    return keras.Model(inputs, L.Conv2D(4, 1)(y + L.Cropping2D(1)(a)))


def _every_kind_1d() -> keras.Model:
    x = inputs = keras.Input((None, 2))
    x = L.Conv1D(6, 3, padding="causal", dilation_rate=2)(x)
    x = L.SeparableConv1D(4, 3, depth_multiplier=3, padding="same")(x)
    x = L.DepthwiseConv1D(5, strides=2)(x)
    x = L.Conv1DTranspose(4, 4, strides=2)(x)
    return keras.Model(inputs, L.GlobalMaxPooling1D(keepdims=True)(x) + x)


def _every_kind_3d() -> keras.Model:
    x = inputs = keras.Input((None, None, None, 1))
    x = L.Conv3D(4, 3, strides=(1, 2, 1), padding="same")(x)
    x = L.Conv3DTranspose(3, 2, strides=2)(x)
    return keras.Model(inputs, L.AveragePooling3D(2)(x))


def _concatenations() -> keras.Model:
    """Concatenations whose branches see crossing fields (a 1x5 and a 5x1 window: neither
    support holds the other), one of them with the input's three channels, and one along
    a spatial axis."""
    x = inputs = keras.Input((None, None, 3))
    rows = L.Conv2D(2, (1, 5), padding="same")(x)
    columns = L.Conv2D(3, (5, 1), padding="same")(x)
    joined = L.Conv2D(4, 1)(L.Concatenate()([x, rows, columns]))
    stacked = L.Concatenate(axis=1)([joined, L.Conv2D(4, 3, padding="same")(joined)])
    return keras.Model(inputs, L.Concatenate()([stacked, L.Conv2D(1, 1)(stacked)]))


def _window_runs() -> keras.Model:
    """Runs of windows, one window of the narrowed walk or not (rfest_keras._union): a 3x3
    then a separable 5x5 through BN and ReLU, then a 1x1 and a depthwise (1, 3): one run;
    a 3x3 read twice; an even 2x2, a dilated 3x3, a 'valid' 3x3 and a strided 3x3 after
    3x3s; the measured layer inside a run is kept."""
    x = inputs = keras.Input((None, None, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    b = L.SeparableConv2D(4, 5, padding="same", name="b")(L.ReLU()(L.BatchNormalization()(a)))
    c = L.DepthwiseConv2D((1, 3), padding="same", name="c")(L.Conv2D(4, 1, name="c1x1")(b))
    d = L.Conv2D(4, 3, padding="same", name="d")(c)  # read twice
    e = L.Conv2D(4, 3, padding="same", name="e")(d)
    f = L.Conv2D(4, 3, padding="same", name="f")(d)
    g = L.Conv2D(4, 2, padding="same", name="g")(L.Add()([e, f]))  # even: not fusable
    h = L.Conv2D(4, 3, padding="same", name="h")(g)
    i = L.Conv2D(4, 3, padding="same", dilation_rate=2, name="i")(h)  # dilated
    j = L.Conv2D(4, 3, padding="same", name="j")(i)
    k = L.Conv2D(4, 3, padding="valid", name="k")(j)  # 'valid'
    m = L.Conv2D(4, 3, padding="same", name="m")(k)
    n = L.Conv2D(4, 3, strides=2, padding="same", name="n")(m)  # strided
    o = L.Conv2D(4, 3, padding="same", name="o")(n)
    return keras.Model(inputs, L.Conv2D(4, 3, padding="same", name="p")(o))


def test_windows_compose_and_unite_as_supports_do() -> None:
    import tensorflow as tf

    x = tf.zeros((1, 8, 8, 1))
    z = tf.zeros((1, 8, 8, 1))
    run = Windows.of(x).then((3, 3)).then((5, 5))
    assert [k for _, k in run.terms] == [(7, 7)]  # 3 + 5 - 1
    covered = Windows.union([run, Windows.of(x).then((3, 5)), Windows.of(x)])
    assert [k for _, k in covered.terms] == [(7, 7)]
    cross = Windows.union([Windows.of(x).then((1, 7)), Windows.of(x).then((7, 1))])
    assert [k for _, k in cross.terms] == [(1, 7), (7, 1)]  # a cross is not a window
    two = Windows.union([cross, Windows.of(z).then((3, 3))]).then((3, 3))
    assert [(t is x, k) for t, k in two.terms] == [(True, (3, 9)), (True, (9, 3)), (False, (5, 5))]


def _branches_1d() -> keras.Model:
    """Worked by hand, each value a sum of windows of x: a 3 -> {3}; b, separable 5 after
    BN and ReLU -> {7}; four branches of b: 1x1 {7}, 3 {9}, average 3 {9}, max 5 {11};
    their concatenation {11}; plus a 3 of it: {13}. Then y's strided window reads it:
    two convolutions (the 13-window of x and y's own) where the layers have seven."""
    x = inputs = keras.Input((None, 2))
    a = L.Conv1D(4, 3, padding="same", name="a")(x)
    b = L.SeparableConv1D(4, 5, padding="same")(L.ReLU()(L.BatchNormalization()(a)))
    branches = [
        L.Conv1D(2, 1)(b),
        L.Conv1D(2, 3, padding="same")(b),
        L.AveragePooling1D(3, strides=1, padding="same")(b),
        L.MaxPooling1D(5, strides=1, padding="same")(b),
    ]
    joined = L.Concatenate()(branches)
    r = L.Add()([joined, L.Conv1D(12, 3, padding="same")(joined)])
    return keras.Model(inputs, L.Conv1D(3, 3, strides=2, name="y")(r))


def test_branches_over_one_input_are_computed_as_one_window() -> None:
    import tensorflow as tf

    model = _branches_1d()
    program = tf.function(lambda t: run_narrowed(model, t, "float64")[0], autograph=False)
    graph = program.get_concrete_function(tf.TensorSpec((None, None, 2), tf.float64)).graph
    convolutions = [op for op in graph.get_operations() if op.type == "Conv2D"]
    assert len(convolutions) == 2
    for name, size in (("y", 40), ("a", 40)):  # y: through the unions; a: kept, a tensor
        rf = rfest.compute(model, (size, 2), output=name)
        assert (rf.size, rf.stride, rf.padding) == field_of(model, (size,), name)


def _constants() -> keras.Model:
    """Shifts and positive scales by numbers (a hard sigmoid and a hard swish, as
    MobileNetV3 writes them), which the walk passes over, and a scale by 0 and a negative
    one, which it must not."""
    x = inputs = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same")(x)
    gate = L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    x = L.Conv2D(4, 3, strides=2)(x * gate)
    x = (2.0 - x) / 4.0
    y = L.Conv2D(4, 3, padding="same")(x)
    z = L.Conv2D(4, 5, padding="same")(x) * 0.0
    return keras.Model(inputs, L.Add()([y * -1.0, z]))


def test_shifts_and_positive_scales_by_numbers_trace_nothing() -> None:
    import tensorflow as tf

    model = _constants()
    program = tf.function(lambda t: run_narrowed(model, t, "float64")[0], autograph=False)
    graph = program.get_concrete_function(tf.TensorSpec((None, None, None, 3), tf.float64)).graph
    kinds = [op.type for op in graph.get_operations()]
    # two products kept (by 0, by -1), the sum of the last two windows, the mean of the
    # swish's product: no operation for + 3, * (1 / 6), 2 - x, / 4
    assert kinds.count("Mul") == 3
    assert "RealDiv" not in kinds and "Sub" not in kinds
    # by hand: 3x3 'same' (3, 1, 1); the gate is local; 3x3 stride 2 (3 + 2, 2, 1); the
    # 3x3 'same' (5 + 2 * 2, 2, 1 + 2): 9 / 2 / 3. The 5x5 would make it 13 / 2 / 5, but
    # its product by 0 has no gradient (the layer calculator does not know that).
    rf = rfest.compute(model, (24, 24, 3))
    assert (rf.size, rf.stride, rf.padding) == ((9, 9), (2, 2), (3, 3))


def _unions() -> keras.Model:
    """What the unions must get right: crossing windows (1x5 and 5x1 of one input), a
    dense block (each layer concatenated to its input), a sum of windows of two tensors
    read twice, a layer applied twice, a nested model ending in a window, a gate of
    another shape, windows along a spatial concatenation, even and dilated windows."""
    x = inputs = keras.Input((None, None, 3))
    stem = L.Conv2D(4, 3, padding="same")(x)
    cross = L.Concatenate()(
        [L.Conv2D(2, (1, 5), padding="same")(stem), L.Conv2D(2, (5, 1), padding="same")(stem)]
    )
    dense = cross
    for _ in range(3):
        grown = L.Conv2D(2, 3, padding="same")(L.ReLU()(L.Conv2D(4, 1)(dense)))
        dense = L.Concatenate()([dense, grown])
    other = L.Cropping2D(1)(L.ZeroPadding2D(1)(stem))  # same shape, another tensor
    both = L.Add()([L.Conv2D(3, 3, padding="same")(dense), L.Conv2D(3, 3, padding="same")(other)])
    shared = L.DepthwiseConv2D(3, padding="same")
    twice = L.Maximum()([shared(both), shared(shared(both))])
    inner_in = keras.Input((None, None, 3))
    inner = keras.Model(inner_in, L.AveragePooling2D(3, strides=1, padding="same")(inner_in))
    nested = L.Average()([inner(twice), L.Conv2D(3, 2, padding="same")(twice)])
    gate = L.Reshape((1, 1, 3))(L.GlobalAveragePooling2D()(nested))
    gated = L.Multiply()([L.Conv2D(3, 3, padding="same", dilation_rate=2)(nested), gate])
    stacked = L.Concatenate(axis=1)([gated, L.Conv2D(3, 3, padding="same")(nested)])
    return keras.Model(inputs, L.Conv2D(2, 3, padding="same")(stacked))


def test_runs_of_windows_measure_exactly_at_every_layer() -> None:
    # each output against the recurrence calculator: a run's end, a layer inside a run
    # (kept, so the run is cut there), and the output after a strided window
    model = _window_runs()
    names = ["b", "d", "m", "p"]  # four: each its own compiled narrowed program
    rfs = rfest.compute(model, (40, 44, 3), output=names)
    for name in names:
        rf = rfs[name]
        assert (rf.size, rf.stride, rf.padding) == field_of(model, (40, 44), name), name


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (_window_runs, (1, 23, 26, 3)),
        (_every_kind_2d, (1, 16, 16, 3)),
        (_concatenations, (1, 9, 10, 3)),
        (_unions, (1, 11, 12, 3)),
        (_branches_1d, (1, 30, 2)),
        (_constants, (1, 12, 12, 3)),
        (_every_kind_1d, (1, 40, 2)),
        (_every_kind_3d, (1, 6, 8, 6, 1)),
    ],
)
def test_narrowed_graph_has_the_supports_of_the_one_channel_copy(
    build: Any, shape: tuple[int, ...]
) -> None:
    """Each output unit's input gradient has the support it has in the one-channel copy
    (the walk sums where the copy concatenates, so values differ, supports must not); a
    model with a shared layer, which the copy does not narrow, against the full-width
    copy (with positive weights every channel has that support)."""
    import tensorflow as tf

    model = build()
    assert narrowable(model)
    copy = build_copy(
        model, [None] * (len(shape) - 2), 0, dtype="float64", linearize=True, narrow=True
    )
    assert copy.narrowed != (build is _unions)

    def supports(run: Any, x: Any) -> tuple[list[np.ndarray], Any, Any]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y, elements = run(x)
            spatial = y.shape[1:-1]
            units = [
                (0,) * len(spatial),
                tuple(n // 2 for n in spatial),
                tuple(n - 1 for n in spatial),
            ]
            picked = [tf.reduce_sum(y[(0, *unit)]) for unit in units]
        maps = [tape.gradient(p, x).numpy() != 0 for p in picked]
        return maps, y, elements

    for grown in (shape, (shape[0], *(2 * n for n in shape[1:-1]), shape[-1])):
        x = tf.constant(np.random.default_rng(0).random(grown))
        want, want_y, want_elements = supports(
            lambda t: run_graph(copy.model, t, weight_values(copy.model)), x
        )
        got, got_y, elements = supports(lambda t: run_narrowed(model, t, "float64"), x)
        assert got_y.dtype == tf.float64
        assert got_y.shape[:-1] == want_y.shape[:-1]
        for got_map, want_map in zip(got, want, strict=True):
            assert want_map.any()
            np.testing.assert_array_equal(got_map, want_map)
        # fewer values than the copy's: 1x1 windows on one channel pass their input
        # through, concatenations of one-channel maps sum to one channel
        assert 0 < float(elements) <= float(want_elements)


def _other_routes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every step off the narrowed route: a copy built, the narrowed program
    abandoned, the live model run, an eager pass (each still gives the right answer, so
    only this record tells)."""
    taken: list[str] = []
    for owner, name in (
        (provider_module, "build_copy"),
        (provider_module.KerasGradientProvider, "_narrowed_refused"),
        (provider_module.KerasGradientProvider, "_vjp"),
        (provider_module.LiveModel, "__init__"),
    ):
        original = getattr(owner, name)

        def recorded(
            *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
        ) -> Any:
            taken.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)
    return taken


def _plain_net() -> keras.Model:
    """A field the recurrences give (no global gate): 'same' and 'valid' convolutions,
    depthwise, separable, pooling, a residual sum and a branch concatenation."""
    x = inputs = keras.Input((None, None, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, padding="same")(x)))
    x = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.SeparableConv2D(8, 5, padding="same", dilation_rate=2)(x)
    x = L.Add()([x, y])
    x = L.MaxPooling2D(3, strides=2)(x)
    x = L.Concatenate()([L.Conv2D(4, 1)(x), L.Conv2D(4, 3, padding="same")(x)])
    return keras.Model(inputs, L.Conv2D(6, 3, name="top")(x))


def _snapshot(model: keras.Model) -> list[Any]:
    """Weights with their values, and every instance attribute of every layer."""
    weights = [(v.path, to_numpy(v)) for v in model.weights]
    attributes = [
        {k: id(v) for k, v in vars(layer).items()}
        for layer in model._flatten_layers(include_self=True, recursive=True)
    ]
    return [weights, attributes]


def test_fields_are_exact_without_a_copy_and_the_model_is_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _plain_net()

    other_routes = _other_routes(monkeypatch)
    before = _snapshot(model)
    for output, shape in ((None, (64, 64)), ("top", (48, 40))):
        rf = rfest.compute(model, (*shape, 3), output=output)
        want = field_of(model, shape, output)
        assert (rf.size, rf.stride, rf.padding) == want
    assert not other_routes
    after = _snapshot(model)
    assert [w[0] for w in after[0]] == [w[0] for w in before[0]]
    for (path, value), (_, again) in zip(before[0], after[0], strict=True):
        assert np.array_equal(value, again), path
    assert after[1] == before[1]


def test_a_layer_the_narrowed_run_cannot_take_sends_the_model_to_the_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Were the table wrong for a layer (here every separable convolution fails), the
    first size says so and the copy measures the model: the answer stays exact."""
    model = _plain_net()
    built = []
    original_one_filter, original_build = narrow_module._one_filter, provider_module.build_copy

    def failing(layer: Any, kind: str) -> Any:
        call = original_one_filter(layer, kind)
        if kind != "SeparableConv2D":
            return call
        return lambda *args, **kwargs: keras.ops.reshape(call(*args, **kwargs), (-1, 7, 1))

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return original_build(*args, **kwargs)

    monkeypatch.setattr(narrow_module, "_one_filter", failing)
    monkeypatch.setattr(provider_module, "build_copy", counted)
    rf = rfest.compute(model, (64, 64, 3))
    assert (rf.size, rf.stride, rf.padding) == field_of(model, (64, 64))
    assert built


def test_layers_without_a_one_channel_counterpart_are_refused() -> None:
    class Twice(L.Layer):
        def call(self, x: Any) -> Any:
            return keras.ops.multiply(x, 2.0)

    inputs = keras.Input((None, None, 3))
    conv = L.Conv2D(2, 3)(inputs)
    assert narrowable(keras.Model(inputs, conv))
    for head in (
        Twice()(conv),
        L.Lambda(lambda t: t * 2.0)(conv),
        L.Reshape((-1, 2))(conv),
        L.Permute((2, 1, 3))(conv),
    ):
        assert not narrowable(keras.Model(inputs, head))
    video = keras.Input((None, 8, 8, 3))
    assert not narrowable(keras.Model(video, L.TimeDistributed(L.Conv2D(2, 3))(video)))


def test_a_classifier_head_and_a_map_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores without spatial axes (pooling, then dense) are global; the map beside them
    keeps its field (3x3 "same" convolution, then 2x2 pooling: 4 / 2 / 1); no copy is
    built."""

    other_routes = _other_routes(monkeypatch)
    x = inputs = keras.Input((32, 32, 3))
    x = L.MaxPooling2D(2, name="pool")(L.Conv2D(8, 3, padding="same", name="conv")(x))
    scores = L.Dense(5, activation="softmax", name="scores")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, [x, scores])
    fields = rfest.compute(model, output=["pool", "scores"])
    assert (fields["pool"].size, fields["pool"].stride, fields["pool"].padding) == (
        (4, 4),
        (2, 2),
        (1, 1),
    )
    assert fields["scores"].is_global
    assert not other_routes


def test_a_shared_tower_over_two_inputs_without_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Siamese towers: one Sequential applied to two inputs (the other input fed ones at
    the probe's size inside the compiled program). 3x3 convolution, then 3x3 stride 2:
    field 3 + 2 = 5, stride 2, no padding, for either input."""

    other_routes = _other_routes(monkeypatch)
    a, b = keras.Input((None, None, 1), name="a"), keras.Input((None, None, 1), name="b")
    tower = keras.Sequential([L.Conv2D(4, 3), L.ReLU(), L.Conv2D(4, 3, strides=2)])
    model = keras.Model([a, b], L.Concatenate()([tower(a), tower(b)]))
    for name in ("a", "b"):
        rf = rfest.compute(model, (32, 32, 1), input=name)
        assert (rf.size, rf.stride, rf.padding) == ((5, 5), (2, 2), (0, 0))
    assert not other_routes


def test_a_nested_backbone_named_as_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """``output=`` the nested model itself (a backbone under a classifier head): 3x3
    stride 2, then 3x3: field 3 + 2 * 2 = 7, stride 2, no padding."""
    other_routes = _other_routes(monkeypatch)
    inner = keras.Input((None, None, 3))
    y = L.Conv2D(4, 3, strides=2)(inner)
    backbone = keras.Model(inner, L.Conv2D(4, 3)(y), name="backbone")
    inputs = keras.Input((32, 32, 3))
    scores = L.Dense(3)(L.GlobalAveragePooling2D()(backbone(inputs)))
    rf = rfest.compute(keras.Model(inputs, scores), output="backbone")
    assert (rf.size, rf.stride, rf.padding) == ((7, 7), (2, 2), (0, 0))
    assert not other_routes


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_a_window_of_equal_taps_is_the_convolution_it_stands_for(
    rank: int, channels: int, padding: str
) -> None:
    """Channels summed first, 1x1 windows as a scale and a strided slice: the values of the
    one convolution with a kernel of equal taps, at odd and even sizes, for every stride
    and dilation Keras allows."""
    from rfest_keras._windows import uniform_window

    rng = np.random.default_rng(rank * 10 + channels)
    for size in (7, 8):
        x = keras.ops.convert_to_tensor(rng.random((2, *(size,) * rank, channels)))
        windows = [(1, 1, 1), (1, 2, 1), (1, 3, 1), (2, 2, 1), (3, 1, 2), (3, 2, 1)]
        for k, stride, dilation in windows:
            kernel, weight = (k,) * rank, 1 / (k**rank * channels)
            want = keras.ops.conv(
                x,
                keras.ops.convert_to_tensor(np.full((*kernel, channels, 1), weight)),
                strides=stride,
                padding=padding,
                dilation_rate=dilation,
            )
            got = uniform_window(
                x, kernel, (stride,) * rank, (dilation,) * rank, padding, "channels_last", weight
            )
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), rtol=1e-12
            )


@pytest.mark.parametrize("kind", ["MaxPooling2D", "AveragePooling2D", "MaxPooling1D"])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_a_pooling_window_on_one_channel_has_the_support_of_the_pool(
    kind: str, padding: str
) -> None:
    """A pooling window runs as a convolution of equal taps on one channel; 'same' pools
    divide by the taps inside the input instead, so only the support is the same."""
    import tensorflow as tf

    rank = int(kind[-2])
    for size in (9, 10):
        layer = getattr(L, kind)(3, strides=2, padding=padding)
        layer.build((1, *(size,) * rank, 1))
        x = tf.Variable(np.ones((1, *(size,) * rank, 1)))
        maps = []
        for call in (
            narrow_module.narrowed_call(layer),
            L.AveragePooling2D(3, 2, padding).call
            if rank == 2
            else L.AveragePooling1D(3, 2, padding).call,
        ):
            with tf.GradientTape() as tape:
                y = call(x)
                unit = y[(0, *(1,) * rank, 0)]
            maps.append(tape.gradient(unit, x).numpy() != 0)
        np.testing.assert_array_equal(maps[0], maps[1])
        assert maps[0].sum() == 3**rank


def _applied(name: str) -> keras.Model:
    return getattr(keras.applications, name)(weights=None, include_top=False)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (_every_kind_2d, (1, 24, 16, 3)),
        (_concatenations, (1, 9, 10, 3)),
        (_unions, (1, 11, 12, 3)),
        (_branches_1d, (1, 30, 2)),
        (_every_kind_1d, (1, 41, 2)),
        (_every_kind_3d, (1, 6, 8, 7, 1)),
        (lambda: _applied("MobileNetV3Small"), (1, 97, 64, 3)),
        (lambda: _applied("DenseNet121"), (1, 64, 71, 3)),
    ],
)
@pytest.mark.parametrize("narrowed", [True, False], ids=["narrowed", "direct"])
def test_layer_outputs_are_counted_as_one_size_each_would(
    build: Any, shape: tuple[int, ...], narrowed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory budget's count shares one Size among the outputs that keep an input's
    # spatial size (in a trace with free sizes, as the probe program is); it must equal
    # the plain sum of every output's size, at sizes no layer keeps alike on every axis.
    import tensorflow as tf

    import rfest_keras._graph as graph_module

    model = build()
    free = tf.TensorSpec([None] * (len(shape) - 1) + [shape[-1]], "float64")

    def count() -> float:
        @tf.function(input_signature=[free], autograph=False)
        def traced(x: Any) -> Any:
            if narrowed:
                return run_narrowed(model, x, "float64")[1]
            return run_graph(model, tf.cast(x, "float32"))[1]

        return float(traced(tf.ones(shape, "float64")))

    shared = count()
    monkeypatch.setattr(graph_module, "same_spatial_input", lambda *args: None)
    assert shared == pytest.approx(count(), rel=1e-12)
