"""The Ray Data engine: the operator list as one streaming ``map_batches`` chain.

Shape: ``from_items(files)`` -> one ``map_batches`` per operator, each a callable class
(:class:`OperatorActor`) that builds the operator and calls ``setup()`` once per actor,
so the detector and the classifier load once per actor, never per batch or on the
driver -> the warehouse writer on the driver, over the streamed results. Memory stays
bounded by Ray Data's streaming backpressure. ``run_scan`` calls ``run`` twice: the
hasher alone (all of it on actors), then the remaining operators.

Design choices, and why:

- **Records travel as Python objects** in one column, ``record``, of numpy object
  arrays (``batch_format="numpy"``); Ray stores them with its pickled Python-object
  Arrow type. Each value is an :class:`Envelope` (record + stage timings) rather than a
  bare record, so the column never holds something Arrow could infer a native type for:
  a list of timings would become ``list<struct>`` in one block and ``list<null>`` in
  another. Pickled bytes were not needed: frozen dataclasses round-trip unchanged,
  and the object fallback is switched on explicitly, which also silences Ray's
  "failed to convert column" warning.
- **One record per block** (``target_max_block_size=1`` on this dataset): a record is a
  video, seconds of work, and Ray hands an actor whole blocks, so with 16 hashed videos
  in one block a single decode actor would get all 16. Batches still gather blocks up to
  each operator's batch size, so face shards group the same videos as locally.
- **Aggregation needs no group-by.** A video's faces travel together in one record from
  decode+detect on (``VideoFaces``), so ``VideoAggregator`` is a plain per-record map.
- **The warehouse is written on the driver.** A DuckDB file takes one writing process,
  which the writer declares as ``concurrency=1``; the driver is the one process that is
  unique for the whole run (a restarted actor could overlap its dying predecessor), so
  a last operator with ``concurrency=1`` runs there (:func:`driver_tail`). The rows come
  to the driver anyway, because ``run`` yields every ``VideoScan`` to ``run_scan``, so
  writing there moves no extra data. A warehouse that takes many writers (PostgreSQL)
  declares no limit and is written from actors.
- **Stage timings ride on the records.** Each actor times ``process_batch`` and appends
  ``(stage, seconds)`` to the envelope of the first record it emits (or to a record-less
  carrier envelope if it emits none); the driver calls ``metrics.observe_stage`` for
  every timing it receives, so ``dfscan_stage_seconds`` counts one observation per
  batch, as on the local runner, with no actor or side channel.
- **Resources come from the operators' declarations** (:func:`ray_options`): batch
  size, fractional CPUs scaled so that one actor of every operator fits in half the
  cluster (on 2 cores the pools cannot take every token and starve each other or the
  tasks that feed them), an elastic pool from 1 actor, GPUs only where the operator
  asks for one and the cluster has one, and bounded restarts and retries. The cluster
  is measured once at start (``ray.cluster_resources()``): on an autoscaling cluster
  whose GPU group is at zero the scorer is planned for CPU.
- **Failures**: a bad video is an error row made inside the operator. An exception that
  escapes an operator is a bug and fails the job (Ray Data retries no application
  errors by default); ``max_errored_blocks=0`` so a failed block is never dropped
  silently; a crashed actor (segfault, OOM kill) is restarted once and its task retried
  once, instead of Ray Data's default of forever for a poison video.

Output order is the order in which videos finish, not the listing order.
"""

from __future__ import annotations

import math
import os
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from operators.base import Operator
from operators.metrics import ScanMetrics
from pipelines.config import EngineConfig

if TYPE_CHECKING:
    from types import ModuleType

RECORD = "record"  # the one column every stage reads and writes

# A crashed actor (segfault in a decoder, OOM kill) is restarted once and its batch
# retried once: one transient failure is absorbed, a poison video fails the job in
# bounded time instead of being retried forever (Ray Data's default is -1, unbounded).
MAX_RESTARTS = 1
MAX_TASK_RETRIES = 1
# Share of the cluster's CPU tokens that one actor of every operator may take; the rest
# is headroom for the elastic pools to grow into and for Ray Data's own tasks.
MIN_PIPELINE_CPU_SHARE = 0.5


@dataclass(frozen=True)
class Envelope:
    """A record in flight, with the stage timings observed on its way.

    ``record`` is None for a carrier that only brings timings back (a batch whose
    operator emitted nothing).
    """

    record: Any
    timings: tuple[tuple[str, float], ...] = ()


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array; ``np.array(values)`` would unpack tuples into a 2-d array."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _seal(records: list[Any], timings: tuple[tuple[str, float], ...]) -> list[Envelope]:
    """Envelopes for a batch's output; the batch's timings ride on the first one."""
    if not records:
        return [Envelope(None, timings)] if timings else []
    return [Envelope(records[0], timings)] + [Envelope(r) for r in records[1:]]


