"""Every bad input gets a specific RFEstError that says what was wrong and how to fix it.

One row per case: the call, the error class, and phrases the message must contain (what
was wrong, what was expected, how to fix it). Backend-specific rows skip when the backend
is missing. ``python tests/test_bad_inputs.py`` prints each case with its message.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import rfest

HAS_TORCH = importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[], Any]
    error: type[rfest.RFEstError]
    phrases: tuple[str, ...]
    needs: str | None = None


def _torch_cases() -> list[Case]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from rfest_torch.examples import receptivefield_readme_net

    net = receptivefield_readme_net()

    class Raises(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("custom layer exploded")

    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    class Ignores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.bias = nn.Parameter(torch.ones(1, 1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(x.shape[0], 1, 4, 4) * 1.0

    class Infinite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.log(x - x.detach()))

    class Tuple(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.conv(x), self.conv(x)

    adaptive = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AdaptiveAvgPool2d(7))
    # six k3 s2 p1: r = 1 + 2 * 63 = 127, stride 64; at a cap of 64 unit 0 sees everything.
    big = nn.Sequential(*[nn.Conv2d(1, 1, 3, stride=2, padding=1) for _ in range(6)])
    up = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Upsample(scale_factor=2))

    def flatten_then_map(x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, (1, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).transpose(2, 3)

    return [
        Case(
            "torch: input_shape missing, first layer Linear",
            lambda: rfest.compute(nn.Sequential(nn.Flatten(), nn.Linear(8, 2))),
            rfest.InputShapeError,
            ("cannot infer input_shape", "input_shape=(C, *spatial)"),
        ),
        Case(
            "torch: input_shape of the wrong rank",
            lambda: rfest.compute(net, (96, 96)),
            rfest.ModelCallError,
            ("input of shape", "number of spatial axes"),
        ),
        Case(
            "torch: too many axes",
            lambda: rfest.compute(net, (1, 3, 96, 96, 1)),
            rfest.InputShapeError,
            ("has 5 axes", "without the batch axis"),
        ),
        Case(
            "torch: zero size",
            lambda: rfest.compute(net, (3, 0, 96)),
            rfest.InputShapeError,
            ("not a positive integer", "or None"),
        ),
        Case(
            "torch: negative size",
            lambda: rfest.compute(net, (3, -96, 96)),
            rfest.InputShapeError,
            ("-96", "positive integer"),
        ),
        Case(
            "torch: non-integer size",
            lambda: rfest.compute(net, (3, 96.5, 96)),
            rfest.InputShapeError,
            ("96.5", "int >= 1"),
        ),
        Case(
            "torch: bad channel count",
            lambda: rfest.compute(net, (4, 96, 96)),
            rfest.ModelCallError,
            ("channels", "input_shape=(C, *spatial)"),
        ),
        Case(
            "torch: non-integer channels",
            lambda: rfest.compute(net, ("3", 96, 96)),
            rfest.InputShapeError,
            ("channel count", "positive int"),
        ),
        Case(
            "torch: input smaller than the network takes",
            lambda: rfest.compute(net, (3, 8, 8)),
            rfest.ModelCallError,
            ("size large enough",),
        ),
        Case(
            "torch: the model swaps its spatial axes",
            lambda: rfest.compute(Transposed(), (3, 32, 32)),
            rfest.EstimationError,
            ("when the input grows along axis 0 only", "moves spatial axes", "before the axes"),
        ),
        Case(
            "torch: unknown output name",
            lambda: rfest.compute(net, (3, 96, 96), output="conv9"),
            rfest.OutputNotFoundError,
            ("no module named 'conv9'", "Did you mean"),
        ),
        Case(
            "torch: output named twice",
            lambda: rfest.compute(net, (3, 96, 96), output=["conv1", "conv1"]),
            rfest.OutputNotFoundError,
            ("twice",),
        ),
        Case(
            "torch: output of the wrong type",
            lambda: rfest.compute(net, (3, 96, 96), output=3),
            rfest.OutputNotFoundError,
            ("expected None, a layer name",),
        ),
        Case(
            "torch: model output is a tuple",
            lambda: rfest.compute(Tuple(), (1, 16, 16)),
            rfest.OutputNotFoundError,
            ("returns a tuple", "output='...'"),
        ),
        Case(
            "torch: output independent of the input",
            lambda: rfest.compute(Ignores(), (1, 8, 8)),
            rfest.NoDependenceError,
            ("does not depend on the input", "Check that"),
        ),
        Case(
            "torch: infinite gradients",
            lambda: rfest.compute(Infinite(), (1, 12, 12)),
            rfest.NonFiniteGradientError,
            ("NaN or infinity", "Try"),
        ),
        Case(
            "torch: forward raises",
            lambda: rfest.compute(Raises(), (1, 8, 8)),
            rfest.ModelCallError,
            ("raised RuntimeError", "custom layer exploded"),
        ),
        Case(
            "torch: two-input forward",
            lambda: rfest.compute(TwoInputs(), (1, 8, 8)),
            rfest.InputShapeError,
            ("takes 2 inputs", "Wrap the model"),
        ),
        Case(
            "torch: field beyond the cap",
            lambda: rfest.compute(big, (1, 16, 16), max_input_size=64),
            rfest.ProbeSizeError,
            ("(the cap)", "max_input_size="),
        ),
        Case(
            "torch: output that does not grow with the input",
            lambda: rfest.compute(adaptive, (1, 224, 224)),
            rfest.SizeDependentGeometryError,
            ("does not grow", "before that layer"),
        ),
        Case(
            "torch: unknown backend option",
            lambda: rfest.compute(net, (3, 96, 96), inptu="x"),
            rfest.OptionError,
            ("inptu", "takes input_shape"),
        ),
        Case(
            "torch: model class instead of instance",
            lambda: rfest.compute(nn.Conv2d, (1, 8, 8)),
            rfest.UnrecognizedModelError,
            ("class Conv2d", "pass an instance"),
        ),
        Case(
            "torch: wrong model for an explicit backend",
            lambda: rfest.compute(object(), (1, 8, 8), backend="torch"),
            rfest.UnrecognizedModelError,
            ("torch.nn.Module",),
        ),
        Case(
            "torch: plain function",
            lambda: rfest.compute(flatten_then_map, (1, 8, 8)),
            rfest.UnrecognizedModelError,
            ("plain callable", "backend="),
        ),
        Case(
            "torch: non-uniform is a warning, not an error",
            lambda: _expect_warning(lambda: rfest.compute(up, (1, 32, 32))),
            rfest.RFEstError,
            ("NonUniformWarning raised",),
        ),
    ]


class _WarningSeen(rfest.RFEstError):
    pass


def _expect_warning(call: Callable[[], rfest.ReceptiveField]) -> None:
    with pytest.warns(rfest.NonUniformWarning, match="largest seen") as record:
        rf = call()
    assert not rf.uniform and record
    raise _WarningSeen("NonUniformWarning raised; uniform=False")


CORE_CASES = [
    Case(
        "unknown backend name",
        lambda: rfest.compute(object(), backend="tensorflw"),
        rfest.UnknownBackendError,
        ("no rfest backend is named 'tensorflw'", "installed:"),
    ),
    Case(
        "unrecognised model type",
        lambda: rfest.compute(object()),
        rfest.UnrecognizedModelError,
        ("no rfest backend recognises", "Installed backends"),
    ),
    Case(
        "plain callable without backend",
        lambda: rfest.compute(lambda x: x),
        rfest.UnrecognizedModelError,
        ("plain callable", "pass backend="),
    ),
    Case(
        "bad dtype",
        lambda: rfest.compute(object(), dtype="float16"),
        rfest.OptionError,
        ("float16", "use one of"),
    ),
    Case(
        "bad cap",
        lambda: rfest.compute(object(), max_input_size=0),
        rfest.OptionError,
        ("max_input_size=0", "positive int"),
    ),
    Case(
        "bad linearize",
        lambda: rfest.compute(object(), linearize="yes"),
        rfest.OptionError,
        ("linearize='yes'", "True or False"),
    ),
]


def _keras_cases() -> list[Case]:
    import keras
    from keras import layers as L

    a, b = keras.Input((16, 16, 3), name="a"), keras.Input((16, 16, 3), name="b")
    two = keras.Model([a, b], L.Add()([L.Conv2D(2, 3)(a), L.Conv2D(2, 3)(b)]))
    net = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(2, 3, name="conv")])

    class FixedSize(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            # two k7 'same' convolutions: a field of 13, more than the 12 pixels the
            # Dense head lets the model take, so the probe must grow and cannot
            self.conv = L.Conv2D(2, 7, padding="same", name="conv")
            self.conv2 = L.Conv2D(2, 7, padding="same", name="conv2")
            self.flat = L.Flatten()
            self.dense = L.Dense(2)

        def call(self, x: object) -> object:
            return self.dense(self.flat(self.conv2(self.conv(x))))

    fixed = FixedSize()
    fixed(keras.ops.ones((1, 12, 12, 1)))
    permuted = keras.Sequential(
        [keras.Input((32, 32, 3)), L.Conv2D(2, (1, 5)), L.Permute((2, 1, 3), name="swap")]
    )
    return [
        Case(
            "keras: a Permute swaps the spatial axes",
            lambda: rfest.compute(permuted),
            rfest.EstimationError,
            ("when the input grows along axis 0 only", "(Permute", "before the axes"),
        ),
        Case(
            "keras: multi-input model without input=",
            lambda: rfest.compute(two),
            rfest.InputShapeError,
            ("2 inputs", "input='...'"),
        ),
        Case(
            "keras: input= names no input",
            lambda: rfest.compute(two, input="c"),
            rfest.InputShapeError,
            ("input='c'", "['a', 'b']"),
        ),
        Case(
            "keras: unknown layer name",
            lambda: rfest.compute(net, output="conf"),
            rfest.OutputNotFoundError,
            ("no layer named 'conf'", "Did you mean 'conv'"),
        ),
        Case(
            "keras: channel count against the declared input",
            lambda: rfest.compute(net, (32, 32, 4)),
            rfest.InputShapeError,
            ("does not match", "channels last"),
        ),
        Case(
            "keras: channels-first shape",
            lambda: rfest.compute(net, (3, 32, 32)),
            rfest.InputShapeError,
            ("(3, 32, 32)", "declared input (32, 32, 3)"),
        ),
        Case(
            "keras: unknown option",
            lambda: rfest.compute(net, inptu=1),
            rfest.OptionError,
            ("'keras' backend does not take", "inptu"),
        ),
        Case(
            "keras: fixed-size subclassed model that cannot be rebuilt",
            lambda: rfest.compute(fixed, (12, 12, 1), backend="keras", output="conv2"),
            rfest.ModelCallError,
            ("build function",),
        ),
    ]


def _jax_cases() -> list[Case]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Conv(2, (3, 3))(x)

    module = Net()
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 1)))
    return [
        Case(
            "jax: Linen module without its variables",
            lambda: rfest.compute(module, (8, 8, 1)),
            rfest.UnrecognizedModelError,
            ("holds no weights", "(module, variables)"),
        ),
        Case(
            "jax: unknown output",
            lambda: rfest.compute((module, variables), (8, 8, 1), output="Conv_9"),
            rfest.OutputNotFoundError,
            ("no output named 'Conv_9'", "Did you mean 'Conv_0'"),
        ),
        Case(
            "jax: channels-first shape",
            lambda: rfest.compute((module, variables), (1, 8, 8)),
            rfest.ModelCallError,
            ("(batch, *spatial, channels)",),
        ),
        Case(
            "jax: unknown option",
            lambda: rfest.compute((module, variables), (8, 8, 1), inptu=1),
            rfest.OptionError,
            ("'jax' backend does not take", "inptu"),
        ),
        Case(
            "jax: plain function without backend=",
            lambda: rfest.compute(jnp.tanh, (8, 8, 1)),
            rfest.UnrecognizedModelError,
            ("plain callable", "backend="),
        ),
    ]


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


CASES = (
    CORE_CASES
    + (_torch_cases() if HAS_TORCH else [])
    + (_keras_cases() if _has("keras", "rfest_keras") else [])
    + (_jax_cases() if _has("jax", "flax", "rfest_jax") else [])
)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_error(case: Case) -> None:
    with pytest.raises(case.error) as info:
        case.call()
    message = str(info.value)
    for phrase in case.phrases:
        assert phrase in message, f"{phrase!r} missing from: {message}"


def test_the_matrix_is_large() -> None:
    assert len(CASES) >= 25 or not HAS_TORCH


if __name__ == "__main__":  # pragma: no cover - prints the table for the notes
    import warnings

    warnings.simplefilter("ignore")
    for case in CASES:
        try:
            case.call()
        except rfest.RFEstError as exc:
            print(f"- {case.name}: {type(exc).__name__}: {exc}")


# -- the front door: one check per option, the same error everywhere ------------------------
# Options are checked before the backend is chosen, so an object() stands in for a model.

ENTRY_POINTS: dict[str, Callable[..., Any]] = {
    "compute": lambda **kw: rfest.compute(object(), (1, 8, 8), **kw),
    "report": lambda **kw: rfest.report(object(), (1, 8, 8), **kw),
    "effective": lambda **kw: rfest.effective(object(), (1, 8, 8), **kw),
    "gradient_map": lambda **kw: rfest.gradient_map(object(), (1, 8, 8), **kw),
}
BAD_OPTIONS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("dtype", "float16", ("compute", "report", "effective", "gradient_map")),
    ("dtype", None, ("compute", "report", "effective", "gradient_map")),
    ("linearize", "yes", ("compute", "report", "gradient_map")),
    ("linearize", 1, ("compute", "report", "gradient_map")),
    ("max_input_size", 0, ("compute", "report", "effective")),
    ("max_input_size", True, ("compute", "report", "effective")),
    ("max_input_size", 64.0, ("compute", "report", "effective")),
    ("contribution", "sum", ("effective",)),
    ("batch_size", 0, ("effective",)),
    ("num_images", -1, ("effective",)),
    ("seed", -1, ("effective",)),
    ("theoretical", "no", ("effective",)),
]
FRONT_DOOR = [(entry, option, value) for option, value, entries in BAD_OPTIONS for entry in entries]


@pytest.mark.parametrize(
    ("entry", "option", "value"), FRONT_DOOR, ids=[f"{e}-{o}={v!r}" for e, o, v in FRONT_DOOR]
)
def test_a_bad_option_is_an_option_error_at_every_entry_point(
    entry: str, option: str, value: Any
) -> None:
    with pytest.raises(rfest.OptionError) as info:
        ENTRY_POINTS[entry](**{option: value})
    assert f"{option}={value!r}" in str(info.value)


@pytest.mark.parametrize("option", ["dtype", "linearize", "max_input_size"])
def test_the_same_mistake_reads_the_same_everywhere(option: str) -> None:
    value = {"dtype": "float16", "linearize": "yes", "max_input_size": 0}[option]
    messages = set()
    for entry, call in ENTRY_POINTS.items():
        if (entry, option, value) not in FRONT_DOOR:
            continue
        with pytest.raises(rfest.OptionError) as info:
            call(**{option: value})
        messages.add(str(info.value))
    assert len(messages) == 1, messages


@pytest.mark.parametrize("entry", ["effective", "gradient_map"])
def test_entry_points_of_one_output_refuse_a_list(entry: str) -> None:
    with pytest.raises(rfest.OutputNotFoundError, match="one output"):
        ENTRY_POINTS[entry](output=["a", "b"])


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--max-input-size", "0"], "max_input_size=0"),
        (["--max-input-size", "-4"], "max_input_size=-4"),
    ],
)
def test_the_command_exits_2_on_a_bad_option_before_loading_the_model(
    argv: list[str], phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from rfest._cli import main

    assert main(["no_such_package.nets:model", *argv]) == 2
    assert phrase in capsys.readouterr().err
