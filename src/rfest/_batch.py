"""Many outputs' estimates at once: their gradient requests share forward and backward passes.

`estimate` measures one output by asking its provider for gradient maps, one probe at a
time, each probe chosen from the answers before it. To measure many outputs at the cost
of a few passes, each output's `estimate` runs as a coroutine (a thread that runs only
when the scheduler hands it the turn, so exactly one runs at any moment and the order is
deterministic). When every unfinished estimate is waiting for gradient maps, the
requests that share a provider and an input size go to the backend in one
``gradient_maps_many`` call: one forward pass keeping every requested output, and one
backward pass whose batch holds the units of several outputs, each output's cotangent on
its own rows. The estimator itself is unchanged: every estimate sees exactly the maps
it would have got alone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from rfest._protocol import GradientProvider

__all__ = ["MultiOutputGradientProvider", "run_batched"]

_T = TypeVar("_T")

# Probe-input elements (rows x spatial size) per backend call: a full-width probe of a
# large field holds one output's unit per row, so a call must not hold them all.
_MAX_ELEMENTS = 2**22

Units = Sequence[tuple[int, ...]]


@runtime_checkable
class MultiOutputGradientProvider(GradientProvider, Protocol):
    """A provider that can serve several outputs' gradient requests in one pass.

    ``gradient_maps_many(spatial_shape, requests)``
        ``requests`` is a list of ``(output_name, units)``; returns one array per request,
        each exactly what ``gradient_maps(spatial_shape, output_name, units)`` returns.
    """

    def gradient_maps_many(
        self, spatial_shape: tuple[int, ...], requests: Sequence[tuple[str, Units]]
    ) -> list[np.ndarray]: ...


class _Cancelled(BaseException):
    """Raised in a waiting estimate when the run is abandoned (the caller raised)."""


@dataclass(eq=False)
class _Request:
    provider: MultiOutputGradientProvider
    spatial: tuple[int, ...]
    output_name: str
    units: Units


@dataclass(eq=False)
class _Task:
    function: Callable[[], Any]
    turn: threading.Event = field(default_factory=threading.Event)
    request: _Request | None = None
    answer: Any = None
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    cancelled: bool = False


class _Scheduler:
    """Runs tasks one at a time, each until it waits for gradient maps or finishes."""

    def __init__(self) -> None:
        self._yielded = threading.Event()
        self._local = threading.local()

    def current(self) -> _Task | None:
        task: _Task | None = getattr(self._local, "task", None)
        return task

    def start(self, task: _Task) -> threading.Thread:
        def body() -> None:
            self._local.task = task
            task.turn.wait()
            task.turn.clear()
            try:
                if not task.cancelled:
                    task.result = task.function()
            except _Cancelled:
                pass
            except BaseException as exc:  # handed to the caller with the task's result
                task.error = exc
            finally:
                task.done = True
                self._yielded.set()

        thread = threading.Thread(target=body, daemon=True, name="rfest-estimate")
        thread.start()
        return thread

    def step(self, task: _Task) -> None:
        """Give ``task`` the turn and wait until it hands it back."""
        self._yielded.clear()
        task.turn.set()
        self._yielded.wait()

    def wait_for_maps(self, task: _Task, request: _Request) -> np.ndarray:
        """Called in a task: park ``request``, hand the turn back, return its answer."""
        task.request = request
        self._yielded.set()
        task.turn.wait()
        task.turn.clear()
        if task.cancelled:
            raise _Cancelled
        answer, task.answer = task.answer, None
        if isinstance(answer, BaseException):
            raise answer
        result: np.ndarray = answer
        return result


class _Deferred:
    """A provider whose gradient requests wait to be served together with others'."""

    def __init__(
        self,
        provider: MultiOutputGradientProvider,
        scheduler: _Scheduler,
        shapes: GradientProvider,
    ) -> None:
        self._provider = provider
        self._scheduler = scheduler
        self._shapes = shapes

    @property
    def spatial_shape(self) -> tuple[int | None, ...]:
        return self._provider.spatial_shape

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._provider.output_names

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        # Shapes do not depend on the dtype: a float32 scout reads them from the provider.
        return self._shapes.output_shapes(spatial_shape)

    def gradient_maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Units
    ) -> np.ndarray:
        task = self._scheduler.current()
        request = _Request(self._provider, tuple(spatial_shape), output_name, list(units))
        if task is None:
            return _serve_alone(request)
        return self._scheduler.wait_for_maps(task, request)


