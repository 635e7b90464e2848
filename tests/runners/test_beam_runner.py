"""The Beam runner: the local runner's rows from the same input, and a graph Dataflow can run.

The parity scan runs on the in-process FnApiRunner; the Dataflow and BigQuery tests only
build the pipeline graph (offline: nothing is submitted, nothing downloaded).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import apache_beam as beam
import duckdb
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

from operators.list_videos import VideoHasher
from operators.metrics import ScanMetrics
from pipelines.beam_runner import (
    DEAD_LETTER,
    RESULT_CODECS,
    BeamRunner,
    ScorerModelHandler,
    build_pipeline,
    make_pipeline,
)
from pipelines.config import (
    EngineConfig,
    ScanConfig,
    ScorerConfig,
)
from pipelines.graph import ModelInfo, build_operators
from pipelines.scan import RUNNERS
from schemas.records import VideoFile, VideoRef, VideoScan, VideoStatus
from tests.runners.parity import PARITY_VIDEOS, scan

STAGES = {"hash", "decode_detect", "write_shards", "score_faces", "aggregate", "write_warehouse"}
DATAFLOW_ARGS = (
    "--runner=DataflowRunner",
    "--project=dfscan-test",
    "--region=europe-west1",
    "--temp_location=gs://dfscan-test-bucket/tmp",
    "--setup_file=./setup.py",
    # Beam's own switch for offline validation: without it, constructing a Dataflow
    # pipeline asks GCS about the temp bucket (and waits out the retries offline).
    "--dry_run=True",
)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity(
    parity_inputs: Path, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> dict[str, Any]:
    local_out = tmp_path_factory.mktemp("local_out")
    beam_out = tmp_path_factory.mktemp("beam_out")
    return {
        "local": scan(parity_inputs, local_out, tiny_checkpoint, "local"),
        "beam": scan(parity_inputs, beam_out, tiny_checkpoint, "beam"),
        "beam_out": beam_out,
    }


def face_scores(row: VideoScan) -> list[tuple[int, int, float]]:
    """(track, frame, score) of every face, from the row's track_scores JSON."""
    return [
        (t["track_id"], frame, score)
        for t in json.loads(row.track_scores)
        for frame, _pts, score in t["frames"]
    ]


def warehouse_rows(out: Path) -> dict[str, dict[str, Any]]:
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        cur = con.execute("SELECT * FROM video_scans")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    return {Path(r["uri"]).name: r for r in rows}


def offline_operators(tmp_path: Path, warehouse_url: str | None = None) -> list:
    """The scan's operators as Dataflow would get them (nothing is loaded or opened)."""
    cfg = ScanConfig(
        input_uri="gs://dfscan-test-bucket/videos",
        out_uri="gs://dfscan-test-bucket/out",
        warehouse_url=warehouse_url or f"duckdb://{tmp_path}/scans.duckdb",
        run_id="graph",
        scorer=ScorerConfig(checkpoint="gs://dfscan-test-bucket/model.pt", batch_size=32),
    )
    return build_operators(cfg, ModelInfo("mobilenet_v2-test", "mobilenet_v2", 224, 1.3))


FILES = [VideoFile("gs://dfscan-test-bucket/videos/a.mp4", 1000)]


def transforms(pipeline: beam.Pipeline) -> dict[str, beam.PTransform]:
    """Every transform of the graph, composite or leaf, by full label."""
    found: dict[str, beam.PTransform] = {}

    class Collect(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node: Any) -> None:
            found[node.full_label] = node.transform

        def visit_transform(self, node: Any) -> None:
            found[node.full_label] = node.transform

    pipeline.visit(Collect())
    return found


