"""The embedded default engine: the operator list in one process.

Each operator runs in its own thread, connected to the next by a bounded queue, so
decode+detect of the next videos overlaps scoring of the previous ones: PyAV, ONNX
Runtime and torch all release the GIL in their native loops. An operator that serves
several calls at once (``resources.threads``: the extractor's pool of decode worker
processes, one per core) gets that many threads on the same queue. Each operator is set
up in its own thread and its stage starts once it is ready, so the decode workers start
decoding while the classifier is still loading. Queues hold at most two batches per
stage, so memory stays bounded however many videos are listed. Order is kept except
across a stage's threads. With ``threaded=False`` the same operators run as a chain of
lazy generators (one stage at a time; the reference behaviour, and easier to profile).

Timing per stage is the adapter's job (operators know nothing of metrics).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from operators.base import Operator
from operators.metrics import ScanMetrics
from schemas.records import VideoFile, VideoScan

_END = object()  # end of a stream between two stage threads


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(items, max(1, size))):
        yield batch


def _run_stage(op: Operator, items: Iterator[Any], metrics: ScanMetrics) -> Iterator[Any]:
    for batch in _batched(items, op.resources.batch_size):
        t0 = time.perf_counter()
        out = op.process_batch(batch)
        metrics.observe_stage(op.name, time.perf_counter() - t0)
        yield from out


class _InFlight:
    """Videos the first stage has taken and the last has not yet given out: the
    ``dfscan_videos_in_flight`` gauge (every stage yields one item per video)."""

    def __init__(self, metrics: ScanMetrics) -> None:
        self.metrics = metrics
        self.n = 0
        self.lock = threading.Lock()

    def _add(self, k: int) -> None:
        with self.lock:
            self.n += k
            self.metrics.set_in_flight(self.n)

    def taken(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            self._add(1)
            yield item

    def given(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            self._add(-1)
            yield item


class _Stop(Exception):
    """Raised inside a stage thread when another stage failed: unwind quietly."""


class _Pipe:
    """Bounded queue between two stage threads that gives up when the run is aborted."""

    def __init__(self, maxsize: int, abort: threading.Event) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.abort = abort

    def put(self, item: Any) -> None:
        while True:
            if self.abort.is_set():
                raise _Stop
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                item = self.q.get(timeout=0.1)
            except queue.Empty:
                if self.abort.is_set():
                    raise _Stop from None
                continue
            if item is _END:
                self.q.put_nowait(_END)  # for the stage's other threads: they end too
                return
            yield item


class LocalRunner:
    """Runs every operator in this process, in order; stages overlap in threads."""

    name = "local"

    def __init__(self, threaded: bool = True) -> None:
        self.threaded = threaded

    def run(
        self, files: Iterable[VideoFile], operators: list[Operator], metrics: ScanMetrics
    ) -> Iterator[VideoScan]:
        in_flight = _InFlight(metrics)
        if self.threaded and len(operators) > 1:
            yield from in_flight.given(
                self._run_threaded(iter(files), operators, metrics, in_flight)
            )
            return
        ready: list[Operator] = []
        try:
            for op in operators:
                op.setup()  # a failing setup still tears down those set up before it
                ready.append(op)
            stream: Iterator[Any] = in_flight.taken(iter(files))
            for op in operators:
                stream = _run_stage(op, stream, metrics)
            yield from in_flight.given(stream)
        finally:
            for op in reversed(ready):
                op.teardown()

    def _run_threaded(
        self,
        files: Iterator[Any],
        operators: list[Operator],
        metrics: ScanMetrics,
        in_flight: _InFlight,
    ) -> Iterator[Any]:
        abort = threading.Event()
        errors: list[BaseException] = []
        setup_errors: dict[int, BaseException] = {}
        # Each operator is set up in its own thread and its stage starts when it is ready:
        # the decode workers start decoding while the classifier is still loading.
        settled = [threading.Event() for _ in operators]
        is_set_up = [False] * len(operators)
        pipes = [_Pipe(2 * max(1, op.resources.batch_size), abort) for op in operators]

        def setup(i: int, op: Operator) -> None:
            try:
                op.setup()
                is_set_up[i] = True
            except BaseException as exc:  # raised in the caller, first in operator order
                setup_errors[i] = exc
                abort.set()
            finally:
                settled[i].set()

        def feed() -> None:
            try:
                for item in files:
                    pipes[0].put(item)
                pipes[0].put(_END)
            except _Stop:
                pass

        running = [max(1, op.resources.threads) for op in operators]
        lock = threading.Lock()
        torn_down = [False] * len(operators)

        def teardown(i: int) -> None:
            with lock:
                if torn_down[i] or not is_set_up[i]:
                    return
                torn_down[i] = True
            operators[i].teardown()

        def stage(i: int, op: Operator) -> None:
            out = pipes[i + 1] if i + 1 < len(operators) else final
            while not settled[i].wait(0.1):
                if abort.is_set():
                    return
            if not is_set_up[i]:
                return
            try:
                source = iter(pipes[i])
                if i == 0:  # a video is in flight once the first stage takes it
                    source = in_flight.taken(source)
                for item in _run_stage(op, source, metrics):
                    out.put(item)
                with lock:
                    running[i] -= 1
                    last = running[i] == 0
                if last:  # the stage's last thread to finish ends the next stage's input
                    out.put(_END)
                    if i + 1 < len(operators):
                        # Its input is spent: release what it holds (decode workers take
                        # ~0.2 s to exit) while the stages after it finish.
                        teardown(i)
            except _Stop:
                pass
            except BaseException as exc:  # a bug in an operator: re-raised in the caller
                errors.append(exc)
                abort.set()

        final = _Pipe(2 * max(1, operators[-1].resources.batch_size), abort)
        setups = [
            threading.Thread(target=setup, args=(i, op), name=f"dfscan-setup-{op.name}")
            for i, op in enumerate(operators)
        ]
        threads = [threading.Thread(target=feed, name="dfscan-feed", daemon=True)]
        threads += [
            threading.Thread(target=stage, args=(i, op), name=f"dfscan-{op.name}-{k}", daemon=True)
            for i, op in enumerate(operators)
            for k in range(running[i])
        ]
        for t in [*setups, *threads]:
            t.start()
        completed = False
        try:
            yield from final
            completed = True
        except _Stop:
            pass  # a stage failed: its exception is re-raised below
        finally:
            if not completed:
                abort.set()  # failure, or the consumer stopped early: unblock every stage
            for t in setups:
                t.join()  # a setup cannot be interrupted; what it set up is torn down below
            for t in threads:
                t.join(timeout=None if completed else 5)
            for i in reversed(range(len(operators))):
                teardown(i)
        if setup_errors:
            raise setup_errors[min(setup_errors)]
        if errors:
            raise errors[0]
