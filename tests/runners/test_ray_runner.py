"""The Ray runner: the local runner's rows from the same input, and resources and failure
settings translated from the operators' declarations.

Ray is started once for the module (2 CPUs, no dashboard, usage stats off) and shut
down after; the runner sees it running and leaves it alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators.base import Operator, Resources
from operators.metrics import ScanMetrics
from pipelines.config import (
    EngineConfig,
    ScanConfig,
    ScorerConfig,
)
from pipelines.graph import ModelInfo, build_operators
from pipelines.ray_runner import (
    MAX_RESTARTS,
    MAX_TASK_RETRIES,
    Envelope,
    OperatorActor,
    RayRunner,
    build_dataset,
    connect,
    cpu_scale,
    driver_tail,
    ray_options,
)
from pipelines.scan import RUNNERS
from schemas.records import VideoFile, VideoStatus
from tests.runners.parity import PARITY_VIDEOS, scan

STAGES = {"hash", "decode_detect", "write_shards", "score_faces", "aggregate", "write_warehouse"}
SMALL_CLUSTER_CPUS = 2.0  # this machine, and the case where whole-CPU actors hang


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """One in-process Ray for the module, started the way the runner starts it."""
    from pipelines.ray_runner import _import_ray

    ray = _import_ray()
    started = connect(ray, None)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def parity(
    ray_cluster: Any,
    parity_inputs: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_checkpoint: Path,
) -> dict[str, Any]:
    local_out = tmp_path_factory.mktemp("local_out")
    ray_out = tmp_path_factory.mktemp("ray_out")
    return {
        "local": scan(parity_inputs, local_out, tiny_checkpoint, "local"),
        "ray": scan(parity_inputs, ray_out, tiny_checkpoint, "ray"),
        "ray_out": ray_out,
    }


def warehouse_rows(out: Path) -> dict[str, dict[str, Any]]:
    import duckdb

    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        cur = con.execute("SELECT * FROM video_scans")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    return {Path(r["uri"]).name: r for r in rows}


def stage_counts(prom_text: str) -> dict[str, float]:
    """``dfscan_stage_seconds_count`` per stage from a Prometheus exposition."""
    pattern = r'^dfscan_stage_seconds_count\{stage="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, prom_text, re.MULTILINE)}


def scan_operators(tmp_path: Path) -> list[Operator]:
    """The scan's operators as built for a cluster (nothing is loaded or opened)."""
    cfg = ScanConfig(
        input_uri="s3://videos/in",
        out_uri="s3://videos/out",
        warehouse_url=f"duckdb://{tmp_path}/scans.duckdb",
        run_id="opts",
        scorer=ScorerConfig(checkpoint="s3://videos/model.pt"),
    )
    return build_operators(cfg, ModelInfo("mobilenet_v2-test", "mobilenet_v2", 224, 1.3))


class GpuStub(Operator[Any, Any]):
    """An operator that asks for a GPU, as a scorer on a GPU cluster does."""

    name = "gpu_stub"

    @property
    def resources(self) -> Resources:
        return Resources(cpus=1.0, gpus=1.0, batch_size=8)

    def process_batch(self, items: list[Any]) -> list[Any]:
        return items


class Poison(Operator[VideoFile, VideoFile]):
    """An operator with a bug on one file: the exception must fail the job."""

    name = "poison"

    @property
    def resources(self) -> Resources:
        return Resources(cpus=0.5, batch_size=1)

    def process_batch(self, items: list[VideoFile]) -> list[VideoFile]:
        for item in items:
            if item.uri.endswith("poison.mp4"):
                raise RuntimeError(f"bug on {item.uri}")
        return items


class Relay(Operator[Any, Any]):
    """One record per batch: one timing per record, a count the test can predict."""

    name = "relay"

    @property
    def resources(self) -> Resources:
        return Resources(cpus=0.25, batch_size=1)

    def process_batch(self, items: list[Any]) -> list[Any]:
        return items


class PassThrough(Operator[Any, Any]):
    """A single-writer sink, like the warehouse writer."""

    name = "sink"

    @property
    def resources(self) -> Resources:
        return Resources(cpus=0.25, batch_size=256, concurrency=1)

    def process_batch(self, items: list[Any]) -> list[Any]:
        return items