# --- same rows as the local runner ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_beam_rows_equal_local_rows(parity: dict[str, Any]) -> None:
    local, beam_rows = parity["local"], parity["beam"]
    assert sorted(beam_rows) == sorted(local) == sorted([*PARITY_VIDEOS, "bad.mp4"])
    for name, want in local.items():
        got = beam_rows[name]
        assert got.video_id == want.video_id
        assert got.status == want.status
        assert (got.faces, got.tracks) == (want.faces, want.tracks)
        assert (got.frames_sampled, got.frames_with_face) == (
            want.frames_sampled,
            want.frames_with_face,
        )
        for col in ("fake_probability", "score_mean", "score_max", "score_confident"):
            if getattr(want, col) is None:
                assert getattr(got, col) is None, col
            else:
                assert getattr(got, col) == pytest.approx(getattr(want, col), abs=1e-5), col
        # Every face's score, in every track: the same faces reached the same model.
        got_faces, want_faces = face_scores(got), face_scores(want)
        assert [f[:2] for f in got_faces] == [f[:2] for f in want_faces]
        assert [f[2] for f in got_faces] == pytest.approx([f[2] for f in want_faces], abs=1e-5)
        assert got.label == want.label
        # Shards are grouped as the local runner batches them: same names on both engines.
        assert (got.shard_uri is None) == (want.shard_uri is None)
        if want.shard_uri:
            assert Path(got.shard_uri).name == Path(want.shard_uri).name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_beam_scores_both_real_videos_and_keeps_the_bad_file_as_unsupported(
    parity: dict[str, Any],
) -> None:
    rows = parity["beam"]
    assert rows["bad.mp4"].status == VideoStatus.UNSUPPORTED
    assert rows["bad.mp4"].fake_probability is None and rows["bad.mp4"].error
    for name in PARITY_VIDEOS:
        assert rows[name].status == VideoStatus.SCORED
        assert rows[name].frames_sampled == 8
        assert rows[name].faces >= rows[name].frames_with_face > 0
        assert rows[name].score_s > 0
    # Two people on stage: more faces than frames with a face.
    assert rows["hamilton_clip.mp4"].faces > rows["hamilton_clip.mp4"].frames_with_face


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dead_letter_lands_in_the_warehouse_with_its_status(parity: dict[str, Any]) -> None:
    stored = warehouse_rows(parity["beam_out"])
    assert {n: r["status"] for n, r in stored.items()} == {
        "bad.mp4": "unsupported",
        "talking_head_d0.mp4": "scored",
        "hamilton_clip.mp4": "scored",
    }
    for name, row in parity["beam"].items():
        assert stored[name]["run_id"] == "parity-beam"
        assert stored[name]["faces"] == row.faces


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_beam_run_records_counts_and_every_stage_timing(parity: dict[str, Any]) -> None:
    out: Path = parity["beam_out"]
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    status, counts = con.execute(
        "SELECT status, counts_by_status FROM scan_runs WHERE run_id = 'parity-beam'"
    ).fetchone()
    con.close()
    assert status == "succeeded"
    assert json.loads(counts) == {"scored": 2, "unsupported": 1}
    text = (out / "metrics.prom").read_text()
    assert 'dfscan_videos_total{status="unsupported"} 1.0' in text
    assert "dfscan_build_info{" in text and 'runner="beam"' in text
    for stage in STAGES:
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith(f'dfscan_stage_seconds_count{{stage="{stage}"}}')
        )
        assert float(line.split()[-1]) >= 1, line


# --- the graph Dataflow would run (built, never run) ----------------------------------


def test_dataflow_graph_scores_with_run_inference_and_tags_dead_letters(tmp_path: Path) -> None:
    pipeline = make_pipeline(PipelineOptions(list(DATAFLOW_ARGS)))
    assert type(pipeline.runner).__name__ == "DataflowRunner"
    build_pipeline(
        pipeline,
        FILES,
        offline_operators(tmp_path),
        results_uri="gs://dfscan-test-bucket/tmp/results",
    )
    found = transforms(pipeline)
    kinds = {type(t).__name__ for t in found.values()}
    assert {"RunInference", "CombinePerKey", "CoGroupByKey", "WriteToParquet"} <= kinds
    assert "WriteToBigQuery" not in kinds  # a DuckDB URL keeps the WarehouseWriter
    assert "write_warehouse" in found and "decode_detect" in found

    proto = pipeline.to_runner_api()
    leaves = [t for t in proto.components.transforms.values() if not t.subtransforms]
    tagged = [t for t in leaves if DEAD_LETTER in t.outputs]
    assert [t.unique_name for t in tagged] == ["Route/ParDo(_RouteByStatus)"]
    # Follow the dead letters downstream: they are aggregated and reach the warehouse.
    reached: set[str] = set()
    frontier = {tagged[0].outputs[DEAD_LETTER]}
    while frontier:
        step = [t for t in leaves if frontier & set(t.inputs.values())]
        reached |= {t.unique_name for t in step}
        frontier = {pc for t in step for pc in t.outputs.values()}
    assert {"aggregate", "write_warehouse", "WriteResults"} <= {n.split("/")[0] for n in reached}


def test_scorer_handler_loads_the_configured_scoring_backend(tiny_checkpoint: Path) -> None:
    cfg = ScorerConfig(checkpoint=str(tiny_checkpoint), device="cpu", backend="torch-cl")
    scorer = ScorerModelHandler(cfg).load_model()
    assert scorer.runtime.name == "torch-cl"


