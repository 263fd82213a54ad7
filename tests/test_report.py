"""Per-layer report: every layer's field worked by hand, and records that say why not.

Per axis, from r = 1, j = 1: ``r += (k - 1) * j``, ``j *= s``; valid layers keep padding 0.
Pointwise modules (ReLU) have the field of their input.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from torch import Tensor, nn  # noqa: E402

import rfest  # noqa: E402
from rfest._report import LayerRecord, LayerReport, report  # noqa: E402
from rfest_torch.examples import receptivefield_readme_net  # noqa: E402

pytestmark = pytest.mark.torch


def narrow_readme_net() -> nn.Sequential:
    return receptivefield_readme_net(width=2)


@pytest.fixture(scope="module")
def readme_report() -> LayerReport:
    return report(narrow_readme_net(), (3, 48, 48))


def test_readme_network_layer_by_layer(readme_report: LayerReport) -> None:
    # name: (size, stride, output units on 48 px; the field, 34, fits in 48)
    # conv1 k5: r5 j1, 44.  conv2 k3: r7, 42.  pool1 k2 s2: r8 j2, 21.  conv3: r12, 19.
    # conv4: r16, 17.  pool2: r18 j4, 8.  conv5: r26, 6.  feature_grid: r34, 4.
    convs = {
        "conv1": (5, 1, 44),
        "conv2": (7, 1, 42),
        "pool1": (8, 2, 21),
        "conv3": (12, 2, 19),
        "conv4": (16, 2, 17),
        "pool2": (18, 4, 8),
        "conv5": (26, 4, 6),
        "feature_grid": (34, 4, 4),
    }
    expected = dict(convs)
    for k in range(1, 6):  # relu_k follows conv_k (relu5 follows conv5)
        expected[f"relu{k}"] = convs[f"conv{k}"]
    assert [r.name for r in readme_report] == [n for n, _ in narrow_readme_net().named_children()]
    for record in readme_report:
        size, stride, units = expected[record.name]
        assert record.status == "ok", record
        assert record.size == (size, size), record.name
        assert record.stride == (stride, stride), record.name
        assert record.padding == (0, 0), record.name
        assert record.offset == ((size - 1) / 2,) * 2, record.name
        assert record.output_shape == (units, units), record.name
    assert readme_report["relu2"].type == "ReLU"
    assert readme_report.input_shape == (48, 48)
    assert readme_report.backend == "torch"


def test_report_as_json_and_text(readme_report: LayerReport) -> None:
    document = json.loads(readme_report.to_json())
    assert document["input_shape"] == [48, 48]
    first = document["layers"][0]
    assert (first["name"], first["size"], first["stride"], first["padding"]) == (
        "conv1",
        [5, 5],
        [1, 1],
        [0, 0],
    )
    assert first["status"] == "ok" and first["error"] is None
    lines = readme_report.to_text().splitlines()
    assert lines[0].split() == [
        "layer",
        "type",
        "output",
        "size",
        "stride",
        "padding",
        "offset",
        "status",
    ]
    last = ["feature_grid", "Conv2d", "4x4", "34x34", "4x4", "0x0", "16.5x16.5", "ok"]
    assert lines[-1].split() == last


class Pair(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


class Awkward(nn.Module):
    """A conv, a module returning a tuple, a module never called, a global head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pair = Pair()
        self.unused = nn.Conv2d(2, 2, 3)
        self.down = nn.Conv2d(2, 2, 2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()

    def forward(self, x: Tensor) -> Tensor:
        a, _ = self.pair(self.conv(x))
        return self.flat(self.pool(self.down(a)))


def test_unmeasurable_layers_get_a_record_that_says_why() -> None:
    progress: list[tuple[int, int, str]] = []
    result = report(Awkward(), (1, 20, 20), progress=lambda *a: progress.append(a))
    by_name = {r.name: r for r in result}
    assert list(by_name) == ["conv", "pair", "unused", "down", "pool", "flat"]
    # conv k3: r3 j1; down k2 s2 after it: r4 j2; adaptive pooling to 1x1 and flatten: global.
    assert (by_name["conv"].size, by_name["conv"].stride) == ((3, 3), (1, 1))
    assert (by_name["down"].size, by_name["down"].stride) == ((4, 4), (2, 2))
    assert by_name["pool"].status == "global" and by_name["flat"].status == "global"
    assert by_name["pair"].status == "error"
    assert "tuple" in (by_name["pair"].error or "")
    assert by_name["unused"].status == "error"
    assert "did not run" in (by_name["unused"].error or "")
    text = result.to_text()
    assert "    OutputNotFoundError: module 'pair' returns a tuple" in text
    assert progress[0] == (0, 6, "conv") and progress[-1] == (6, 6, "")


def test_layers_before_a_fixed_size_head_are_measured() -> None:
    # The Linear head takes 2*14*14 features only: at other probe sizes the model raises,
    # but conv '0' (k3: r3 j1) is measured on its own, and the head is global.
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 4))
    result = report(net, (1, 16, 16))
    assert (result["0"].size, result["0"].stride, result["0"].padding) == (
        (3, 3),
        (1, 1),
        (0, 0),
    )
    assert result["2"].status == "global"