# --- same rows as the local runner ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_rows_equal_local_rows(parity: dict[str, Any]) -> None:
    local, ray_rows = parity["local"], parity["ray"]
    assert sorted(ray_rows) == sorted(local) == sorted([*PARITY_VIDEOS, "bad.mp4"])
    for name, want in local.items():
        got = ray_rows[name]
        assert got.video_id == want.video_id
        assert got.status == want.status
        assert (got.faces, got.tracks) == (want.faces, want.tracks)
        assert (got.frames_sampled, got.frames_with_face) == (
            want.frames_sampled,
            want.frames_with_face,
        )
        if want.fake_probability is None:
            assert got.fake_probability is None
        else:
            assert got.fake_probability == pytest.approx(want.fake_probability, abs=1e-5)
        assert got.label == want.label
        assert (got.shard_uri is None) == (want.shard_uri is None)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_scores_real_videos_and_keeps_the_bad_file_as_unsupported(
    parity: dict[str, Any],
) -> None:
    rows = parity["ray"]
    assert rows["bad.mp4"].status == VideoStatus.UNSUPPORTED
    assert rows["bad.mp4"].fake_probability is None and rows["bad.mp4"].error
    for name in PARITY_VIDEOS:
        assert rows[name].status == VideoStatus.SCORED
        assert rows[name].frames_sampled == 8
        assert rows[name].score_s > 0
        assert rows[name].faces >= rows[name].frames_with_face > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_rows_land_in_the_warehouse_written_by_the_driver(parity: dict[str, Any]) -> None:
    stored = warehouse_rows(parity["ray_out"])
    assert {n: r["status"] for n, r in stored.items()} == {
        "bad.mp4": "unsupported",
        "talking_head_d0.mp4": "scored",
        "hamilton_clip.mp4": "scored",
    }
    for name, row in parity["ray"].items():
        assert stored[name]["run_id"] == "parity-ray"
        assert stored[name]["faces"] == row.faces
        assert stored[name]["video_id"] == row.video_id


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_face_shards_hold_every_detected_face(parity: dict[str, Any]) -> None:
    from operators.write_face_shards import read_face_shards

    table = read_face_shards(str(parity["ray_out"] / "faces"))
    want = {r.video_id: r.faces for r in parity["ray"].values() if r.faces}
    counts: dict[str, int] = {}
    for vid in table.column("video_id").to_pylist():
        counts[vid] = counts.get(vid, 0) + 1
    assert counts == want


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_stage_timings_reach_the_driver_metrics(parity: dict[str, Any]) -> None:
    counts = stage_counts((parity["ray_out"] / "metrics.prom").read_text())
    assert set(counts) == STAGES
    assert counts["decode_detect"] == 3  # batch size 1: one observation per video
    assert all(n >= 1 for n in counts.values())


# --- failures are not dropped ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_exception_in_an_operator_fails_the_job_instead_of_dropping_rows(
    ray_cluster: Any, tmp_path: Path
) -> None:
    files = [VideoFile(f"file://{tmp_path}/{n}.mp4", 10) for n in ("a", "poison", "b")]
    got: list[Any] = []
    # The operator's own exception, unwrapped from Ray's RayTaskError, as on every runner.
    with pytest.raises(RuntimeError, match="bug on") as caught:
        got.extend(
            RayRunner(EngineConfig("ray")).run(files, [Poison(), PassThrough()], ScanMetrics())
        )
    assert type(caught.value) is RuntimeError
    assert got == []  # nothing came out as if the poison row had simply vanished


@pytest.mark.timeout(120)
def test_stage_timings_ride_back_on_the_records(ray_cluster: Any, tmp_path: Path) -> None:
    files = [VideoFile(f"file://{tmp_path}/{i}.mp4", i) for i in range(4)]
    metrics = ScanMetrics()
    out = list(RayRunner(EngineConfig("ray")).run(files, [Relay(), PassThrough()], metrics))
    assert sorted(f.uri for f in out) == sorted(f.uri for f in files)
    counts = stage_counts(metrics.exposition().decode())
    assert counts == {"relay": 4.0, "sink": 1.0}  # 4 remote batches of 1, 1 on the driver
    assert ray_cluster.is_initialized()  # the runner did not start it, so leaves it up


def test_the_dataset_drops_no_errored_block(ray_cluster: Any, tmp_path: Path) -> None:
    ops = scan_operators(tmp_path)[:-1]
    ds = build_dataset(ray_cluster, [VideoFile("s3://videos/a.mp4", 1)], ops, False, 2.0)
    assert ds.context.max_errored_blocks == 0
    assert ds.context.enable_fallback_to_arrow_object_ext_type is True


