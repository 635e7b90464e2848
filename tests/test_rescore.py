"""``dfscan rescore``: committed faces scored by a new model, rows added, nothing decoded."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from operators.write_face_shards import FaceShardWriter
from operators.write_warehouse import DuckDBWarehouse
from pipelines.cli import main
from pipelines.config import ConfigError, RescoreConfig, ScorerConfig
from pipelines.rescore import run_rescore
from schemas.records import DetectorInfo, FaceCrop, VideoFaces, VideoRef, VideoStatus
from tests.test_write_face_shards import Killed, crash_before_record
from tests.test_write_warehouse import make_scan

OLD_MODEL = "resnet18-000000000000"


@pytest.fixture(scope="module")
def jpegs(obama_rgb: np.ndarray) -> list[bytes]:
    """Real face crops (a photo, shifted a little per frame) so the scorer decodes them."""
    face = cv2.resize(cv2.cvtColor(obama_rgb, cv2.COLOR_RGB2BGR), (224, 224))
    out = []
    for shift in range(6):
        ok, buf = cv2.imencode(".jpg", np.roll(face, shift * 7, axis=1))
        assert ok
        out.append(buf.tobytes())
    return out


def faces_of(vid: str, n: int, jpegs: list[bytes]) -> VideoFaces:
    crops = tuple(
        FaceCrop(
            i * 3, i * 0.5, i % 2, (10.0, 10.0, 90.0, 90.0), (0.0,) * 10, 0.9, jpegs[i], 224, 224
        )
        for i in range(n)
    )
    return VideoFaces(
        VideoRef(vid, f"file:///videos/{vid}.mp4", 1000, 1.0),
        VideoStatus.SCORED,
        DetectorInfo("scrfd-500m", "d" * 64),
        "uniform:16",
        faces=crops,
    )


def write_parts(out: Path, batches: list[list[VideoFaces]], run_id: str) -> dict[str, str]:
    writer = FaceShardWriter(str(out / "faces"), run_id, crop_scale=1.3)
    shard_of: dict[str, str] = {}
    with writer:
        for batch in batches:
            for v in writer.process_batch(batch):
                shard_of[v.ref.video_id] = v.shard_uri or ""
    return shard_of


@pytest.fixture
def scanned(tmp_path: Path, jpegs: list[bytes]) -> Path:
    """What a scan with the old model left: three videos' faces and their rows."""
    out = tmp_path / "out"
    videos = {"a": 4, "b": 6, "c": 2}
    shard_of = write_parts(out, [[faces_of(v, n, jpegs) for v, n in videos.items()]], "run-1")
    with DuckDBWarehouse(f"duckdb://{out}/scans.duckdb") as wh:
        wh.ensure_schema()
        wh.upsert_scans(
            [
                make_scan(
                    video_id=v,
                    model_version=OLD_MODEL,
                    uri=f"file:///videos/{v}.mp4",
                    faces=n,
                    frames_sampled=16,
                    shard_uri=shard_of[v],
                )
                for v, n in videos.items()
            ]
        )
    return out


def config(out: Path, ckpt: Path, **kw: object) -> RescoreConfig:
    return RescoreConfig(
        faces_uri=str(out / "faces"),
        warehouse_url=f"duckdb://{out}/scans.duckdb",
        run_id=str(kw.pop("run_id", "rescore-1")),
        scorer=ScorerConfig(checkpoint=str(ckpt)),
        progress=False,
        **kw,  # type: ignore[arg-type]
    )


def rows(out: Path) -> list[dict]:
    with DuckDBWarehouse(f"duckdb://{out}/scans.duckdb") as wh:
        return wh.query_scans()


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from operators.decode_frames import FrameDecoder

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rescore must not decode a video")

    monkeypatch.setattr(FrameDecoder, "open", refuse)


def test_rescore_adds_one_row_per_video_under_the_new_model(
    scanned: Path, tiny_checkpoint: Path, no_decoding: None
) -> None:
    summary = run_rescore(config(scanned, tiny_checkpoint))
    assert summary.videos == 3 and dict(summary.counts) == {"scored": 3}
    got = rows(scanned)
    assert sorted((r["video_id"], r["model_version"]) for r in got) == sorted(
        [(v, m) for v in "abc" for m in (OLD_MODEL, summary.model_version)]
    )
    old = {r["video_id"]: r for r in got if r["model_version"] == OLD_MODEL}
    new = {r["video_id"]: r for r in got if r["model_version"] == summary.model_version}
    assert summary.model_version.startswith("mobilenet_v2-")
    for vid, r in new.items():
        assert r["faces"] == old[vid]["faces"]
        assert r["frames_sampled"] == 16 and r["frames_with_face"] == old[vid]["faces"]
        assert r["uri"] == old[vid]["uri"] and r["shard_uri"] == old[vid]["shard_uri"]
        assert r["decode_s"] == 0.0 and r["detect_s"] == 0.0 and r["score_s"] > 0
        assert 0.0 <= r["fake_probability"] <= 1.0 and r["run_id"] == "rescore-1"
        tracks = json.loads(r["track_scores"])
        assert sum(t["faces"] for t in tracks) == r["faces"]
    assert old["a"]["fake_probability"] == 0.85  # the old rows are untouched