def run_batched(
    functions: Sequence[Callable[[GradientProvider, GradientProvider | None], _T]],
    provider: MultiOutputGradientProvider,
    scout: MultiOutputGradientProvider | None = None,
    *,
    on_done: Callable[[int, Any], None] | None = None,
) -> list[_T | BaseException]:
    """Call each ``function(provider, scout)`` with deferring wrappers of the two providers,
    serving their gradient requests together. Returns each function's result, or the
    exception it raised; ``on_done(index, that)`` is called as each one finishes."""
    scheduler = _Scheduler()
    deferred = _Deferred(provider, scheduler, provider)
    deferred_scout = None if scout is None else _Deferred(scout, scheduler, provider)
    tasks = [
        _Task(lambda f=function: f(deferred, deferred_scout))  # type: ignore[misc]
        for function in functions
    ]
    threads = [scheduler.start(task) for task in tasks]
    reported: set[int] = set()

    def advance(task: _Task) -> None:
        scheduler.step(task)
        if task.done and on_done is not None:
            index = tasks.index(task)
            if index not in reported:
                reported.add(index)
                on_done(index, task.error if task.error is not None else task.result)

    try:
        for task in tasks:
            advance(task)
        while True:
            waiting = [task for task in tasks if not task.done]
            if not waiting:
                break
            _serve(waiting)
            for task in waiting:
                advance(task)
    finally:
        for task, thread in zip(tasks, threads, strict=True):
            if not task.done:
                task.cancelled = True
                task.turn.set()
                thread.join()
    return [task.error if task.error is not None else task.result for task in tasks]


def _serve(tasks: list[_Task]) -> None:
    """Answer every task's parked request, one backend call per provider and input size."""
    groups: dict[tuple[int, tuple[int, ...]], list[_Task]] = {}
    for task in tasks:
        assert task.request is not None
        groups.setdefault((id(task.request.provider), task.request.spatial), []).append(task)
    for group in groups.values():
        for chunk in _chunks(group):
            _serve_together(chunk)
    for task in tasks:
        task.request = None


def _chunks(group: list[_Task]) -> list[list[_Task]]:
    chunks: list[list[_Task]] = [[]]
    elements = 0
    for task in group:
        assert task.request is not None
        size = len(task.request.units) * math.prod(task.request.spatial)
        if chunks[-1] and elements + size > _MAX_ELEMENTS:
            chunks.append([])
            elements = 0
        chunks[-1].append(task)
        elements += size
    return chunks


def _serve_together(chunk: list[_Task]) -> None:
    requests = [task.request for task in chunk]
    assert all(r is not None for r in requests)
    first = requests[0]
    assert first is not None
    try:
        maps = first.provider.gradient_maps_many(
            first.spatial,
            [(r.output_name, r.units) for r in requests if r is not None],
        )
    except Exception:
        # One output's failure must not become the others': each is asked on its own.
        for task in chunk:
            assert task.request is not None
            try:
                task.answer = _serve_alone(task.request)
            except Exception as exc:
                task.answer = exc
        return
    for task, answer in zip(chunk, maps, strict=True):
        task.answer = answer


def _serve_alone(request: _Request) -> np.ndarray:
    return np.asarray(
        request.provider.gradient_maps(request.spatial, request.output_name, request.units)
    )
