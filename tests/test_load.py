"""A scan of many small clips leaves nothing behind: one row per clip, no temporary
file, no open descriptor, no child process (issues #7 and #8; the 10,000-clip numbers
are in ``benchmarks/bench_load.py``)."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import psutil
import pytest

from pipelines.cli import main
from tests.media import face_frames, write_video

pytestmark = pytest.mark.slow

CLIPS = 30
# Descriptors a finished scan may hold beyond what the warm-up scan left open: none.
# DuckDB, the decode worker's socket and the shard files are all closed; handles that
# libraries open once (a wake-up pipe) are already there after the warm-up.
FD_SLACK = 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if not p.is_dir()] if path.exists() else []


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, obama_rgb: np.ndarray) -> list[Path]:
    """Small face clips, each with its own bytes (a different drift and a stamped
    corner), so every clip is its own video id."""
    folder = tmp_path_factory.mktemp("load_clips")
    paths = []
    for i in range(CLIPS + 2):
        frames = face_frames(obama_rgb, n=6, size=(320, 240), drift=1 + i % 5)
        for frame in frames:
            frame[:4, :4] = i  # a unique corner per clip
        paths.append(write_video(folder / f"clip-{i:03d}.mp4", frames))
    return paths


def manifest(path: Path, videos: list[Path]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri"])
        writer.writerows([str(v)] for v in videos)
    return path


def scan(videos: list[Path], work: Path, checkpoint: Path) -> Path:
    work.mkdir()
    out = work / "out"
    code = main(
        [
            "scan",
            str(manifest(work / "manifest.csv", videos)),
            "--out",
            str(out),
            "--model",
            str(checkpoint),
            "--frames",
            "uniform:2",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_many_clips_get_every_row_and_leak_no_file_fd_or_process(
    clips: list[Path],
    tmp_path: Path,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    # The scan and its decode worker (which inherits the environment) write temporary
    # files here, nowhere else.
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)
    # Warm-up: imports and one-time handles (libraries, thread pools) are not leaks.
    scan(clips[CLIPS:], tmp_path / "warmup", tiny_checkpoint)
    fds_before = open_fds()
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}

    out = scan(clips[:CLIPS], tmp_path / "load", tiny_checkpoint)

    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        got = con.execute("SELECT uri, video_id, status FROM video_scans").fetchall()
    finally:
        con.close()
    assert sorted(uri for uri, _, _ in got) == sorted(p.as_uri() for p in clips[:CLIPS])
    assert len({vid for _, vid, _ in got}) == CLIPS
    assert {status for _, _, status in got} == {"scored"}
    assert files_under(tmpdir) == []
    assert files_under(out / "faces" / "_tmp") == []
    assert len(files_under(out / "faces")) >= 1  # the faces were committed, not lost
    # The decode worker was stopped and reaped (servers other tests started may remain).
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children_before
    assert open_fds() <= fds_before + FD_SLACK
