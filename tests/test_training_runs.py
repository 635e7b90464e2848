"""Training records: the ``training_runs`` table, ``train --warehouse`` and ``dfscan runs``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from operators.write_warehouse import build_warehouse
from pipelines.cli import main
from pipelines.config import shared_dir
from schemas.records import TrainingRun
from schemas.warehouse import TRAINING_RUNS_SCHEMA, training_runs_ddl

DATA = shared_dir() / "data" / "faces" / "dfdc224"


def test_training_runs_ddl_comes_from_the_arrow_schema_with_checks() -> None:
    ddl = training_runs_ddl("postgres")
    for name in TRAINING_RUNS_SCHEMA.names:
        assert f'"{name}"' in ddl
    assert "CHECK (\"command\" IN ('train', 'tune', 'tune-trial'))" in ddl
    assert "CHECK (\"status\" IN ('running', 'succeeded', 'failed'))" in ddl
    assert 'PRIMARY KEY ("run_id")' in ddl
    assert '"started_at" TIMESTAMPTZ NOT NULL' in training_runs_ddl("duckdb")


def test_a_run_recorded_twice_keeps_one_row_with_its_final_state(tmp_path: Path) -> None:
    url = f"duckdb://{tmp_path}/w.duckdb"
    with build_warehouse(url) as wh:
        wh.ensure_schema()
        t0 = time.time() - 60
        wh.record_training_run(TrainingRun("r1", "train", "running", "{}", "", "v", t0))
        wh.record_training_run(
            TrainingRun("r1", "train", "succeeded", '{"a": 1}', "h", "v", t0, t0 + 50,
                        '{"val_auc": 0.8}', "/m.pt")
        )  # fmt: skip
        wh.record_training_run(TrainingRun("r0", "tune", "failed", "{}", "h", "v", t0 - 100))
        rows = wh.query_training_runs()
        assert [r["run_id"] for r in rows] == ["r1", "r0"]  # newest first
        assert rows[0]["status"] == "succeeded" and rows[0]["artifact_uri"] == "/m.pt"
        assert (rows[0]["ended_at"] - rows[0]["started_at"]).total_seconds() == pytest.approx(50)
        assert [r["run_id"] for r in wh.query_training_runs(command="tune")] == ["r0"]


def test_train_with_warehouse_records_config_data_hash_metrics_and_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"duckdb://{tmp_path}/runs.duckdb"
    out = tmp_path / "m.pt"
    argv = ["train", "--data", str(DATA), "--out", str(out), "--limit", "32", "--epochs", "1",
            "--batch-size", "8", "--image-size", "48", "--num-threads", "1",
            "--warehouse", url, "--run-id", "run-a"]  # fmt: skip
    assert main(argv) == 0
    assert main([*argv[:-1], "run-b"]) == 0
    with build_warehouse(url) as wh:
        rows = {r["run_id"]: r for r in wh.query_training_runs()}
    assert set(rows) == {"run-a", "run-b"}
    a, b = rows["run-a"], rows["run-b"]
    assert a["status"] == "succeeded" and a["command"] == "train"
    assert a["artifact_uri"] == str(out)
    config = json.loads(a["config"])
    assert config["image_size"] == 48 and config["limit"] == 32 and "warehouse" not in config
    metrics = json.loads(a["metrics"])
    assert 0.0 <= metrics["val_auc"] <= 1.0 and metrics["n_train"] + metrics["n_val"] == 32
    # Same data, same split: same hash; a 64-hex sha256.
    assert a["data_hash"] == b["data_hash"] and len(a["data_hash"]) == 64
    assert a["ended_at"] >= a["started_at"]

    capsys.readouterr()
    assert main(["runs", "--warehouse", url]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("run_id") and len(lines) == 3
    assert {ln.split()[0] for ln in lines[1:]} == {"run-a", "run-b"}
    assert main(["runs", "--warehouse", url, "--format", "json", "--limit", "1"]) == 0
    (only,) = capsys.readouterr().out.strip().splitlines()
    assert json.loads(only)["run_id"] == "run-b"


def test_a_failed_training_run_is_recorded_as_failed_with_its_error(tmp_path: Path) -> None:
    url = f"duckdb://{tmp_path}/runs.duckdb"
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", "--data", str(empty), "--out", str(tmp_path / "x.pt"),
                 "--warehouse", url, "--run-id", "bad"])  # fmt: skip
    assert code == 2
    with build_warehouse(url) as wh:
        (row,) = wh.query_training_runs()
    assert row["run_id"] == "bad" and row["status"] == "failed"
    assert "has no labels.csv" in row["error"]


def test_train_without_warehouse_records_nothing(tmp_path: Path) -> None:
    assert main(["train", "--data", str(DATA), "--out", str(tmp_path / "m.pt"), "--limit", "16",
                 "--epochs", "1", "--batch-size", "8", "--image-size", "32",
                 "--num-threads", "1"]) == 0  # fmt: skip
    assert not list(tmp_path.glob("*.duckdb"))


def test_runs_on_a_missing_warehouse_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "--warehouse", f"duckdb://{tmp_path}/none.duckdb"]) == 2
    assert "no warehouse at" in capsys.readouterr().err
