"""Exactly once across crashes: SIGKILL the CLI at random points, rerun, count.

After any number of kills and one clean rerun the warehouse holds exactly one row per
(video_id, model_version), nothing missing, and the committed face shards hold each
video's faces exactly once. The seed is printed (and taken from DFSCAN_KILL_SEED) so a
failing sequence of kill points can be replayed.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from operators.write_face_shards import read_face_shards
from pipelines.shards import uncommitted
from tests.conftest import REAL_VIDEOS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
VIDEOS = [
    "hamilton_clip.mp4",
    "talking_head_d0.mp4",
    "talking_head_d3.mp4",
    "talking_head_d6.mp4",
    "talking_head_d9.mp4",
]
KILLS = 3


def scan_command(videos: Path, out: Path, checkpoint: Path, run_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "scan",
        str(videos),
        "--out",
        str(out),
        "--model",
        str(checkpoint),
        "--frames",
        "uniform:4",
        "--run-id",
        run_id,
        "--no-progress",
    ]


def test_sigkill_at_random_points_then_rerun_leaves_exactly_one_row_per_video(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    seed = int(os.environ.get("DFSCAN_KILL_SEED", time.time_ns() % 1_000_000))
    print(f"kill seed {seed} (DFSCAN_KILL_SEED={seed} replays it)")
    rng = random.Random(seed)
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in VIDEOS:
        shutil.copy(REAL_VIDEOS / name, videos / name)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    killed = 0
    for attempt in range(KILLS):
        cmd = scan_command(videos, out, tiny_checkpoint, f"killed-{attempt}")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)
        # From "still importing torch" to "writing the warehouse": a full scan of these
        # five videos takes ~10-20 s here, so most draws land inside it.
        delay = rng.uniform(1.0, 15.0)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no finally, no atexit, no flush
            killed += 1
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    final = subprocess.run(
        scan_command(videos, out, tiny_checkpoint, "final"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    print(f"{killed} of {KILLS} runs killed")

    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT video_id, model_version, faces, status FROM video_scans"
        ).fetchall()
        runs = dict(con.execute("SELECT run_id, status FROM scan_runs").fetchall())
    finally:
        con.close()

    expected = {hashlib.sha256((videos / n).read_bytes()).hexdigest() for n in VIDEOS}
    keys = Counter((vid, model) for vid, model, _, _ in rows)
    assert set(vid for vid, _ in keys) == expected  # nothing missing, nothing extra
    assert set(keys.values()) == {1} and len({m for _, m in keys}) == 1
    assert {status for *_, status in rows} == {"scored"}
    assert runs["final"] == "succeeded"
    # A killed run stays "running" (nothing ran its finally); one that ended first succeeded.
    assert {runs[r] for r in runs if r.startswith("killed-")} <= {"running", "succeeded"}

    faces = Counter(read_face_shards(str(out / "faces")).column("video_id").to_pylist())
    assert faces == {vid: n for vid, _, n, _ in rows}  # every face exactly once
    # Half-written parts a kill left behind stay out of sight under _tmp/.
    assert all("/_tmp/" in u for u in uncommitted(str(out / "faces")))
