"""The user's PyTorch model and torch's global state are left exactly as they were."""

from __future__ import annotations

import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import rfest  # noqa: E402
from rfest_torch.examples import receptivefield_readme_net  # noqa: E402

pytestmark = pytest.mark.torch


def model_with_everything() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
    )
    net.train()
    net[0].weight.requires_grad_(False)
    net[5].register_forward_hook(lambda module, args, output: None)
    return net


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {
            n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for n, m in model.named_modules()
        },
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "devices": {n: (p.device, p.dtype) for n, p in model.named_parameters()},
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
        assert after["state"][key].dtype == value.dtype, key
    for field in ("requires_grad", "training", "hooks", "grads", "devices"):
        assert after[field] == before[field], field


def global_state() -> tuple[Any, ...]:
    return (
        torch.get_default_dtype(),
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.backends.mkldnn.enabled,  # turned off during channel-collapsed passes
    )


def test_successful_call_leaves_model_and_globals_untouched() -> None:
    model = model_with_everything()
    before, state = snapshot(model), global_state()
    rfest.compute(model, (3, 32, 32), output=["0", "5"])
    assert_unchanged(model, before)
    assert global_state() == state


def test_failed_calls_leave_model_untouched() -> None:
    model = model_with_everything()
    before, state = snapshot(model), global_state()
    with pytest.raises(rfest.OutputNotFoundError):
        rfest.compute(model, (3, 32, 32), output="conv9")
    with pytest.raises(rfest.ModelCallError):
        rfest.compute(model, (5, 32, 32))  # wrong channel count
    with pytest.raises(rfest.ProbeSizeError):
        rfest.compute(model, (3, 8, 8), max_input_size=8)
    assert_unchanged(model, before)
    assert global_state() == state


def test_called_under_no_grad_and_in_float64_default() -> None:
    model = receptivefield_readme_net()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            rf = rfest.compute(model, (3, 96, 96))
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(previous)
    assert rf.size == (34, 34)


def test_half_precision_and_channels_last_models_give_the_same_answer() -> None:
    model = receptivefield_readme_net().half().to(memory_format=torch.channels_last)
    before = snapshot(model)
    assert rfest.compute(model, (3, 96, 96)).size == (34, 34)
    assert_unchanged(model, before)
    assert next(model.parameters()).dtype == torch.float16


def test_repeated_calls_are_identical() -> None:
    model = receptivefield_readme_net()
    assert rfest.compute(model, (3, 96, 96)) == rfest.compute(model, (3, 96, 96))


def test_concurrent_calls_from_two_threads() -> None:
    model = receptivefield_readme_net()
    results: list[rfest.ReceptiveField] = []
    errors: list[BaseException] = []

    def work(output: str) -> None:
        try:
            for _ in range(3):
                results.append(rfest.compute(model, (3, 96, 96), output=output))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("feature_grid", "conv2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    sizes = sorted(r.size[0] for r in results)  # conv2: 5 + 2 = 7; feature_grid: 34
    assert sizes == [7, 7, 7, 34, 34, 34]


def test_compiled_wrapper_is_measured_through() -> None:
    model = receptivefield_readme_net()
    wrapper = torch.compile(model)
    assert rfest.compute(wrapper, (3, 96, 96)).size == (34, 34)


def test_errors_say_what_to_fix() -> None:
    model = receptivefield_readme_net()
    with pytest.raises(rfest.OutputNotFoundError, match="feature_grid"):
        rfest.compute(model, (3, 96, 96), output="feature_grd")
    with pytest.raises(rfest.InputShapeError, match=r"\(C, \*spatial\)"):
        rfest.compute(model, (96, 96, 3, 1, 1))
    with pytest.raises(rfest.InputShapeError, match="input_shape"):
        rfest.compute(model)
    with pytest.raises(rfest.ModelCallError, match="channels") as info:
        rfest.compute(model, (4, 96, 96))
    assert info.value.__cause__ is not None


class Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.ones(1, 2, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], 2, 4, 4) + 0 * x[:, :2, :4, :4].detach()


def test_output_that_ignores_the_input() -> None:
    with pytest.raises(rfest.NoDependenceError, match="does not depend"):
        rfest.compute(Constant(), (2, 8, 8))
