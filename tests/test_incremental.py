"""Incremental scans: hash cache, same-bytes dedupe, skip what the warehouse has, --rescan."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from operators.list_videos import VideoHasher, list_videos
from operators.metrics import ScanMetrics
from operators.write_warehouse import DuckDBWarehouse, build_warehouse
from pipelines.incremental import ScanPlan, plan_scan
from pipelines.local import LocalRunner
from schemas.records import VideoFile, VideoRef
from tests.test_write_warehouse import make_scan


class CountingHasher:
    """The real hasher through the real local runner, counting the files it reads."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.read: list[str] = []
        self.max_bytes = max_bytes

    def __call__(self, files: list[VideoFile]) -> list[VideoRef]:
        self.read += [f.uri for f in files]
        return list(LocalRunner().run(files, [VideoHasher(self.max_bytes)], ScanMetrics()))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.mp4").write_bytes(b"video A")
    (d / "b copy.mp4").write_bytes(b"video A")  # same bytes as a.mp4
    (d / "c.mp4").write_bytes(b"video C")
    return d


@pytest.fixture
def wh(tmp_path: Path):
    warehouse = DuckDBWarehouse(f"duckdb://{tmp_path}/wh.duckdb")
    warehouse.ensure_schema()
    yield warehouse
    warehouse.close()


def plan(folder: Path, wh, hasher: CountingHasher, run: str, rescan: bool = False) -> ScanPlan:
    files = list(list_videos(str(folder)))
    return plan_scan(files, hasher, wh, "m1", run, rescan=rescan)


def scanned(wh, p: ScanPlan, run: str) -> None:
    """What the rest of the scan would write: one row per decoded video."""
    wh.upsert_scans([make_scan(video_id=r.video_id, uri=r.uri, run_id=run) for r in p.todo])


def names(refs: list[VideoRef]) -> list[str]:
    return [Path(r.uri).name for r in refs]


def test_first_plan_decodes_each_content_once_and_records_every_uri(folder, wh) -> None:
    hasher = CountingHasher()
    p = plan(folder, wh, hasher, "run-1")
    assert names(p.todo) == ["a.mp4", "c.mp4"]  # first URI in sorted order stands for A
    assert names(p.duplicates) == ["b copy.mp4"]
    assert (p.skipped, p.hashed, p.cached) == ([], 3, 0)
    uris = wh.query_uris(sha(b"video A"))
    assert [Path(u["uri"]).name for u in uris] == ["a.mp4", "b copy.mp4"]
    assert {u["first_run_id"] for u in uris} == {"run-1"}


def test_second_plan_reads_nothing_and_skips_everything(folder, wh) -> None:
    first = plan(folder, wh, CountingHasher(), "run-1")
    scanned(wh, first, "run-1")
    hasher = CountingHasher()
    p = plan(folder, wh, hasher, "run-2")
    assert hasher.read == []  # (uri, size, mtime) matched: ids from video_uris
    assert (p.todo, p.hashed, p.cached) == ([], 0, 3)
    assert names(p.skipped) == ["a.mp4", "c.mp4"] and names(p.duplicates) == ["b copy.mp4"]
    rows = wh.query_uris()
    assert len(rows) == 3
    assert {(r["first_run_id"], r["last_run_id"]) for r in rows} == {("run-1", "run-2")}


def test_rescan_hashes_and_decodes_again(folder, wh) -> None:
    scanned(wh, plan(folder, wh, CountingHasher(), "run-1"), "run-1")
    hasher = CountingHasher()
    p = plan(folder, wh, hasher, "run-2", rescan=True)
    assert len(hasher.read) == 3 and p.cached == 0
    assert names(p.todo) == ["a.mp4", "c.mp4"] and p.skipped == []


