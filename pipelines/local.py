"""The embedded default engine: the operator list as a chain of lazy generators.

Each operator pulls just enough records from the one before to fill its batch, so at
most one batch per stage is in memory: streaming with bounded memory and no engine.
Timing per stage is the adapter's job (operators know nothing of metrics).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from typing import Any

from operators.base import Operator
from operators.metrics import ScanMetrics
from schemas.records import VideoFile, VideoScan


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(items, max(1, size))):
        yield batch


def _run_stage(op: Operator, items: Iterator[Any], metrics: ScanMetrics) -> Iterator[Any]:
    for batch in _batched(items, op.resources.batch_size):
        t0 = time.perf_counter()
        out = op.process_batch(batch)
        metrics.observe_stage(op.name, time.perf_counter() - t0)
        yield from out


class LocalRunner:
    """Runs every operator in this process, in order."""

    name = "local"

    def run(
        self, files: Iterable[VideoFile], operators: list[Operator], metrics: ScanMetrics
    ) -> Iterator[VideoScan]:
        for op in operators:
            op.setup()
        try:
            stream: Iterator[Any] = iter(files)
            for op in operators:
                stream = _run_stage(op, stream, metrics)
            yield from stream
        finally:
            for op in reversed(operators):
                op.teardown()