def _open(envelopes: Iterable[Envelope]) -> tuple[list[Any], tuple[tuple[str, float], ...]]:
    """The records of a batch and every timing the envelopes carried."""
    envelopes = list(envelopes)
    records = [e.record for e in envelopes if e.record is not None]
    timings = tuple(t for e in envelopes for t in e.timings)
    return records, timings


class OperatorActor:
    """One operator as a Ray Data callable class: set up once per actor, then batches.

    The operator arrives pickled with its small settings only (rule 1); ``setup()``
    loads its models here, on the worker.
    """

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.op.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records, timings = _open(batch[RECORD])
        out: list[Any] = []
        if records:
            t0 = time.perf_counter()
            out = self.op.process_batch(records)
            timings += ((self.op.name, time.perf_counter() - t0),)
        return {RECORD: _objects(_seal(out, timings))}

    def __del__(self) -> None:
        # Ray Data drops the UDF on graceful actor shutdown; a killed actor just exits.
        op = getattr(self, "op", None)
        if op is not None:
            op.teardown()


def actor_class(op: Operator) -> type[OperatorActor]:
    """A subclass named for the stage, so Ray's logs, stats and dashboard say
    ``MapBatches(decode_detect)`` rather than five ``MapBatches(OperatorActor)``.
    Defined at run time, so Ray pickles it by value (it holds no state of its own)."""
    return type(op.name, (OperatorActor,), {"__module__": __name__})


def cpu_scale(operators: Sequence[Operator], cluster_cpus: float) -> float:
    """Factor for every declared CPU count: one actor of each operator must fit in
    ``MIN_PIPELINE_CPU_SHARE`` of the cluster.

    Actor pools hold their CPU tokens while idle; if the minimum pipeline took every
    token, an upstream stage could not get an actor and the job would hang (the 2-core
    case). On a cluster that is large against the declarations the factor is 1 and
    the declared numbers are used as they are.
    """
    declared = sum(op.resources.cpus for op in operators)
    if declared <= 0 or cluster_cpus <= 0:
        return 1.0
    return min(1.0, MIN_PIPELINE_CPU_SHARE * cluster_cpus / declared)


def max_actors(op: Operator, cluster_cpus: float) -> int:
    """Upper bound of an operator's elastic pool: its declared concurrency, else one
    actor per core the operator's declaration could use (at least one whole core each:
    a fractional declaration means "shares a core", not "runs faster in more copies")."""
    declared = op.resources.concurrency
    if declared is not None:
        return max(1, declared)
    return max(1, math.floor(cluster_cpus / max(op.resources.cpus, 1.0)))


def ray_options(
    op: Operator,
    cluster_has_gpu: bool,
    scale: float = 1.0,
    cluster_cpus: float | None = None,
) -> dict[str, Any]:
    """``map_batches`` arguments translated from the operator's declared resources.

    Pure (no running Ray needed) so the translation is tested directly.
    """
    import ray.data

    r = op.resources
    cores = cluster_cpus if cluster_cpus is not None else float(_machine_cpus())
    opts: dict[str, Any] = {
        "batch_size": max(1, r.batch_size),
        "batch_format": "numpy",
        "num_cpus": _cpu_tokens(r.cpus * scale),
        "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors(op, cores)),
        "max_restarts": MAX_RESTARTS,
        "max_task_retries": MAX_TASK_RETRIES,
    }
    if cluster_has_gpu and r.gpus > 0:
        opts["num_gpus"] = r.gpus  # a GPU actor: Ray sets CUDA_VISIBLE_DEVICES for it
    if r.memory_mb is not None:
        opts["memory"] = r.memory_mb * 1024**2  # Ray takes bytes
    return opts


def _cpu_tokens(cpus: float) -> float:
    """Round down to 1/100 CPU (at least that much).

    Ray Data rounds its budgets to 5 decimals: an actor of 0.384615 CPU would never fit
    a budget of 0.38461 and its pool could not grow. Hundredths stay exact under that.
    """
    return max(0.01, math.floor(cpus * 100 + 1e-9) / 100)


def _machine_cpus() -> int:
    """Cores this process may run on (a cgroup/cpuset can grant fewer than the host has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _import_ray() -> ModuleType:
    """Import Ray with usage stats off: the variable is read at import time."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    return ray


def _project_modules() -> list[ModuleType]:
    """The packages a Ray Client cluster's workers need, shipped as ``py_modules``."""
    import operators
    import pipelines
    import schemas

    return [operators, pipelines, schemas]


