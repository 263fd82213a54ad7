"""Per-layer report: the receptive field of every layer of a model, at the cost of a few passes.

The backend lists the layers (`rfest.LayerListingProvider`); one provider is built for
all of them, so each probe size runs the model once for every layer's output shape. When
the provider can serve several outputs in one pass (``gradient_maps_many``), every
layer's estimate runs at once and their gradient requests share forward and backward
passes (:mod:`rfest._batch`); otherwise layers are measured one after another. Either
way each layer is measured as `rfest.compute` measures it (thin float32 scout probes,
confirmed in the asked dtype), with the same answers. A layer whose output rfest cannot
measure (not a tensor, never run, no spatial axes matching the input, a field that does
not fit...) gets a record that says why; the report never stops at it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rfest._batch import MultiOutputGradientProvider, run_batched
from rfest._errors import BackendError, InputShapeError, ModelCallError, RFEstError
from rfest._estimate import estimate
from rfest._options import DEFAULT_MAX_INPUT_SIZE, Dtype, ProbeOptions, check_outputs
from rfest._protocol import GradientProvider, LayerListingProvider
from rfest._result import ReceptiveField
from rfest._session import Session

__all__ = ["LayerRecord", "LayerReport", "ProgressCallback", "report"]

ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, layer_name)`` as the records complete, in report
order (``layer_name`` is that of record ``done``), then ``progress(total, total, "")``."""