def test_a_rescore_holds_its_duckdb_file_until_its_run_record(
    scanned: Path, tiny_checkpoint: Path
) -> None:
    """As a scan: a reader that opens the file after planning is refused, rather than
    taking it and failing the rescore when its writer opens it."""
    from tests.test_faults import open_from_another_process

    path = scanned / "scans.duckdb"
    attempts: list[str] = []
    cfg = config(scanned, tiny_checkpoint)
    summary = run_rescore(cfg, on_listed=lambda n: attempts.append(open_from_another_process(path)))
    assert len(attempts) == 1 and "Could not set lock" in attempts[0], attempts
    assert open_from_another_process(path) == "opened"
    assert summary.videos == 3 and len(rows(scanned)) == 6


def test_a_failing_run_record_does_not_replace_the_rescores_own_error(
    scanned: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.rescore
    from operators.write_warehouse import WarehouseUnavailable

    def lost(*args: object, **kwargs: object) -> None:
        raise WarehouseUnavailable("warehouse went away")

    def plan(*args: object, **kwargs: object) -> None:
        raise RuntimeError("shard index unreadable")

    monkeypatch.setattr(pipelines.rescore, "plan_rescore", plan)
    monkeypatch.setattr(DuckDBWarehouse, "finish_run", lost)
    with pytest.raises(RuntimeError, match="shard index unreadable"):
        run_rescore(config(scanned, tiny_checkpoint))


def test_the_rescore_run_record_masks_secrets_as_a_scans_does(
    scanned: Path, tiny_checkpoint: Path
) -> None:
    from pipelines.config import EngineConfig

    engine = EngineConfig("local", beam_args=("--temp_location=gs://t?token=arg-token-4",))
    run_rescore(config(scanned, tiny_checkpoint, engine=engine, storage_options={"k": "s-5"}))
    with DuckDBWarehouse(f"duckdb://{scanned}/scans.duckdb") as wh:
        [run] = [r for r in wh.query_runs() if r["run_id"] == "rescore-1"]
    assert "arg-token-4" not in run["config"] and "s-5" not in run["config"]
    assert json.loads(run["config"])["engine"]["beam_args"] == ["--temp_location=gs://t?token=***"]


def test_a_second_rescore_skips_and_rescan_redoes(scanned: Path, tiny_checkpoint: Path) -> None:
    run_rescore(config(scanned, tiny_checkpoint))
    again = run_rescore(config(scanned, tiny_checkpoint, run_id="rescore-2"))
    assert (again.videos, again.skipped) == (0, 3)
    redo = run_rescore(config(scanned, tiny_checkpoint, run_id="rescore-3", rescan=True))
    assert (redo.videos, redo.skipped) == (3, 0)
    assert len(rows(scanned)) == 6
    with DuckDBWarehouse(f"duckdb://{scanned}/scans.duckdb") as wh:
        runs = {r["run_id"]: r for r in wh.query_runs(10)}
    assert runs["rescore-2"]["command"] == "rescore" and runs["rescore-2"]["videos_total"] == 0
    assert runs["rescore-3"]["status"] == "succeeded" and runs["rescore-3"]["videos_total"] == 3


def test_a_video_in_two_parts_is_scored_from_the_part_its_row_names(
    tmp_path: Path, jpegs: list[bytes], tiny_checkpoint: Path
) -> None:
    out = tmp_path / "out"
    first = write_parts(out, [[faces_of("a", 3, jpegs), faces_of("b", 2, jpegs)]], "run-1")
    second = write_parts(out, [[faces_of("a", 3, jpegs), faces_of("c", 2, jpegs)]], "run-2")
    assert first["a"] != second["a"]  # a's faces are now in two parts
    with DuckDBWarehouse(f"duckdb://{out}/scans.duckdb") as wh:
        wh.ensure_schema()
        wh.upsert_scans([make_scan(video_id="a", model_version=OLD_MODEL, shard_uri=first["a"])])
    summary = run_rescore(config(out, tiny_checkpoint))
    new = {r["video_id"]: r for r in rows(out) if r["model_version"] == summary.model_version}
    assert {v: r["faces"] for v, r in new.items()} == {"a": 3, "b": 2, "c": 2}  # not 6
    assert new["a"]["shard_uri"] == first["a"]  # the part its row names
    assert new["c"]["size_bytes"] == -1  # no earlier row: size unknown, said so


def test_a_part_without_a_commit_record_is_not_rescored(
    tmp_path: Path, jpegs: list[bytes], tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan killed between moving b's part into place and committing it: only a counts."""
    out = tmp_path / "out"
    write_parts(out, [[faces_of("a", 3, jpegs)]], "run-1")
    crash_before_record(monkeypatch)
    with pytest.raises(Killed):
        write_parts(out, [[faces_of("b", 2, jpegs)]], "killed")
    monkeypatch.undo()
    assert len(list((out / "faces").glob("dt=*/detector=*/part-*.parquet"))) == 2
    summary = run_rescore(config(out, tiny_checkpoint))
    assert summary.videos == 1
    assert [(r["video_id"], r["faces"]) for r in rows(out)] == [("a", 3)]


def test_a_model_trained_on_another_crop_scale_is_refused(
    tmp_path: Path, jpegs: list[bytes], tiny_checkpoint: Path
) -> None:
    out = tmp_path / "out"
    writer = FaceShardWriter(str(out / "faces"), "run-1", crop_scale=1.6)
    with writer:
        writer.process_batch([faces_of("a", 2, jpegs)])
    with pytest.raises(ConfigError, match="crop scale 1.6 but the model expects 1.3"):
        run_rescore(config(out, tiny_checkpoint))


def test_cli_rescore_defaults_the_warehouse_next_to_the_faces(
    scanned: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "rescore",
            "--faces",
            str(scanned / "faces"),
            "--model",
            str(tiny_checkpoint),
            "--run-id",
            "cli-rescore",
            "--no-progress",
        ]
    )
    assert code == 0
    assert len([r for r in rows(scanned) if r["run_id"] == "cli-rescore"]) == 3
    assert main(["rescore", "--faces", "s3://b/x", "--model", str(tiny_checkpoint)]) == 2
    assert "pass --warehouse" in capsys.readouterr().err


# --- after a real scan ---------------------------------------------------------------


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model B: the same architecture with other random weights (another model_version)."""
    import torch

    from operators.models.checkpoints import CheckpointMeta, save_checkpoint
    from operators.models.scorers import build_network

    torch.manual_seed(1)
    net = build_network("mobilenet_v2")
    path = tmp_path_factory.mktemp("model_b") / "b.pt"
    meta = CheckpointMeta(
        arch="mobilenet_v2",
        input_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        crop_scale=1.3,
        training_data="none (random init, tests)",
        metrics={},
        created_at=0.0,
        code_version="test",
    )
    save_checkpoint(net.state_dict(), meta, str(path))
    return path


@pytest.mark.slow
def test_scan_with_model_a_then_rescore_with_model_b_gives_two_rows_per_video(
    tmp_path: Path,
    tiny_checkpoint: Path,
    other_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.config import DetectorConfig, SamplingConfig, ScanConfig
    from pipelines.scan import run_scan
    from tests.conftest import REAL_VIDEOS

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("hamilton_clip.mp4", "talking_head_d0.mp4", "talking_head_d3.mp4"):
        (videos / name).symlink_to(REAL_VIDEOS / name)
    out = tmp_path / "out"
    scan = run_scan(
        ScanConfig(
            input_uri=str(videos),
            out_uri=str(out),
            warehouse_url=f"duckdb://{out}/scans.duckdb",
            run_id="scan-a",
            sampling=SamplingConfig.parse("uniform:4"),
            detector=DetectorConfig.build("scrfd-500m"),
            scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
            progress=False,
        )
    )
    assert scan.videos == 3

    from operators.decode_frames import FrameDecoder

    decoded: list[str] = []
    monkeypatch.setattr(FrameDecoder, "open", lambda self, uri, *a: decoded.append(uri))
    summary = run_rescore(config(out, other_checkpoint, run_id="rescore-b"))
    assert decoded == []  # no video was opened
    assert summary.videos == 3 and summary.model_version != scan.model_version
    got = rows(out)
    assert len(got) == 6
    by_video: dict[str, dict[str, dict]] = {}
    for r in got:
        by_video.setdefault(r["video_id"], {})[r["model_version"]] = r
    for versions in by_video.values():
        assert set(versions) == {scan.model_version, summary.model_version}
        a, b = versions[scan.model_version], versions[summary.model_version]
        assert (b["faces"], b["tracks"], b["frames_sampled"]) == (
            a["faces"],
            a["tracks"],
            a["frames_sampled"],
        )
        assert (b["width"], b["height"], b["uri"]) == (a["width"], a["height"], a["uri"])
        assert b["fake_probability"] != a["fake_probability"]  # another model's opinion


def test_cli_rescore_of_faces_that_are_not_there_is_one_line(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faces = tmp_path / "out" / "faces"  # a typo'd OUT: nothing to rescore, not "0 frames"
    assert main(["rescore", "--faces", str(faces), "--model", str(tiny_checkpoint)]) == 2
    assert capsys.readouterr().err == (
        f"dfscan: error: no face shards at {faces}: nothing is there (give a scan's OUT/faces)\n"
    )
    assert not (tmp_path / "out").exists()  # no warehouse made beside nothing
