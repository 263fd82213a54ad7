"""A model living on CUDA is measured where it lives and left there, bit for bit.

Skipped without a GPU; run on a lent GPU machine (see the closing notes of the spine issue).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import rfest  # noqa: E402
import rfest_torch  # noqa: E402
from rfest_torch._provider import TorchGradientProvider  # noqa: E402
from rfest_torch.examples import receptivefield_readme_net  # noqa: E402
from torch_models import ResNet50  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def torch_backend() -> None:
    # On a machine where rfest runs from a source tree without being installed.
    if "torch" not in rfest.available_backends():
        rfest.register_backend("torch", rfest_torch.provider, replace=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_model_on_cuda_is_measured_and_left_there(dtype: torch.dtype) -> None:
    model = receptivefield_readme_net().to("cuda", dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rf = rfest.compute(model, (3, 96, 96), output="feature_grid")
    assert (rf.size, rf.stride, rf.padding) == ((34, 34), (4, 4), (0, 0))
    for key, value in model.state_dict().items():
        assert value.device.type == "cuda" and value.dtype == before[key].dtype
        assert torch.equal(value, before[key]), key


def test_resnet50_on_cuda() -> None:
    model = ResNet50().cuda()
    rf = rfest.compute(model, (3, 224, 224), output="layer4")
    assert (rf.size, rf.stride, rf.padding) == ((427, 427), (32, 32), (213, 213))
    assert next(model.parameters()).is_cuda


def test_torchvision_resnet50_where_torchvision_imports() -> None:
    models = pytest.importorskip("torchvision.models")
    model = models.resnet50(weights=None).cuda().eval()
    rf = rfest.compute(model, (3, 224, 224), output="layer4")
    assert (rf.size, rf.stride, rf.padding) == ((427, 427), (32, 32), (213, 213))


def test_narrowed_pass_on_cuda_equals_the_full_width_pass() -> None:
    torch.manual_seed(0)
    model = ResNet50().cuda().eval()
    options: dict[str, object] = {"input_shape": (3, 96, 64), "output": "layer4"}
    narrowed = TorchGradientProvider(model, **options)  # type: ignore[arg-type]
    full = TorchGradientProvider(model, **options, narrow=False)  # type: ignore[arg-type]
    units = [(0, 0), (1, 1), (2, 1)]
    got = narrowed.gradient_maps((96, 64), "layer4", units)
    expected = full.gradient_maps((96, 64), "layer4", units)
    assert (got > 0).tolist() == (expected > 0).tolist()
    assert abs(got - expected).max() <= 1e-9 * abs(expected).max()
    assert narrowed._collapse and next(model.parameters()).is_cuda
