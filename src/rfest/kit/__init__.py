"""The backend kit: what every rfest backend needs but no framework decides.

A third-party backend (see docs/plugins.md) keeps only its framework's part: how to run
the model, differentiate it, linearize it and capture intermediates. The rest is here,
the same for every backend, so every backend names outputs, checks shapes, reports model
errors and builds probe inputs the same way:

- `check_dtype`: the front door's own check, for a provider built directly
  (`rfest.OptionError` unless ``"float32"`` or ``"float64"``).
- `resolve_outputs`: ``output=`` to ``{reported name: layer name or None}``, with
  "did you mean" for unknown names; the model's own output never shadows a layer
  named ``"output"`` (`MODEL_OUTPUT`).
- `split_input_shape`: one sample's shape into channels and spatial sizes, per layout.
- `output_spatial_shape`: an output's spatial shape, or `rfest.OutputShapeError`.
- `model_errors`: anything the model raises becomes `rfest.ModelCallError`.
- `split_call`, `call_names`, `check_call`: ``"name:k"`` for the k-th call of a layer
  called more than once (`CALL_SEPARATOR`); the bare name of such a layer is refused.
- `probe_input`: the input every probe uses (ones, or a fixed positive random input).
- `ShapeCache`: output shapes per probe size, computed once, thread-safe.
- `TokenGrid`: the layout of a token output on its patch grid (`rfest.TokenGridProvider`).

Only numpy and the standard library are imported here.
"""

from rfest._options import Dtype, check_dtype
from rfest.kit._calls import model_errors
from rfest.kit._names import MODEL_OUTPUT, did_you_mean, resolve_outputs
from rfest.kit._probes import ShapeCache, probe_input
from rfest.kit._shapes import Layout, output_spatial_shape, split_input_shape
from rfest.kit._shared_calls import CALL_SEPARATOR, call_names, check_call, split_call
from rfest.kit._tokens import TokenGrid

__all__ = [
    "CALL_SEPARATOR",
    "MODEL_OUTPUT",
    "Dtype",
    "Layout",
    "ShapeCache",
    "TokenGrid",
    "call_names",
    "check_call",
    "check_dtype",
    "did_you_mean",
    "model_errors",
    "output_spatial_shape",
    "probe_input",
    "resolve_outputs",
    "split_call",
    "split_input_shape",
]
