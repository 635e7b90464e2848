"""The operator lifecycle every engine drives: construct, setup, process_batch, teardown.

The constructor keeps only small picklable settings (configs), so an engine can ship
the operator to a worker; ``setup()`` runs on the worker and loads models or opens
clients once; ``process_batch`` maps a list of records to a list of records;
``teardown()`` lets go. Operators never import an engine: adapters in ``pipelines/``
turn them into Ray callable classes or Beam DoFns and own timing and metrics.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Resources:
    """What one instance of an operator needs; each adapter translates it.

    ``cpus`` may be fractional so that on a small machine an actor pool cannot take
    every core and starve the tasks that feed it. ``threads`` is how many calls of
    ``process_batch`` one set-up instance serves at once (its own pool of worker
    processes): the local runner drives it from that many threads; engines that make
    their own instances (Ray actors, Beam DoFns) ask for 1.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    batch_size: int = 1  # records per process_batch call
    concurrency: int | None = None  # instances; None lets the engine decide
    memory_mb: int | None = None
    threads: int = 1  # concurrent process_batch calls one instance serves


class Operator(abc.ABC, Generic[In, Out]):
    """One stage of the scan. Subclasses set ``name`` and declare ``resources``."""

    name: str = "operator"

    @property
    def resources(self) -> Resources:
        return Resources()

    def setup(self) -> None:
        """Load models and open clients; called once per worker before any batch."""

    @abc.abstractmethod
    def process_batch(self, items: list[In]) -> list[Out]:
        """Map a batch of records to records. Per-record failures become error records."""

    def teardown(self) -> None:
        """Release what ``setup`` acquired."""

    def __enter__(self) -> Operator[In, Out]:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()