# --- where each operator runs ---------------------------------------------------------


def test_the_duckdb_writer_runs_on_the_driver(tmp_path: Path) -> None:
    ops = scan_operators(tmp_path)
    remote, sink = driver_tail(ops)
    assert sink is ops[-1] and sink.name == "write_warehouse"
    assert [op.name for op in remote] == [op.name for op in ops[:-1]]


def test_hashing_alone_runs_entirely_on_actors(tmp_path: Path) -> None:
    hasher = scan_operators(tmp_path)[0]
    assert driver_tail([hasher]) == ([hasher], None)


def test_a_warehouse_that_takes_many_writers_is_written_from_actors() -> None:
    from operators.write_warehouse import WarehouseWriter

    writer = WarehouseWriter("postgresql://dfscan@127.0.0.1:5432/dfscan")
    assert driver_tail([writer]) == ([writer], None)


# --- resources from the operators' declarations ---------------------------------------


def test_actor_options_on_two_cpus_are_fractional_and_fit_half_the_machine(
    tmp_path: Path,
) -> None:
    ops = scan_operators(tmp_path)[:-1]  # the warehouse writer runs on the driver
    scale = cpu_scale(ops, SMALL_CLUSTER_CPUS)
    opts = {op.name: ray_options(op, False, scale, SMALL_CLUSTER_CPUS) for op in ops}
    assert sum(o["num_cpus"] for o in opts.values()) <= SMALL_CLUSTER_CPUS / 2
    for op in ops:
        o = opts[op.name]
        assert 0 < o["num_cpus"] < 1
        assert o["batch_size"] == op.resources.batch_size
        assert o["compute"].min_size == 1  # elastic: an idle stage holds one actor
        assert o["batch_format"] == "numpy"
    # Decode+detect may grow to one actor per core.
    assert opts["decode_detect"]["compute"].max_size == 2


def test_large_cluster_uses_the_declared_cpus_as_they_are(tmp_path: Path) -> None:
    ops = scan_operators(tmp_path)[:-1]
    scale = cpu_scale(ops, 64.0)
    assert scale == 1.0
    for op in ops:
        assert ray_options(op, False, scale, 64.0)["num_cpus"] == op.resources.cpus


def test_retries_are_bounded_for_every_actor(tmp_path: Path) -> None:
    for op in scan_operators(tmp_path)[:-1]:
        o = ray_options(op, False, 1.0, SMALL_CLUSTER_CPUS)
        assert o["max_restarts"] == MAX_RESTARTS == 1  # Ray Data's default is -1: forever
        assert o["max_task_retries"] == MAX_TASK_RETRIES == 1


def test_gpus_are_requested_only_on_a_cluster_that_has_them() -> None:
    assert "num_gpus" not in ray_options(GpuStub(), cluster_has_gpu=False)
    assert ray_options(GpuStub(), cluster_has_gpu=True)["num_gpus"] == 1.0
    assert "num_gpus" not in ray_options(PassThrough(), cluster_has_gpu=True)


def test_declared_concurrency_caps_the_pool() -> None:
    assert ray_options(PassThrough(), False, 1.0, 64.0)["compute"].max_size == 1


def test_actor_passes_timings_along_with_its_output() -> None:
    actor = OperatorActor(PassThrough())
    batch = np.empty(2, dtype=object)
    batch[:] = [Envelope("a", (("hash", 0.5),)), Envelope("b", (("hash", 0.25),))]
    out = list(actor({"record": batch})["record"])
    assert [e.record for e in out] == ["a", "b"]
    assert [s for s, _ in out[0].timings] == ["hash", "hash", "sink"]
    assert out[1].timings == ()


def test_ray_is_registered_as_a_runner() -> None:
    runner = RUNNERS["ray"](EngineConfig("ray", ray_address="auto"))
    assert isinstance(runner, RayRunner) and runner.name == "ray"
    assert runner.address == "auto"


def test_a_batch_of_only_timings_passes_them_on_without_calling_the_operator() -> None:
    actor = OperatorActor(Poison())  # would raise on poison.mp4 if it were called
    batch = np.empty(1, dtype=object)
    batch[0] = Envelope(None, (("hash", 0.5),))
    (out,) = actor({"record": batch})["record"]
    assert out == Envelope(None, (("hash", 0.5),))
