"""``compute(model)`` without ``input_shape``: channels and spatial rank read from the first
convolution of a PyTorch model, spatial sizes left free; and messages that name
``input_shape`` and the index the user wrote.

Fields worked by hand per axis: r = 1, j = 1, start = 0; ``r += (k - 1) * j``,
``start += ((k - 1) / 2 - p) * j``, ``j *= s``; ``padding = (r - 1) / 2 - start``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import Tensor, nn  # noqa: E402

import rfest  # noqa: E402

pytestmark = pytest.mark.torch


def test_1d_from_conv1d() -> None:
    # k5: r5 j1; k3 s2: r7 j2; valid layers: padding 0.
    net = nn.Sequential(nn.Conv1d(2, 4, 5), nn.ReLU(), nn.Conv1d(4, 4, 3, stride=2))
    rf = rfest.compute(net)
    assert (rf.size, rf.stride, rf.padding) == ((7,), (2,), (0,))
    assert rf.inferred_input_shape == (2, None)
    assert rfest.compute(net, (2, 40)).inferred_input_shape is None


def test_2d_from_a_resnet_stem() -> None:
    # k7 s2 p3: r7 j2 start 0; max pool k3 s2 p1: r11 j4 start 0 -> padding 5.
    net = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.MaxPool2d(3, 2, 1))
    rf = rfest.compute(net)
    assert (rf.size, rf.stride, rf.padding) == ((11, 11), (4, 4), (5, 5))
    assert rf.inferred_input_shape == (3, None, None)
    assert rf.to_dict()["inferred_input_shape"] == [3, None, None]


def test_3d_from_conv3d_and_the_report() -> None:
    # k3 p1: r3 j1 padding 1; k3 s2 p1: r5 j2 padding 2.
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Conv3d(2, 2, 3, stride=2, padding=1))
    result = rfest.report(net)
    assert result["1"].size == (5, 5, 5) and result["1"].padding == (2, 2, 2)
    assert result.inferred_input_shape == (1, None, None, None)


def test_linear_on_a_flattened_input_asks_for_input_shape() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    with pytest.raises(rfest.InputShapeError, match="'1' \\(Linear on a flattened input\\)"):
        rfest.compute(net)
    with pytest.raises(rfest.InputShapeError, match="no first convolution"):
        rfest.compute(nn.Sequential(nn.ReLU()))
    with pytest.raises(rfest.InputShapeError, match="cannot infer"):
        rfest.compute(nn.Sequential(nn.LazyConv2d(4, 3)))


class DefinedOutOfOrder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 3, 1)
        self.stem = nn.Conv2d(3, 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stem(x))


def test_a_layer_defined_first_but_run_later_is_not_trusted() -> None:
    with pytest.raises(rfest.InputShapeError, match="first runs 'stem'"):
        rfest.compute(DefinedOutOfOrder())
    rf = rfest.compute(DefinedOutOfOrder(), (3, 16, 16))  # k3 then k1: r3
    assert rf.size == (3, 3)


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((3, 32.5, 32), ("input_shape=(3, 32.5, 32)", "input_shape[1] = 32.5")),
        ((3, 32, 0), ("input_shape[2] = 0", "positive integer")),
        ((3.0, 32, 32), ("input_shape[0] = 3.0", "channel count")),
        ((3, True, 32), ("input_shape[1] = True",)),
        ("3,32,32", ("must be a tuple",)),
    ],
)
def test_messages_name_input_shape_and_the_index(shape: object, words: tuple[str, ...]) -> None:
    net = nn.Sequential(nn.Conv2d(3, 1, 3))
    with pytest.raises(rfest.InputShapeError) as caught:
        rfest.compute(net, shape)  # type: ignore[arg-type]
    for word in words:
        assert word in str(caught.value)


def test_a_net_larger_than_the_free_size_says_what_was_read() -> None:
    # Fifteen valid 5x5 convs need 61 px, more than the 32 a free size is probed at.
    net = nn.Sequential(*[nn.Conv2d(2, 2, 5) for _ in range(15)])
    with pytest.raises(rfest.InputShapeError, match=r"read \(2, None, None\) from '0'"):
        rfest.compute(net)