def test_chosen_layers_only_and_errors_for_bad_arguments() -> None:
    result = report(narrow_readme_net(), (3, 40, 40), layers=["pool1", "conv1"])
    assert [r.name for r in result] == ["pool1", "conv1"]
    assert result["pool1"].size == (8, 8)  # as worked above
    with pytest.raises(KeyError, match="nope"):
        result["nope"]
    assert report(narrow_readme_net(), (3, 40, 40), layers=["nope"])["nope"].status == "error"


def test_backend_without_layer_listing_asks_for_layers() -> None:
    from fake_provider import Axis, FakeProvider

    rfest.register_backend(
        "fake-report",
        lambda model, **options: FakeProvider([Axis(3, 1)], (10,)),
        replace=True,
    )
    with pytest.raises(rfest.BackendError, match="layers="):
        report(object(), backend="fake-report")
    result = report(object(), backend="fake-report", layers=["out"])
    assert result["out"].size == (3,)


def test_record_dict_is_json_ready() -> None:
    record = LayerRecord("x", output_shape=(4,), size=(3,), stride=(1,), padding=(1,))
    assert json.loads(json.dumps(record.to_dict()))["size"] == [3]


class InPlaceSum(nn.Module):
    """``small`` (k1: r1) is captured, then added to in place by ``big`` (k5: r5)."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Conv2d(1, 2, 1)
        self.big = nn.Conv2d(1, 2, 5, padding=2)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        out = self.small(x)
        out += self.big(x)
        return self.pool(out)


def test_a_layer_output_written_in_place_later_keeps_its_own_field() -> None:
    # small r1; big r5 padding 2; the sum r5 padding 2; pool k2 s2: r6 j2 padding 2.
    result = report(InPlaceSum(), (1, 16, 16))
    assert result["small"].size == (1, 1) and result["small"].padding == (0, 0)
    assert result["big"].size == (5, 5) and result["big"].padding == (2, 2)
    assert (result["pool"].size, result["pool"].stride, result["pool"].padding) == (
        (6, 6),
        (2, 2),
        (2, 2),
    )


def small_resnet() -> nn.Module:
    from torch_models import ResNet50

    torch.manual_seed(0)
    net = ResNet50(width=4).eval()
    # The stem, two blocks of layer1, one of each later stage.
    net.layer1, net.layer2 = net.layer1[:2], net.layer2[:1]
    net.layer3, net.layer4 = net.layer3[:1], net.layer4[:1]
    return net


def test_every_record_equals_compute_of_that_layer() -> None:
    # Fields up to 83 on a 48 px input: layers grow their probes at different strides.
    net = small_resnet()
    result = report(net, (3, 48, 48))
    measured = [r for r in result if r.status in ("ok", "global", "non-uniform")]
    assert len(measured) == len(result) > 40
    # compute costs a few passes per layer: every distinct answer, and every 4th row.
    firsts = {(r.size, r.stride, r.padding, r.output_shape): r for r in reversed(measured)}
    chosen = [r for k, r in enumerate(measured) if k % 4 == 0 or r in firsts.values()]
    assert len(firsts) >= 12
    alone = rfest.compute(net, (3, 48, 48), output=[r.name for r in chosen])
    for record in chosen:
        rf = alone[record.name]
        got = (record.size, record.stride, record.padding, record.output_shape, record.grown)
        assert got == (rf.size, rf.stride, rf.padding, rf.output_shape, rf.grown), record.name
    # Worked by hand: stem k7/2 p3 then max pool k3/2 p1: 11/4/5; each bottleneck's 3x3
    # adds 2 x its input jump (4, 4, 4, 8, 16): 19, 27, then 35 at jump 8, 51, 83.
    assert result["maxpool"].size == (11, 11) and result["maxpool"].padding == (5, 5)
    sizes = [result[n].size for n in ("layer1.0", "layer1.1", "layer2", "layer3", "layer4")]
    assert sizes == [(19, 19), (27, 27), (35, 35), (51, 51), (83, 83)]
    assert result["layer4"].stride == (32, 32)
