"""The ``rfest`` command: receptive fields of a model named on the command line.

Exit codes (also in the docs):

====  ==========================================================================
0     success
1     an unexpected error (a bug: the traceback is printed)
2     usage: a bad option, input shape, output name or unit
3     the model could not be loaded or built (import, attribute, file)
4     something is missing: the backend, its framework, or matplotlib for --plot
5     the model raised when rfest ran it
6     the gradients do not give a valid receptive field (see the message)
130   interrupted
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rfest._api import compute
from rfest._errors import (
    BackendError,
    InputShapeError,
    ModelCallError,
    OptionError,
    OutputNotFoundError,
    RFEstError,
)
from rfest._options import ProbeOptions
from rfest._report import LayerReport, report
from rfest._result import ReceptiveField

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_LOAD = 3
EXIT_MISSING = 4
EXIT_MODEL = 5
EXIT_ESTIMATE = 6
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "success",
    1: "unexpected error (a bug; the traceback is printed)",
    EXIT_USAGE: "usage: a bad option, input shape, output name or unit",
    EXIT_LOAD: "the model could not be loaded or built",
    EXIT_MISSING: "a backend, its framework, or matplotlib (for --plot) is missing",
    EXIT_MODEL: "the model raised when rfest ran it",
    EXIT_ESTIMATE: "the gradients do not give a valid receptive field",
    EXIT_INTERRUPTED: "interrupted",
}


class CommandError(Exception):
    """A failure the user can fix: printed as ``rfest: error: ...``, then exit ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rfest`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Example:
        >>> main(["--version"])
        rfest 0.1.0
        0
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        from rfest import __version__

        print(f"rfest {__version__}")
        return EXIT_OK
    if args.model is None:
        parser.print_usage(sys.stderr)
        print("rfest: error: name a model (package.module:attr or a .keras file)", file=sys.stderr)
        return EXIT_USAGE
    progress = _Progress(sys.stderr, enabled=_progress_enabled(args))
    try:
        return _run(args, progress)
    except CommandError as exc:
        progress.clear()
        print(f"rfest: error: {exc}", file=sys.stderr)
        return exc.code
    except RFEstError as exc:
        progress.clear()
        print(f"rfest: error: {exc}", file=sys.stderr)
        return _code_of(exc)
    except KeyboardInterrupt:
        progress.clear()
        print("rfest: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, progress: _Progress) -> int:
    input_shape = _parse_shape(args.input_shape)
    checked = ProbeOptions.check(
        dtype=args.dtype, linearize=not args.no_linearize, max_input_size=args.max_input_size
    )
    options: dict[str, Any] = {
        "dtype": checked.dtype,
        "linearize": checked.linearize,
        "max_input_size": checked.max_input_size,
    }
    progress.say(f"loading {args.model}")
    model, backend = _load_model(args.model, args.backend, call=not args.as_is)
    if args.backend is not None:
        backend = args.backend
    if args.report:
        layers = args.output or None
        result = report(
            model,
            input_shape,
            backend=backend,
            layers=layers,
            progress=progress.layer,
            **options,
        )
        progress.clear()
        print(result.to_json(indent=2) if args.json else result.to_text())
        if args.plot is not None:
            _save_growth(result, args.plot)
        return EXIT_OK
    output: str | list[str] | None = None
    if args.output:
        output = args.output[0] if len(args.output) == 1 else list(args.output)
    label = "the model's output" if output is None else ", ".join(args.output)
    progress.say(f"measuring {label}")
    started = time.perf_counter()
    measured = compute(model, input_shape, backend=backend, output=output, **options)
    progress.clear()
    fields = measured if isinstance(measured, dict) else {measured.output or "output": measured}
    if args.json:
        print(json.dumps({name: rf.to_dict() for name, rf in fields.items()}, indent=2))
    else:
        print(_text(fields, time.perf_counter() - started))
    if args.plot is not None:
        _save_grids(fields, args.plot)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rfest",
        description=(
            "Measure the receptive field (size, stride, padding, offset per spatial axis) "
            "of a model's output, named layers, or every layer."
        ),
        epilog=(
            "MODEL is package.module:attr (a model, a class or zero-argument function that "
            "builds one; other callables, such as a Keras build function f(input_shape) or "
            "a JAX function f(x), are passed to the backend as they are) or a saved Keras "
            "file (.keras, loaded with safe_mode=True). Exit codes: "
            + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())
        ),
    )
    parser.add_argument("model", nargs="?", help="package.module:attr, or a .keras file")
    parser.add_argument(
        "-b", "--backend", help="backend name (default: detected from the model's type)"
    )
    parser.add_argument(
        "-i",
        "--input-shape",
        help="one sample without the batch axis, in the framework's layout, e.g. 3,224,224 "
        "(PyTorch) or 224,224,3 (Keras, JAX); 'None' leaves a spatial size free",
    )
    parser.add_argument(
        "-o",
        "--output",
        action="append",
        metavar="NAME",
        help="a layer to measure (repeat for several); default: the model's output. "
        "With --report: the layers to report (default: every layer)",
    )
    parser.add_argument("--report", action="store_true", help="report every layer")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="save a figure (PNG, SVG, PDF by extension): the field grid over a sample image, "
        "or with --report the growth of the field across layers",
    )
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument(
        "--no-linearize", action="store_true", help="measure the real model (see the docs)"
    )
    parser.add_argument(
        "--max-input-size", type=int, default=4096, help="largest probe along one axis"
    )
    parser.add_argument(
        "--as-is",
        action="store_true",
        help="pass MODEL to the backend as it is, even a class or zero-argument function",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def _parse_shape(text: str | None) -> tuple[int | None, ...] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.replace("x", ",").strip("()[] ").split(",") if p.strip()]
    shape: list[int | None] = []
    for part in parts:
        if part.lower() in ("none", "?", "_"):
            shape.append(None)
        elif part.isdigit() and int(part) > 0:
            shape.append(int(part))
        else:
            raise CommandError(
                f"--input-shape {text!r}: {part!r} is not a positive integer or None; "
                f"write one sample's shape like 3,224,224",
                EXIT_USAGE,
            )
    if not parts:
        raise CommandError(f"--input-shape {text!r} is empty; e.g. 3,224,224", EXIT_USAGE)
    return tuple(shape)


def _load_model(spec: str, backend: str | None, *, call: bool) -> tuple[Any, str | None]:
    """The model named by ``spec``, and the backend a saved file implies."""
    if spec.endswith((".keras", ".h5")):
        return _load_keras_file(spec), "keras"
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise CommandError(
            f"model {spec!r}: expected package.module:attr (e.g. mypkg.nets:resnet50) or a "
            f"file ending in .keras",
            EXIT_USAGE,
        )
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like python -m: modules beside you import
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(
            f"cannot import {module_name!r}: {exc}. Check the module path, and run rfest "
            f"where it imports (or put its folder on PYTHONPATH)",
            EXIT_LOAD,
        ) from exc
    except Exception as exc:
        raise CommandError(
            f"importing {module_name!r} raised {type(exc).__name__}: {exc}", EXIT_LOAD
        ) from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            names = [n for n in dir(target) if not n.startswith("_")]
            raise CommandError(
                f"{module_name!r} has no attribute {attr!r} (missing {part!r}); it has: "
                f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}",
                EXIT_LOAD,
            ) from None
    if call and _builds_a_model(target):
        try:
            target = target()
        except Exception as exc:
            raise CommandError(
                f"building the model with {spec}() raised {type(exc).__name__}: {exc}",
                EXIT_LOAD,
            ) from exc
    return target, backend


def _builds_a_model(target: Any) -> bool:
    """A class, or a plain function that can be called with no arguments."""
    if inspect.isclass(target):
        return True
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        return False
    try:
        inspect.signature(target).bind()
    except TypeError:
        return False
    return True


def _load_keras_file(path: str) -> Any:
    if not Path(path).is_file():
        raise CommandError(f"no such file: {path}", EXIT_LOAD)
    try:
        import keras
    except ImportError as exc:
        raise CommandError(
            f"loading {path} needs Keras 3: pip install 'rfest[keras]' ({exc})", EXIT_MISSING
        ) from exc
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:
        raise CommandError(
            f"Keras could not load {path} (safe_mode=True): {type(exc).__name__}: {exc}",
            EXIT_LOAD,
        ) from exc


def _text(fields: dict[str, ReceptiveField], seconds: float) -> str:
    lines = []
    for name, rf in fields.items():
        lines.append(f"{name}:")
        if rf.is_global:
            lines.append("  global: every output unit sees the whole input")
        else:
            for key in ("size", "stride", "padding", "offset"):
                lines.append(f"  {key:<8}{getattr(rf, key)}")
        lines.append(f"  {'input':<8}{rf.input_shape}")
        lines.append(f"  {'output':<8}{rf.output_shape}")
        if rf.grown:
            lines.append(f"  {'probed':<8}{rf.probe_shape} (grown: the field exceeds the input)")
        if not rf.uniform:
            lines.append("  non-uniform: units differ; size is the largest seen")
    lines.append(f"({seconds:.1f} s)")
    return "\n".join(lines)


def _save_grids(fields: dict[str, ReceptiveField], path: str) -> None:
    plots = _plots_module()
    drawable = {n: rf for n, rf in fields.items() if not rf.is_global and rf.ndim == 2}
    if not drawable:
        raise CommandError(
            "--plot draws the field grid of 2-D, non-global outputs; none was measured",
            EXIT_USAGE,
        )
    if len(drawable) == 1:
        (rf,) = drawable.values()
        fig = plots.plot_rf_grid(rf)
    else:
        fig = plots.plot_rf_grids(drawable)
    _save(fig, path)


def _save_growth(result: LayerReport, path: str) -> None:
    _save(_plots_module().plot_rf_growth(result), path)


def _plots_module() -> Any:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise CommandError(
            f"--plot needs matplotlib: pip install 'rfest[plot]' ({exc})", EXIT_MISSING
        ) from exc
    from rfest import _plots

    return _plots


def _save(fig: Any, path: str) -> None:
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot write the figure to {path}: {exc}", EXIT_USAGE) from exc
    print(f"figure written to {path}", file=sys.stderr)


def _code_of(exc: RFEstError) -> int:
    if isinstance(exc, (InputShapeError, OptionError, OutputNotFoundError)):
        return EXIT_USAGE
    if isinstance(exc, BackendError):
        return EXIT_MISSING
    if isinstance(exc, ModelCallError):
        return EXIT_MODEL
    return EXIT_ESTIMATE


def _progress_enabled(args: argparse.Namespace) -> bool:
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


class _Progress:
    """One status line on stderr, rewritten in place; silent when disabled."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled
        self._width = 0
        self._started = time.perf_counter()

    def say(self, text: str) -> None:
        if not self._enabled:
            return
        line = f"rfest: {text} ({time.perf_counter() - self._started:.0f} s)"
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)

    def layer(self, done: int, total: int, name: str) -> None:
        if done < total:
            self.say(f"[{done + 1}/{total}] {name}")

    def clear(self) -> None:
        if self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
