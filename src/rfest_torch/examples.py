"""Example networks with receptive fields worked by hand; ``python -m rfest_torch.examples``.

``receptivefield_readme_net`` is the network of the ``receptivefield`` package's README,
written with ReLU and max pooling (rfest linearizes them itself). Layer by layer, size
``r`` and stride ``j`` follow ``r += (k - 1) * j``, ``j *= s``:
conv5 (5, 1), conv3 (7, 1), pool2 (8, 2), conv3 (12, 2), conv3 (16, 2), pool2 (18, 4),
conv3 (26, 4), conv3 (34, 4): size 34, stride 4, padding 0 (all 'valid'), offset 16.5.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["receptivefield_readme_net"]


def receptivefield_readme_net(in_channels: int = 3, width: int | None = None) -> nn.Sequential:
    """The ``receptivefield`` README network; its last layer is named ``feature_grid``.

    ``width`` sets every layer's channel count (the README uses 32, 64 and 128): the
    geometry does not depend on it, small widths just run faster.
    """
    a, b, c = (32, 64, 128) if width is None else (width,) * 3
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, a, 5),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(a, a, 3),
            relu2=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv3=nn.Conv2d(a, b, 3),
            relu3=nn.ReLU(),
            conv4=nn.Conv2d(b, b, 3),
            relu4=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            conv5=nn.Conv2d(b, c, 3),
            relu5=nn.ReLU(),
            feature_grid=nn.Conv2d(c, c, 3),
        )
    )


def _main() -> None:
    import rfest

    net = receptivefield_readme_net()
    rf = rfest.compute(net, input_shape=(3, 96, 96))
    print("receptivefield README network, PyTorch, input 3x96x96")
    print(f"  size    {rf.size}")
    print(f"  stride  {rf.stride}")
    print(f"  padding {rf.padding}")
    print(f"  offset  {rf.offset}")
    print(f"  output  {rf.output_shape}")


if __name__ == "__main__":
    _main()