@dataclass(frozen=True)
class LayerRecord:
    """The receptive field of one layer's output, or why it has none.

    Fields are those of `rfest.ReceptiveField` (per spatial axis, input-axis
    order) plus ``name`` (what ``output=`` takes), ``type`` (the layer's class name where
    the model exposes it) and ``error`` (None, or why the layer has no measurable field).

    Example:
        >>> LayerRecord("conv1", output_shape=(92, 92), size=(5, 5), stride=(1, 1),
        ...             padding=(0, 0), offset=(2.0, 2.0)).status
        'ok'
        >>> LayerRecord("head", error="output is a tuple, not a tensor").status
        'error'
    """

    name: str
    type: str | None = None
    output_shape: tuple[int, ...] | None = None
    size: tuple[int | None, ...] | None = None
    stride: tuple[int | None, ...] | None = None
    padding: tuple[int | None, ...] | None = None
    offset: tuple[float | None, ...] | None = None
    is_global: bool = False
    uniform: bool = True
    grown: bool = False
    error: str | None = None
    step: int | None = None
    """Position of the layer's output in one forward pass (0 first), where the backend
    says (``execution_order()``); None otherwise or when the layer did not run."""
    leaf: bool = True
    """False for a layer that holds other layers (a PyTorch container, a nested model)."""

    @property
    def status(self) -> str:
        """``"ok"``, ``"global"``, ``"non-uniform"`` or ``"error"``."""
        if self.error is not None:
            return "error"
        if self.is_global:
            return "global"
        return "ok" if self.uniform else "non-uniform"

    @classmethod
    def from_field(cls, name: str, rf: ReceptiveField, type: str | None = None) -> LayerRecord:
        """The record of a measured field."""
        return cls(
            name=name,
            type=type,
            output_shape=tuple(rf.output_shape),
            size=rf.size,
            stride=rf.stride,
            padding=rf.padding,
            offset=rf.offset,
            is_global=rf.is_global,
            uniform=rf.uniform,
            grown=rf.grown,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form (tuples become lists), with ``status``."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        } | {"status": self.status}


@dataclass(frozen=True)
class LayerReport:
    """Every layer's record, in the order the backend lists the layers.

    Example:
        >>> r = LayerReport((LayerRecord("conv", output_shape=(6,), size=(3,), stride=(1,),
        ...                              padding=(0,), offset=(1.0,)),), input_shape=(8,))
        >>> r["conv"].size, len(r)
        ((3,), 1)
        >>> print(r.to_text())
        layer  type  output  size  stride  padding  offset  status
        -----  ----  ------  ----  ------  -------  ------  ------
        conv   -     6       3     1       0        1.0     ok
    """

    records: tuple[LayerRecord, ...]
    input_shape: tuple[int, ...]
    backend: str | None = None
    inferred_input_shape: tuple[int | None, ...] | None = None
    """As `ReceptiveField.inferred_input_shape`: what rfest read from the model."""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[LayerRecord]:
        return iter(self.records)

    def __getitem__(self, name: str) -> LayerRecord:
        for record in self.records:
            if record.name == name:
                return record
        raise KeyError(f"no layer named {name!r} in the report")

    def to_dicts(self) -> list[dict[str, Any]]:
        """The records as a list of plain dicts (see `LayerRecord.to_dict`)."""
        return [record.to_dict() for record in self.records]

    def to_json(self, **dumps_options: Any) -> str:
        """JSON text: ``{"input_shape": [...], "backend": ..., "layers": [records]}``."""
        document = {
            "input_shape": list(self.input_shape),
            "backend": self.backend,
            "inferred_input_shape": None
            if self.inferred_input_shape is None
            else list(self.inferred_input_shape),
            "layers": self.to_dicts(),
        }
        return json.dumps(document, **dumps_options)

    def to_text(self) -> str:
        """A readable table, one row per layer; errors follow their row, indented."""
        header = ("layer", "type", "output", "size", "stride", "padding", "offset", "status")
        rows = [
            (
                r.name,
                r.type or "-",
                _cell(r.output_shape),
                _cell(r.size),
                _cell(r.stride),
                _cell(r.padding),
                _cell(r.offset),
                r.status + (" (grown)" if r.grown else ""),
            )
            for r in self.records
        ]
        widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
        lines = [_line(header, widths), _line(tuple("-" * w for w in widths), widths)]
        for record, row in zip(self.records, rows, strict=True):
            lines.append(_line(row, widths))
            if record.error is not None:
                lines.append(f"    {record.error}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def report(
    model: Any,
    input_shape: Sequence[int | None] | None = None,
    *,
    backend: str | None = None,
    layers: Sequence[str] | None = None,
    dtype: Dtype = "float64",
    linearize: bool = True,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    progress: ProgressCallback | None = None,
    **backend_options: Any,
) -> LayerReport:
    """The receptive field of every layer of ``model``: a `LayerReport`.

    Arguments are those of `rfest.compute`; instead of ``output`` it takes
    ``layers`` (None: every layer the backend lists, which needs a backend with
    ``layer_names()``). Records follow the backend's order (PyTorch: ``named_modules()``).
    A layer that cannot be measured gets a record whose ``error`` says why. Non-uniform
    fields are flagged in their record (``uniform=False``), without a warning.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        >>> r = report(net, (1, 16, 16))
        >>> for x in r:
        ...     print(x.name, x.size, x.stride, x.status)
        0 (3, 3) (1, 1) ok
        1 (3, 3) (1, 1) ok
        2 (4, 4) (2, 2) ok
        3 None None global
    """
    options = ProbeOptions.check(dtype=dtype, linearize=linearize, max_input_size=max_input_size)
    if layers is not None and layers:
        layers = check_outputs(layers, "a layer name")
    session = Session(
        model, input_shape, backend=backend, options=options, backend_options=backend_options
    )
    name = session.backend

    def build(output: str | Sequence[str] | None) -> GradientProvider:
        return session.provider(_key(output))

    def scout(output: str | Sequence[str] | None) -> GradientProvider | None:
        return session.scout(_key(output))

    lister = build(None)
    base = session.free_spatial(lister)
    if layers is None:
        if not isinstance(lister, LayerListingProvider):
            raise BackendError(
                f"the rfest backend {name!r} cannot list a model's layers (its provider has "
                f"no layer_names()); pass layers=[...] with the names to report"
            )
        layers = lister.layer_names()
    names = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
    if not names:
        raise InputShapeError("the model has no layers to report; pass layers=[...]")
    types = _layer_types(model, names)
    shared, failures = _shared_provider(build, names, base)
    shared_scout = scout(list(shared.output_names)) if shared is not None else None
    records: list[LayerRecord | None] = [None] * len(names)
    reported = 0

    def complete(index: int, record: LayerRecord) -> None:
        nonlocal reported
        records[index] = record
        while reported < len(names) and records[reported] is not None:
            if progress is not None:
                progress(reported, len(names), names[reported])
            reported += 1

    measured = [k for k, layer in enumerate(names) if layer not in failures]
    for k, layer in enumerate(names):
        if layer in failures:
            complete(k, LayerRecord(layer, type=types.get(layer), error=failures[layer]))

    def measure(k: int) -> Callable[[GradientProvider, GradientProvider | None], LayerRecord]:
        def run(provider: GradientProvider, provider_scout: GradientProvider | None) -> LayerRecord:
            return _measure(
                build,
                scout,
                provider,
                provider_scout,
                names[k],
                types.get(names[k]),
                max_input_size,
            )

        return run

    if isinstance(shared, MultiOutputGradientProvider) and (
        shared_scout is None or isinstance(shared_scout, MultiOutputGradientProvider)
    ):

        def done(index: int, result: LayerRecord | BaseException) -> None:
            if isinstance(result, BaseException):
                raise result
            complete(measured[index], result)

        run_batched([measure(k) for k in measured], shared, shared_scout, on_done=done)
    else:
        for k in measured:
            complete(k, measure(k)(shared, shared_scout))  # type: ignore[arg-type]
    if progress is not None:
        progress(len(names), len(names), "")
    inferred = getattr(lister, "inferred_input_shape", None)
    placed = _placed([r for r in records if r is not None], lister)
    return LayerReport(
        placed,
        input_shape=base,
        backend=name,
        inferred_input_shape=None if inferred is None else tuple(inferred),
    )


def _placed(records: list[LayerRecord], lister: GradientProvider) -> tuple[LayerRecord, ...]:
    """Records with their position in the forward pass and whether they hold other layers,
    where the backend tells (an optional ``execution_order()`` of ``(name, is leaf)``)."""
    order = getattr(lister, "execution_order", None)
    if not callable(order):
        return tuple(records)
    try:
        steps = {name: (step, leaf) for step, (name, leaf) in enumerate(order())}
    except RFEstError:
        return tuple(records)
    return tuple(
        dataclasses.replace(r, step=steps[r.name][0], leaf=steps[r.name][1])
        if r.name in steps
        else r
        for r in records
    )


def _key(output: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    return output if output is None or isinstance(output, str) else tuple(output)


def _measure(
    build: Callable[[str | Sequence[str] | None], GradientProvider],
    scout: Callable[[str | Sequence[str] | None], GradientProvider | None],
    shared: GradientProvider | None,
    shared_scout: GradientProvider | None,
    layer: str,
    type_name: str | None,
    max_input_size: int,
) -> LayerRecord:
    """One layer's record: on the shared provider, else (a model that fails at some probe
    sizes once it runs past this layer) on a provider for this layer alone."""
    try:
        if shared is not None:
            try:
                rf = estimate(shared, layer, max_input_size=max_input_size, scout=shared_scout)
                return LayerRecord.from_field(layer, rf, type_name)
            except ModelCallError:
                pass
        rf = estimate(build(layer), layer, max_input_size=max_input_size, scout=scout(layer))
        return LayerRecord.from_field(layer, rf, type_name)
    except RFEstError as exc:
        return LayerRecord(layer, type=type_name, error=_reason(exc))


def _shared_provider(
    build: Callable[[str | Sequence[str] | None], GradientProvider],
    names: list[str],
    base: tuple[int, ...],
) -> tuple[GradientProvider | None, dict[str, str]]:
    """One provider for every layer that runs at ``base``, and why the others do not.

    Tries all layers at once; when that fails, halves the list until each failing layer
    is found alone (a few model runs per failing layer).
    """
    failures: dict[str, str] = {}

    def usable(group: list[str]) -> list[str]:
        try:
            shapes = build(group).output_shapes(base)
        except RFEstError as exc:
            if len(group) == 1:
                failures[group[0]] = _reason(exc)
                return []
            half = len(group) // 2
            return usable(group[:half]) + usable(group[half:])
        ran = [n for n in group if n in shapes]
        for n in group:
            if n not in shapes:
                failures[n] = "the layer did not run when the model was called on the input"
        return ran

    good = usable(names)
    return (build(good) if good else None), failures


def _layer_types(model: Any, names: Sequence[str]) -> dict[str, str]:
    """Class names of the model's layers, where the model lists them (duck-typed); a call
    ``name:k`` of a layer called several times has the type of ``name``."""
    types = _declared_types(model)
    for name in names:
        layer, separator, call = name.rpartition(":")
        if name not in types and separator and call.isdigit() and layer in types:
            types[name] = types[layer]
    return types


def _declared_types(model: Any) -> dict[str, str]:
    named_modules = getattr(model, "named_modules", None)
    if callable(named_modules):
        try:
            return {name: type(module).__name__ for name, module in named_modules() if name}
        except Exception:
            return {}
    model_layers = getattr(model, "layers", None)
    if isinstance(model_layers, (list, tuple)):
        return {
            str(layer.name): type(layer).__name__
            for layer in model_layers
            if hasattr(layer, "name")
        }
    return {}


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _cell(values: tuple[Any, ...] | None) -> str:
    if values is None:
        return "-"
    if len(values) == 0:
        return "()"
    return "x".join("-" if v is None else str(v) for v in values)


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
