"""A module called several times in one forward pass: one field per call, named ``name:k``.

Fields worked by hand per axis (r = 1, j = 1; ``r += (k - 1) * j``, ``j *= s``; 'same'
3x3 convolutions pad 1). Tensors keep their shape through pointwise modules.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import Tensor, nn  # noqa: E402

import rfest  # noqa: E402
from rfest._cli import main  # noqa: E402
from torch_models import Bottleneck  # noqa: E402

pytestmark = pytest.mark.torch


def bottleneck() -> Bottleneck:
    # conv1 1x1 -> relu:1 (r1); conv2 3x3 pad 1 -> relu:2 (r3, padding 1); conv3 1x1,
    # + identity (r1 inside the 3x3 window) -> relu:3 (r3, padding 1).
    return Bottleneck(8, 2).eval()


EXPECTED = {  # name: (size, stride, padding) per axis
    "relu:1": (1, 1, 0),
    "relu:2": (3, 1, 1),
    "relu:3": (3, 1, 1),
    "conv2": (3, 1, 1),
}


class Reused(nn.Module):
    """One ReLU after a 3x3 conv (r3) and after a strided 3x3 conv (r3 + 2 = 5, j2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.down = nn.Conv1d(2, 2, 3, stride=2)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.down(self.act(self.conv(x))))


def geometry(rf: rfest.ReceptiveField) -> tuple[int | None, int | None, int | None]:
    assert rf.size is not None and rf.stride is not None and rf.padding is not None
    return rf.size[0], rf.stride[0], rf.padding[0]


def test_each_call_has_its_own_field_in_compute() -> None:
    rfs = rfest.compute(bottleneck(), (8, 16, 16), output=list(EXPECTED))
    for name, (size, stride, padding) in EXPECTED.items():
        assert rfs[name].size == (size, size), name
        assert rfs[name].stride == (stride, stride), name
        assert rfs[name].padding == (padding, padding), name
    reused = rfest.compute(Reused(), (1, 40), output=["act:1", "act:2"])
    assert geometry(reused["act:1"]) == (3, 1, 0)
    assert geometry(reused["act:2"]) == (5, 2, 0)


def test_the_bare_name_of_a_module_called_several_times_is_refused() -> None:
    with pytest.raises(rfest.OutputNotFoundError) as caught:
        rfest.compute(bottleneck(), (8, 16, 16), output="relu")
    message = str(caught.value)
    assert "called 3 times" in message
    assert "'relu:1', 'relu:2', 'relu:3'" in message
    with pytest.raises(rfest.OutputNotFoundError, match=r"call 4 .* called 3 time"):
        rfest.compute(bottleneck(), (8, 16, 16), output="relu:4")
    # A module called once answers to its bare name and to ':1'.
    once = rfest.compute(bottleneck(), (8, 16, 16), output=["conv2", "conv2:1"])
    assert dataclasses.replace(once["conv2:1"], output="conv2") == once["conv2"]


def test_report_lists_every_call_in_call_order() -> None:
    result = rfest.report(bottleneck(), (8, 16, 16))
    names = [r.name for r in result]
    assert [n for n in names if n.startswith("relu")] == ["relu:1", "relu:2", "relu:3"]
    assert "relu" not in names
    for name in ("relu:1", "relu:2", "relu:3"):
        record = result[name]
        size, stride, padding = EXPECTED[name]
        assert (record.size, record.stride, record.padding) == (
            (size, size),
            (stride, stride),
            (padding, padding),
        )
        assert record.type == "ReLU"
    document = json.loads(result.to_json())
    assert [r["name"] for r in document["layers"]] == names
    asked = rfest.report(bottleneck(), (8, 16, 16), layers=["relu"])
    assert asked["relu"].status == "error" and "'relu:2'" in (asked["relu"].error or "")


def test_cli_measures_a_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rfest_shared_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Reused(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv1d(1, 2, 3)
                    self.down = nn.Conv1d(2, 2, 3, stride=2)
                    self.act = nn.ReLU()

                def forward(self, x):
                    return self.act(self.down(self.act(self.conv(x))))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["rfest_shared_models:Reused", "-i", "1,40", "-o", "act:2", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)["act:2"]
    assert (out["size"], out["stride"], out["padding"]) == ([5], [2], [0])
    assert main(["rfest_shared_models:Reused", "-i", "1,40", "-o", "act"]) != 0
    assert "'act:1', 'act:2'" in capsys.readouterr().err
