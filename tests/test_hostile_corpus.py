"""The hostile corpus through every runner: each bad upload ends as exactly one row with
its expected status, the run exits 0, nothing else is read, no process is left behind.

The corpus (``tests/hostile_corpus.py``) has one file per kind of hostile or broken
upload, including two whose decode the test-only fault hook turns into a native crash
(SIGABRT, SIGSEGV) and one into a hang: those prove the decode worker isolation on
each engine, since a real decoder crash cannot be produced on demand.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pytest

from operators.isolation import FAULTS_ENV
from pipelines.cli import main
from pipelines.scan import RUNNERS
from tests.hostile_corpus import FAULTS_ENV as FAULT_SPEC
from tests.hostile_corpus import PRIVATE, build_corpus
from tests.processes import TAG_ENV, wait_for_no_processes

pytestmark = pytest.mark.slow

ENGINES = ["local", "beam", "ray"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, obama_rgb: np.ndarray):
    root = tmp_path_factory.mktemp("hostile")
    expected = build_corpus(root / "in", obama_rgb, root / "work")
    return root / "in", expected, root / "in" / PRIVATE


def rows(out: Path) -> list[dict]:
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        cur = con.execute("SELECT uri, status, error, fake_probability FROM video_scans")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_every_hostile_input_is_one_row_with_its_status(
    engine: str, corpus, tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
):
    if engine not in RUNNERS:
        pytest.skip(f"runner {engine!r} is not registered in pipelines.scan.RUNNERS")
    folder, expected, private = corpus
    assert len(expected) >= 25
    for target in private.iterdir():  # any read of a playlist's target would move these
        os.utime(target, (0, target.stat().st_mtime))
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_ENV, tag)
    monkeypatch.setenv(FAULTS_ENV, FAULT_SPEC)
    monkeypatch.chdir(tmp_path)  # a shell-injected `touch PWNED` would land here
    out = tmp_path / "out"
    t0 = time.monotonic()
    code = main(
        [
            "scan",
            str(folder),
            "--out",
            str(out),
            "--model",
            str(tiny_checkpoint),
            "--frames",
            "uniform:4",
            "--timeout",
            "5",
            "--runner",
            engine,
            "--no-progress",
        ]
    )
    elapsed = time.monotonic() - t0
    assert code == 0

    got = rows(out)
    names = Counter(Path(r["uri"].removeprefix("file://")).name for r in got)
    assert set(names) == set(expected), set(names) ^ set(expected)
    assert all(n == 1 for n in names.values()), [k for k, n in names.items() if n != 1]
    assert len(got) == len(expected)
    status = {Path(r["uri"].removeprefix("file://")).name: r for r in got}
    wrong = {
        name: (want, status[name]["status"], status[name]["error"])
        for name, want in expected.items()
        if status[name]["status"] != want
    }
    assert not wrong
    for name, row in status.items():
        if row["status"] not in ("scored", "no_face"):
            assert row["error"], name  # every failure says why
            assert row["fake_probability"] is None, name
    assert "decoder crashed (signal 6)" in status["fault-abort.mp4"]["error"]
    assert "decoder crashed (signal 11)" in status["fault-segv.mp4"]["error"]

    read = [t.name for t in private.iterdir() if t.stat().st_atime != 0]
    assert not read, f"a playlist made the decoder read {read}"
    assert not list(tmp_path.rglob("PWNED")) and not list(folder.parent.rglob("PWNED"))
    left = wait_for_no_processes(tag)
    assert not left, f"processes left behind: {left}"
    print(f"\n{engine}: {len(expected)} inputs in {elapsed:.1f} s")
