"""The starter-model trainer: split by source video, and tiny real runs per architecture."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from operators.models.checkpoints import load_checkpoint
from operators.models.scorers import build_scorer
from operators.score_faces import decode_crops
from pipelines import train
from pipelines.config import ConfigError, shared_dir

DATA = shared_dir() / "data" / "faces" / "dfdc224"


def _args(*argv: str) -> argparse.Namespace:
    """Parse through the real subparser, as ``dfscan train ...`` would."""
    parser = argparse.ArgumentParser(prog="dfscan")
    train.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_never_separates_a_fake_from_its_original(seed: int) -> None:
    rows = train.read_labels(DATA)
    assert len(rows) == 1973
    tr, va = train.split_by_source(rows, 0.2, seed)
    side = {r.videoname: "train" for r in tr} | {r.videoname: "val" for r in va}
    fakes = [r for r in rows if r.is_fake]
    assert len(fakes) == 973
    assert all(side[f.videoname] == side[f.original] for f in fakes)
    assert {r.source for r in tr}.isdisjoint({r.source for r in va})
    assert len(tr) + len(va) == len(rows)
    assert 0.15 < len(va) / len(rows) < 0.25


def test_limit_keeps_fakes_with_their_originals() -> None:
    rows = train.limit_rows(train.read_labels(DATA), 64, seed=0)
    assert len(rows) == 64
    names = {r.videoname for r in rows}
    assert all(r.original in names for r in rows if r.is_fake)


@pytest.mark.parametrize(
    ("arch", "size"), [("mobilenet_v2", 64), ("resnet18", 64), ("xception", 96)]
)
def test_tiny_training_run_writes_a_loadable_checkpoint_with_val_auc(
    arch: str, size: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models" / f"{arch}.pt"
    args = _args(
        "--data", str(DATA), "--arch", arch, "--out", str(out), "--limit", "64",
        "--epochs", "1", "--batch-size", "16", "--image-size", str(size), "--num-threads", "2",
    )  # fmt: skip
    assert args.func(args) == 0

    ckpt = load_checkpoint(str(out))
    meta = ckpt.meta
    assert meta.arch == arch and meta.input_size == size
    assert 0.0 <= meta.metrics["val_auc"] <= 1.0
    assert 0.0 <= meta.metrics["val_acc"] <= 1.0
    assert meta.metrics["n_train"] + meta.metrics["n_val"] == 64
    assert "DFDC research-only terms" in meta.training_data
    expected_start = "mobilenet_v2-b0353104.pth" if arch == "mobilenet_v2" else "none"
    assert meta.extra["pretrained"] == expected_start

    split = json.loads((tmp_path / "models" / f"{arch}.pt.split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 64
    assert set(split["train"]).isdisjoint(split["val"])

    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"val_auc={meta.metrics['val_auc']:.4f} val_acc={meta.metrics['val_acc']:.4f}"

    scorer = build_scorer(str(out), device="cpu")
    faces = decode_crops([(DATA / n).read_bytes() for n in split["val"][:4]], size)
    probs = scorer.predict(faces)
    assert probs.shape == (4,) and np.all((probs >= 0) & (probs <= 1))


def test_max_minutes_stops_training_but_still_evaluates_and_saves(tmp_path: Path) -> None:
    out = tmp_path / "early.pt"
    args = _args(
        "--data", str(DATA), "--out", str(out), "--limit", "64", "--epochs", "5",
        "--batch-size", "8", "--image-size", "64", "--max-minutes", "0.0001",
    )  # fmt: skip
    assert args.func(args) == 0
    meta = load_checkpoint(str(out)).meta
    assert meta.extra["stopped_early"] == "true"
    assert meta.metrics["epochs_run"] < 1.0
    assert "val_auc" in meta.metrics


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--epochs", "0"], "--epochs"),
        (["--image-size", "8"], "--image-size"),
        (["--pretrained", "/nonexistent/weights.pth"], "pretrained weights not found"),
    ],
)
def test_bad_arguments_raise_one_line_config_errors(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    args = _args("--data", str(DATA), "--out", str(tmp_path / "x.pt"), "--limit", "16", *flags)
    with pytest.raises(ConfigError, match=message) as err:
        args.func(args)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.pt").exists()


def test_data_folder_without_labels_is_a_config_error(tmp_path: Path) -> None:
    args = _args("--data", str(tmp_path), "--out", str(tmp_path / "x.pt"))
    with pytest.raises(ConfigError, match="has no labels.csv"):
        args.func(args)


def test_learning_rate_warms_up_then_anneals_to_near_zero() -> None:
    peak = 1e-3
    assert train.one_cycle_lr(0.0, peak) == pytest.approx(peak / 25)
    assert train.one_cycle_lr(0.15, peak) == pytest.approx(peak)
    assert train.one_cycle_lr(1.0, peak) == pytest.approx(peak * 1e-4)
    assert train.one_cycle_lr(5.0, peak) == train.one_cycle_lr(1.0, peak)  # past the budget
    after = [train.one_cycle_lr(p / 20, peak) for p in range(3, 21)]
    assert after == sorted(after, reverse=True)