def test_a_new_upload_and_a_replaced_one_are_the_only_work(folder, wh) -> None:
    scanned(wh, plan(folder, wh, CountingHasher(), "run-1"), "run-1")
    (folder / "d.mp4").write_bytes(b"video D")
    (folder / "c.mp4").write_bytes(b"video C, re-uploaded")
    st = (folder / "c.mp4").stat()
    os.utime(folder / "c.mp4", (st.st_atime, st.st_mtime + 10))  # a new upload: new mtime
    shutil.copy(folder / "a.mp4", folder / "e same as a.mp4")  # known bytes, new key
    hasher = CountingHasher()
    p = plan(folder, wh, hasher, "run-2")
    assert sorted(Path(u).name for u in hasher.read) == ["c.mp4", "d.mp4", "e same as a.mp4"]
    assert names(p.todo) == ["c.mp4", "d.mp4"]
    assert names(p.skipped) == ["a.mp4"]
    assert names(p.duplicates) == ["b copy.mp4", "e same as a.mp4"]
    # The replaced URI keeps its old (uri, id) row as history and gains a new one.
    c_rows = [r for r in wh.query_uris() if r["uri"].endswith("/c.mp4")]
    assert sorted(r["video_id"] for r in c_rows) == sorted(
        [sha(b"video C"), sha(b"video C, re-uploaded")]
    )


def test_an_id_made_from_the_uri_is_never_reused_from_the_cache(folder, wh) -> None:
    hasher = CountingHasher(max_bytes=3)  # every file is "too large": uuid5 ids, not read
    p = plan(folder, wh, hasher, "run-1")
    assert all(r.video_id.startswith("u5-") for r in p.todo) and len(p.todo) == 3
    assert wh.known_video_ids(list(list_videos(str(folder)))) == {}


@pytest.mark.services
def test_warehouse_lookups_agree_on_postgres(folder, postgres_url) -> None:
    """The hash cache and URI record are shared SQL: the same answers on PostgreSQL."""
    import uuid
    from urllib.parse import quote

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{postgres_url}?options={quote(f'-c search_path={schema}')}"
    with build_warehouse(url) as pg:
        pg.ensure_schema()
        first = plan(folder, pg, CountingHasher(), "run-1")
        scanned(pg, first, "run-1")
        hasher = CountingHasher()
        second = plan(folder, pg, hasher, "run-2")
        assert hasher.read == [] and second.todo == [] and second.cached == 3
        assert len(pg.query_uris()) == 3


# --- whole scans ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_scan_decodes_nothing_and_rescan_decodes_again(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main
    from pipelines.config import DetectorConfig, SamplingConfig, ScanConfig, ScorerConfig
    from pipelines.scan import ScanSummary, run_scan
    from tests.conftest import REAL_VIDEOS

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("talking_head_d0.mp4", "talking_head_d3.mp4"):
        shutil.copy(REAL_VIDEOS / name, videos / name)
    shutil.copy(REAL_VIDEOS / "talking_head_d0.mp4", videos / "zz copy of d0.mp4")
    out = tmp_path / "out"
    url = f"duckdb://{out}/scans.duckdb"

    def scan(run_id: str) -> ScanSummary:
        return run_scan(
            ScanConfig(
                input_uri=str(videos),
                out_uri=str(out),
                warehouse_url=url,
                run_id=run_id,
                sampling=SamplingConfig.parse("uniform:4"),
                detector=DetectorConfig.build("scrfd-500m"),
                scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
                progress=False,
            )
        )

    first = scan("run-1")
    assert (first.videos, first.duplicates, first.hashed) == (2, 1, 3)
    second = scan("run-2")
    assert (second.videos, second.skipped, second.hashed, second.cached) == (0, 2, 0, 3)
    with build_warehouse(url) as wh:
        rows = wh.query_scans()
        uris = wh.query_uris()
    assert len(rows) == 2 and {r["run_id"] for r in rows} == {"run-1"}
    assert sorted(Path(r["uri"]).name for r in rows) == [
        "talking_head_d0.mp4",
        "talking_head_d3.mp4",
    ]
    d0 = next(r["video_id"] for r in rows if r["uri"].endswith("d0.mp4"))
    assert sorted(Path(u["uri"]).name for u in uris if u["video_id"] == d0) == [
        "talking_head_d0.mp4",
        "zz copy of d0.mp4",
    ]

    args = ["scan", str(videos), "--out", str(out), "--model", str(tiny_checkpoint)]
    args += ["--frames", "uniform:4", "--run-id", "run-3", "--rescan", "--no-progress"]
    capsys.readouterr()
    assert main(args) == 0
    assert (
        "skipped 0 already in the warehouse (--rescan to redo) · 1 more URIs of the same"
        " bytes as a listed one (recorded, not decoded again)"
    ) in " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    with build_warehouse(url) as wh:
        rows = wh.query_scans()
    assert len(rows) == 2 and {r["run_id"] for r in rows} == {"run-3"}