def test_scorer_handler_batches_as_the_operator_declares() -> None:
    handler = ScorerModelHandler(ScorerConfig(checkpoint="m.pt", batch_size=32, device="cpu"))
    assert handler.batch_elements_kwargs() == {"min_batch_size": 32, "max_batch_size": 32}
    assert handler.share_model_across_processes() is False  # CPU: one model per process


def test_bigquery_url_writes_through_the_idempotent_warehouse_writer(tmp_path: Path) -> None:
    # WriteToBigQuery appends: a retried bundle would add rows. The graph keeps the
    # WarehouseWriter, whose BigQuery backend MERGEs each batch on the row key.
    from operators.warehouse_bigquery import BigQueryWarehouse
    from operators.write_warehouse import WarehouseWriter, warehouse_class

    pipeline = make_pipeline(PipelineOptions(list(DATAFLOW_ARGS)))
    build_pipeline(
        pipeline,
        FILES,
        offline_operators(tmp_path),
        results_uri="gs://dfscan-test-bucket/tmp/results",
        warehouse_url="bigquery://dfscan-test/scans.video_scans",
    )
    found = transforms(pipeline)
    assert "WriteToBigQuery" not in {type(t).__name__ for t in found.values()}
    writers = [
        fn.op
        for t in found.values()
        for fn in [getattr(t, "fn", None)]
        if isinstance(getattr(fn, "op", None), WarehouseWriter)
    ]
    assert [w.url for w in writers] == ["bigquery://dfscan-test/scans.video_scans"]
    assert warehouse_class(writers[0].url) is BigQueryWarehouse


# --- options ----------------------------------------------------------------------------


def test_beam_args_after_double_dash_reach_pipeline_options_untouched() -> None:
    runner = RUNNERS["beam"](EngineConfig("beam", beam_args=DATAFLOW_ARGS))
    assert runner.name == "beam"
    opts = runner.options
    assert opts.view_as(GoogleCloudOptions).project == "dfscan-test"
    assert opts.view_as(GoogleCloudOptions).region == "europe-west1"
    assert opts.view_as(GoogleCloudOptions).temp_location == "gs://dfscan-test-bucket/tmp"
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    assert opts.view_as(SetupOptions).setup_file == "./setup.py"
    assert opts.get_all_options(drop_default=True) == PipelineOptions(
        list(DATAFLOW_ARGS)
    ).get_all_options(drop_default=True)


def test_without_runner_option_the_pipeline_runs_in_process() -> None:
    runner = BeamRunner(EngineConfig("beam", beam_args=("--project=p",)))
    pipeline = make_pipeline(runner.options)
    assert type(pipeline.runner).__name__ == "FnApiRunner"  # never Prism (a download)
    assert runner.options.view_as(GoogleCloudOptions).project == "p"


def test_the_hash_hand_off_keeps_every_field_of_a_ref() -> None:
    # Refs cross from the hash phase to the scan as Parquet: a field missing from the
    # schema would come back as its default (an upload time lost, the shard misfiled).
    codec = RESULT_CODECS[VideoHasher]
    assert codec.schema.names == [f.name for f in dataclasses.fields(VideoRef)]
    ref = VideoRef("id", "file:///a.mp4", 10, 1_700_000_000.5, 1_600_000_000.0)
    table = pa.Table.from_pylist([codec.to_record(ref)], schema=codec.schema)
    assert codec.from_record(table.to_pylist()[0]) == ref


def test_ctrl_c_inside_a_bundle_is_an_interrupt_not_a_runtime_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # FnApiRunner re-raises a KeyboardInterrupt caught in a bundle as a RuntimeError;
    # main() must see an interrupt (one line, exit 130), as on the other runners.
    import pipelines.beam_runner as beam_runner

    class Interrupted:
        def run(self) -> None:
            raise RuntimeError("KeyboardInterrupt [while running 'decode_detect']")

    monkeypatch.setattr(beam_runner, "make_pipeline", lambda options: Interrupted())
    monkeypatch.setattr(beam_runner, "build_pipeline", lambda *args, **kwargs: None)
    runner, metrics = BeamRunner(EngineConfig("beam")), ScanMetrics()
    with pytest.raises(KeyboardInterrupt):
        list(runner.run([VideoFile(str(tmp_path / "a.mp4"), 1)], [VideoHasher(1 << 20)], metrics))
