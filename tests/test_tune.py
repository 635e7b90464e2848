"""Ray Tune search and Ray Train data-parallel training, on a tiny subset and one Ray."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from operators.models.checkpoints import load_checkpoint
from operators.write_warehouse import build_warehouse
from pipelines.cli import main
from pipelines.config import shared_dir

DATA = shared_dir() / "data" / "faces" / "dfdc224"
TINY = ["--data", str(DATA), "--limit", "48", "--image-size", "48", "--num-threads", "1"]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray for the module (starting Ray costs seconds); the commands see it is
    running and leave it up."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_tune_runs_two_trials_prints_the_table_and_keeps_the_best_checkpoint(
    ray_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"duckdb://{tmp_path}/runs.duckdb"
    out = tmp_path / "tune"
    code = main(["tune", *TINY, "--out", str(out), "--trials", "2", "--epochs-range", "1:2",
                 "--cpus-per-trial", "1", "--warehouse", url, "--run-id", "search"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("trial ") :].splitlines()
    assert table[0].split()[:3] == ["trial", "batch", "epochs"]
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 2 and all(t["error"] is None for t in trials)
    for t in trials:
        assert t["config"]["batch_size"] in (16, 32, 64)
        assert 1 <= t["config"]["epochs"] <= 2 and t["config"]["head_hidden"] in (0, 256)
        assert 0.0 <= t["val_auc_best"] <= 1.0
    best_auc = max(t["val_auc_best"] for t in trials)
    meta = load_checkpoint(str(out / "best.pt")).meta
    assert meta.metrics["val_auc"] == pytest.approx(best_auc)
    assert meta.extra["run_id"].startswith("search-")
    assert (out / "best.pt.split.json").is_file()
    assert f"val_auc={best_auc:.4f}" in printed

    with build_warehouse(url) as wh:
        rows = wh.query_training_runs()
    by_command: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        by_command.setdefault(str(r["command"]), []).append(r)
    (search,) = by_command["tune"]
    assert search["run_id"] == "search" and search["status"] == "succeeded"
    assert search["artifact_uri"] == str((out / "best.pt").resolve())
    assert len(by_command["tune-trial"]) == 2
    assert {r["parent_run_id"] for r in by_command["tune-trial"]} == {"search"}
    assert {r["data_hash"] for r in rows} == {search["data_hash"]}


def test_ray_train_with_one_worker_runs_the_same_loop_and_saves_a_checkpoint(
    ray_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ddp.pt"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--workers", "1"]) == 0  # fmt: skip
    meta = load_checkpoint(str(out)).meta
    assert meta.metrics["n_train"] + meta.metrics["n_val"] == 48
    assert 0.0 <= meta.metrics["val_auc"] <= 1.0
    assert (tmp_path / "ddp.pt.split.json").is_file()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"val_auc={meta.metrics['val_auc']:.4f} val_acc={meta.metrics['val_acc']:.4f}"