def connect(ray: ModuleType, address: str | None) -> bool:
    """Start or join Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # In-process cluster on this machine: no dashboard (it would fetch nothing, but
        # it starts extra processes), worker logs stay in /tmp/ray, not on our stdout.
        ray.init(num_cpus=_machine_cpus(), include_dashboard=False, log_to_driver=False)
    elif address is not None and address.startswith("ray://"):
        # Ray Client: the driver runs here, workers elsewhere need the project's code.
        ray.init(address=address, runtime_env={"py_modules": _project_modules()})
    else:
        # "auto", host:port, or RAY_ADDRESS (a RayJob's driver): the job's own
        # runtime_env already ships the code, and passing one here would replace it.
        ray.init(address=address, log_to_driver=False)
    return True


def build_dataset(
    ray: ModuleType,
    files: Sequence[Any],
    operators: Sequence[Operator],
    cluster_has_gpu: bool,
    cluster_cpus: float,
) -> Any:
    """The lazy Dataset: files -> one ``map_batches`` per operator."""
    driver_ctx = ray.data.DataContext.get_current()
    if driver_ctx.enable_fallback_to_arrow_object_ext_type is None:
        # Unset already means "fall back to pickled objects", with a warning that our
        # records are not Arrow-native; saying so explicitly keeps the driver quiet.
        driver_ctx.enable_fallback_to_arrow_object_ext_type = True
    ds = ray.data.from_items([{RECORD: Envelope(f)} for f in files])
    ctx = ds.context  # this dataset's own copy; the process-wide context is untouched
    ctx.max_errored_blocks = 0  # a failed block fails the job, it is never dropped
    # An operator's own error (the warehouse lost mid-run) reaches the driver as itself,
    # inside Ray's RayTaskError, not as a bare UserCodeException: ``run`` unwraps it so
    # the CLI gives its one-line message as on the other runners.
    ctx.raise_original_map_exception = True
    ctx.enable_fallback_to_arrow_object_ext_type = True  # records are Python objects
    ctx.enable_progress_bars = False  # the CLI draws its own progress from the rows
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    # One record per block: a record is one video, seconds of work, and Ray hands a
    # task whole blocks; with many videos per block one decode actor would get them
    # all while the others idle. Batches still gather up to the operator's batch size.
    ctx.target_max_block_size = 1
    scale = cpu_scale(operators, cluster_cpus)
    for op in operators:
        with warnings.catch_warnings():
            # Ray 2.60 deprecates extra remote kwargs but has no named parameter for
            # max_restarts/max_task_retries yet; they are how retries get bounded.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                actor_class(op),
                fn_constructor_args=(op,),
                **ray_options(op, cluster_has_gpu, scale, cluster_cpus),
            )
    return ds


def driver_tail(operators: Sequence[Operator]) -> tuple[list[Operator], Operator | None]:
    """Split off the last operator when it declares ``concurrency == 1``: it runs on the
    driver. A pool of one actor is not one instance (a restarted actor can overlap its
    dying predecessor, and DuckDB would refuse the second writer); the driver is."""
    if operators and operators[-1].resources.concurrency == 1:
        return list(operators[:-1]), operators[-1]
    return list(operators), None


def _unwrapped(ray: ModuleType, batches: Iterator[Any]) -> Iterator[Any]:
    """``batches``, with an operator's exception raised as itself instead of inside
    Ray's RayTaskError (whose text is a remote traceback)."""
    try:
        yield from batches
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


class RayRunner:
    """Runs the operators on Ray Data; a single-writer last operator (the DuckDB
    warehouse writer) runs on the driver over the streamed results.

    ``run_scan`` calls ``run`` twice (hashing, then the rest), so Ray stays up between
    calls; if this runner started it, it shuts down when the runner is closed or
    dropped (``weakref.finalize``, which also runs at interpreter exit).
    """

    name = "ray"

    def __init__(self, engine: EngineConfig) -> None:
        self.address = engine.ray_address
        self._shutdown: weakref.finalize | None = None

    def _ray(self) -> ModuleType:
        ray = _import_ray()
        if connect(ray, self.address):
            self._shutdown = weakref.finalize(self, ray.shutdown)
        return ray

    def close(self) -> None:
        """Shut Ray down now if this runner started it; otherwise leave it running."""
        if self._shutdown is not None:
            self._shutdown()
            self._shutdown = None

    def run(
        self, files: Sequence[Any], operators: list[Operator], metrics: ScanMetrics
    ) -> Iterator[Any]:
        """Stream ``files`` (VideoFiles, or VideoRefs after hashing) through the
        operators; yields the last operator's records as they finish."""
        if not operators:
            raise ValueError("RayRunner needs at least one operator")
        if not files:
            return
        ray = self._ray()
        remote, sink = driver_tail(operators)
        res = ray.cluster_resources()
        has_gpu = res.get("GPU", 0.0) > 0
        cpus = float(res.get("CPU", _machine_cpus()))
        ds = build_dataset(ray, files, remote, has_gpu, cpus)
        # Driver batches as the sink declares (rows per transaction); None: per block.
        size = max(1, sink.resources.batch_size) if sink is not None else None
        if sink is not None:
            sink.setup()
        try:
            for batch in _unwrapped(ray, ds.iter_batches(batch_size=size, batch_format="numpy")):
                records, timings = _open(batch[RECORD])
                for stage, seconds in timings:
                    metrics.observe_stage(stage, seconds)
                if not records:
                    continue
                if sink is None:
                    yield from records
                    continue
                t0 = time.perf_counter()
                out = sink.process_batch(records)
                metrics.observe_stage(sink.name, time.perf_counter() - t0)
                yield from out
        finally:
            if sink is not None:
                sink.teardown()
