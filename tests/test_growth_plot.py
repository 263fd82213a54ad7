"""The growth plot of a deep net: leaves only, in execution order, stages named, few labels.

Records are built here the way `rfest.report` lists a torchvision-layout ResNet-50
(``named_modules()`` order: containers before their children, a Bottleneck's shared ReLU
after ``bn3``); each leaf's size is ``10 + its step`` so the drawn curve must climb.
"""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from rfest._plots import plot_rf_growth
from rfest._plots._growth import growth_order, stages
from rfest._report import LayerRecord

BLOCK_LEAVES = ["conv1", "bn1", "relu:1", "conv2", "bn2", "relu:2", "conv3", "bn3"]


def resnet50_records() -> tuple[list[LayerRecord], list[str]]:
    """(records in named_modules order, leaf names in execution order)."""
    listed: list[tuple[str, bool]] = []  # (name, leaf) in named_modules order
    executed: list[str] = []  # every name in the order its output is produced
    for name in ("conv1", "bn1", "relu", "maxpool"):
        listed.append((name, True))
        executed.append(name)
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        listed.append((f"layer{stage}", False))
        for b in range(blocks):
            block = f"layer{stage}.{b}"
            listed.append((block, False))
            leaves = [f"{block}.{n}" for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
            leaves += [f"{block}.relu:{k}" for k in (1, 2, 3)]
            listed += [(n, True) for n in leaves]
            if b == 0:
                listed += [(f"{block}.downsample", False)]
                listed += [(f"{block}.downsample.{k}", True) for k in (0, 1)]
                executed += [f"{block}.downsample.0", f"{block}.downsample.1"]
                executed.append(f"{block}.downsample")
            executed += [f"{block}.{n}" for n in BLOCK_LEAVES]
            executed += [f"{block}.relu:3", block]
        executed.append(f"layer{stage}")
    for name in ("avgpool", "fc"):
        listed.append((name, True))
        executed.append(name)
    step = {name: k for k, name in enumerate(executed)}
    records = [
        LayerRecord(
            name,
            output_shape=() if name in ("avgpool", "fc") else (7, 7),
            size=None if name in ("avgpool", "fc") else (10 + step[name],) * 2,
            stride=None if name in ("avgpool", "fc") else (4, 4),
            is_global=name in ("avgpool", "fc"),
            step=step[name],
            leaf=leaf,
        )
        for name, leaf in listed
    ]
    leaves = [n for n in executed if dict(listed)[n]]
    return records, leaves


def test_leaves_in_execution_order_with_few_labels_and_named_stages() -> None:
    records, leaves = resnet50_records()
    assert len(leaves) == 158 and len(records) == 158 + 4 + 16 + 4
    assert [r.name for r in growth_order(records)] == leaves
    fig = plot_rf_growth(records)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    size = lines["size, every axis"]
    drawn = [leaves[int(x)] for x in size.get_xdata()]
    assert drawn == leaves[:-2]  # the global pool and head have no size
    ys = size.get_ydata().tolist()
    assert ys == [10 + _step(records, n) for n in drawn]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)  # climbs: no zig-zag
    assert lines["global"].get_xdata().tolist() == [156, 157]
    assert "size, axis 1" not in lines  # both axes alike: one line
    ticks = ax.get_xticks().tolist()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 20 <= len(labels) <= 40
    assert labels == [leaves[int(x)] for x in ticks]
    names = [t.get_text() for t in ax.texts if t.get_gid() == "stage"]
    assert names == ["layer1", "layer2", "layer3", "layer4"]


def _step(records: list[LayerRecord], name: str) -> int:
    (record,) = [r for r in records if r.name == name]
    assert record.step is not None
    return record.step


def test_containers_on_request_and_strides_as_stages_of_a_flat_net() -> None:
    records, _ = resnet50_records()
    everything = growth_order(records, leaves_only=False)
    assert len(everything) == len(records)
    assert [r.step for r in everything] == sorted(r.step for r in records if r.step is not None)
    flat = [
        LayerRecord(str(k), size=(3 + 2 * k,), stride=(1 if k < 3 else 2,), step=k)
        for k in range(6)
    ]
    assert stages(flat) == [("stride 1", 0, 2), ("stride 2", 3, 5)]
    texts = [t.get_text() for t in plot_rf_growth(flat).axes[0].texts if t.get_gid() == "stage"]
    assert texts == ["stride 1", "stride 2"]


def test_the_report_of_a_bottleneck_gives_the_execution_order() -> None:
    pytest.importorskip("torch")
    import rfest
    from torch_models import Bottleneck

    # Bottleneck(8, 2, stride=2) runs its downsample branch first, then conv1 .. bn3, and
    # its one ReLU three times; the downsample Sequential is a container.
    result = rfest.report(Bottleneck(8, 2, stride=2), (8, 16, 16), dtype="float32")
    names = [r.name for r in growth_order(result)]
    assert names == ["downsample.0", "downsample.1", *BLOCK_LEAVES, "relu:3"]
    assert not result["downsample"].leaf and result["conv1"].leaf
