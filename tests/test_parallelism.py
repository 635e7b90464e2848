"""How a local scan fills the cores: decode workers per core, parts sized so scoring
overlaps decoding, and a classifier that loads without torchvision once its graph is
cached. Speed itself is measured in benchmarks/, never asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from operators.detect_faces import cpu_threads
from pipelines.cli import main
from pipelines.config import (
    ConfigError,
    DetectorConfig,
    EngineConfig,
    LimitsConfig,
    SamplingConfig,
    ScanConfig,
    ScorerConfig,
)
from pipelines.graph import decode_workers, rows_per_transaction, shard_videos
from pipelines.scan import run_scan
from tests.conftest import REAL_VIDEOS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("videos", "per_shard"), [(0, 1), (1, 1), (9, 2), (14, 2), (100, 13), (128, 16), (10_000, 16)]
)
def test_small_scans_commit_about_eight_parts_large_ones_full_parts(videos, per_shard):
    assert shard_videos(videos, 16) == per_shard


@pytest.mark.parametrize(
    ("videos", "rows"), [(0, 1), (4, 1), (14, 2), (300, 38), (2048, 256), (10_000, 256)]
)
def test_small_scans_commit_rows_in_about_eight_transactions(videos, rows):
    assert rows_per_transaction(videos, 256) == rows


def four_video_scan(
    tmp_path: Path, checkpoint: Path, run_id: str, frames: str, limits: LimitsConfig | None = None
) -> ScanConfig:
    """A local scan of four shared real videos into ``tmp_path/<run_id>``."""
    videos = tmp_path / "videos"
    if not videos.exists():
        videos.mkdir()
        for name in sorted(os.listdir(REAL_VIDEOS))[:4]:
            (videos / name).symlink_to(REAL_VIDEOS / name)
    out = tmp_path / run_id
    return ScanConfig(
        input_uri=str(videos),
        out_uri=str(out),
        warehouse_url=f"duckdb://{out}/scans.duckdb",
        run_id=run_id,
        sampling=SamplingConfig.parse(frames),
        detector=DetectorConfig.build("scrfd-500m"),
        limits=limits or LimitsConfig(),
        scorer=ScorerConfig(checkpoint=str(checkpoint)),
        progress=False,
    )


def test_a_small_scan_commits_its_rows_as_it_goes_not_all_at_the_end(
    tmp_path, tiny_checkpoint, monkeypatch
):
    # Rows held for a full 256-row batch were all lost to a kill of a nightly run of a
    # few hundred videos, and the rerun decoded every one of them again.
    from operators.write_warehouse import DuckDBWarehouse

    batches: list[int] = []
    upsert = DuckDBWarehouse.upsert_scans

    def counted(self, rows):
        batches.append(len(rows))
        return upsert(self, rows)

    monkeypatch.setattr(DuckDBWarehouse, "upsert_scans", counted)
    cfg = four_video_scan(tmp_path, tiny_checkpoint, "rows", "uniform:2")
    assert run_scan(cfg).videos == 4
    assert batches == [1, 1, 1, 1]


def test_each_rows_transaction_follows_its_part_not_the_end_of_the_run(
    tmp_path, tiny_checkpoint, monkeypatch
):
    # The aggregator passed rows on 64 at a time: a run under 64 videos wrote its rows
    # at its very end, whatever the writer's batch, so a fault lost every row and the
    # rerun decoded everything again. Run as lazy generators, one stage at a time, so
    # the order of commits is the pipeline's own, not a race of threads.
    from operators.write_face_shards import FaceShardWriter
    from operators.write_warehouse import DuckDBWarehouse
    from pipelines import scan
    from pipelines.local import LocalRunner

    events: list[str] = []
    write, upsert = FaceShardWriter.write, DuckDBWarehouse.upsert_scans

    def part(self, *args, **kwargs):
        events.append("part")
        return write(self, *args, **kwargs)

    def rows(self, batch):
        events.append(f"{len(batch)} row")
        return upsert(self, batch)

    monkeypatch.setattr(FaceShardWriter, "write", part)
    monkeypatch.setattr(DuckDBWarehouse, "upsert_scans", rows)
    monkeypatch.setitem(scan.RUNNERS, "local", lambda engine: LocalRunner(threaded=False))
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in sorted(os.listdir(REAL_VIDEOS))[:4]:
        (videos / name).symlink_to(REAL_VIDEOS / name)
    out = tmp_path / "out"
    cfg = ScanConfig(
        input_uri=str(videos),
        out_uri=str(out),
        warehouse_url=f"duckdb://{out}/scans.duckdb",
        run_id="rows",
        sampling=SamplingConfig.parse("uniform:2"),
        detector=DetectorConfig.build("scrfd-500m"),
        scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
        progress=False,
    )
    assert run_scan(cfg).videos == 4
    assert events == ["part", "1 row"] * 4


def scan_config(runner: str = "local", **limits: object) -> ScanConfig:
    return ScanConfig(
        input_uri="x",
        out_uri="y",
        warehouse_url="duckdb:///tmp/x.duckdb",
        run_id="r",
        limits=LimitsConfig(**limits),  # type: ignore[arg-type]
        engine=EngineConfig(runner),
    )


def test_decode_workers_are_one_per_core_locally_one_per_actor_elsewhere():
    assert decode_workers(scan_config()) == cpu_threads()
    assert decode_workers(scan_config(decode_workers=3)) == 3
    assert decode_workers(scan_config(isolate=False)) == 1  # in-process: one detector
    assert decode_workers(scan_config("ray")) == decode_workers(scan_config("beam")) == 1
    with pytest.raises(ConfigError, match="--decode-workers is the local runner's"):
        decode_workers(scan_config("ray", decode_workers=2))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--decode-workers", "2", "--no-isolate"], "--decode-workers needs isolation"),
        (["--decode-workers", "2", "--runner", "ray"], "--decode-workers is the local runner's"),
    ],
)
def test_bad_decode_worker_settings_are_one_line(capsys, tmp_path, tiny_checkpoint, extra, message):
    args = ["scan", str(REAL_VIDEOS), "--out", str(tmp_path), "--model", str(tiny_checkpoint)]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dfscan: error:") and message in err
    assert not (tmp_path / "scans.duckdb").exists()  # refused before the scan began


def test_zero_decode_workers_is_refused_by_the_parser(capsys, tiny_checkpoint):
    with pytest.raises(SystemExit) as exc:
        main(["scan", str(REAL_VIDEOS), "--decode-workers", "0", "--model", str(tiny_checkpoint)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--decode-workers" in err


def test_two_decode_workers_give_the_rows_one_worker_gives(tmp_path, tiny_checkpoint):
    """Same videos, same faces, same scores: parallel decode changes only the order."""
    rows = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        cfg = four_video_scan(
            tmp_path,
            tiny_checkpoint,
            f"w{workers}",
            "uniform:4",
            LimitsConfig(decode_workers=workers),
        )
        summary = run_scan(cfg)
        assert summary.videos == 4
        con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
        rows[workers] = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT video_id, status, frames_sampled, faces, tracks, fake_probability"
                " FROM video_scans"
            ).fetchall()
        }
        con.close()
    assert rows[1].keys() == rows[2].keys() and len(rows[1]) == 4
    for vid, one in rows[1].items():
        two = rows[2][vid]
        assert one[:4] == two[:4]
        assert (one[4] is None) == (two[4] is None)
        if one[4] is not None:
            assert one[4] == pytest.approx(two[4], abs=1e-5)
    assert any(r[2] > 0 for r in rows[1].values())  # faces were found and scored


def test_a_cached_onnx_graph_loads_without_torchvision(tmp_path, tiny_checkpoint):
    """torchvision costs ~1.6 s of imports; with the graph cached, scans skip it."""
    probe = (
        "import sys\n"
        "from operators.models.scorers import build_scorer\n"
        f"s = build_scorer({str(tiny_checkpoint)!r}, 'cpu', backend='onnx',"
        f" cache_dir={str(tmp_path)!r})\n"
        "s.load()\n"
        "print('torchvision' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def loads_torchvision() -> bool:
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip().splitlines()[-1] == "True"

    assert loads_torchvision()  # first load: the network is built and exported
    assert list((tmp_path / "onnx").glob("*.onnx"))
    assert not loads_torchvision()  # cached: ONNX Runtime only
