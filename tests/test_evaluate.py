"""``dfscan eval`` and ``dfscan calibrate`` on real shared data and a tiny trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from operators.models.checkpoints import load_checkpoint
from pipelines.cli import build_parser, build_scan_config, main
from pipelines.config import AggregateConfig, ConfigError, shared_dir
from pipelines.evaluate import video_scores
from pipelines.graph import configure_for_model, resolve_model
from pipelines.labelled_data import LabelledFace, split_candidates
from tests.conftest import CropsFolder

DATA = shared_dir() / "data" / "faces" / "dfdc224"
VIDEOS = shared_dir() / "data" / "videos" / "face_crops"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2 fine-tuned 1 epoch on 64 DFDC crops at 64 px: a real checkpoint with a
    real split file, in a few seconds. Not a detector of anything."""
    out = tmp_path_factory.mktemp("eval") / "tiny.pt"
    code = main(
        ["train", "--data", str(DATA), "--out", str(out), "--limit", "64", "--epochs", "1",
         "--batch-size", "16", "--image-size", "64", "--num-threads", "2"]
    )  # fmt: skip
    assert code == 0
    return out


def test_eval_on_the_val_split_reproduces_the_trainers_val_auc_and_writes_curves(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_model), "--data", str(DATA), "--split", "val",
                 "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "metrics.json").read_text())
    meta = load_checkpoint(str(tiny_model)).meta
    split = json.loads(Path(meta.extra["split"]).read_text())
    assert report["split"] == "val" and report["layout"] == "crops"
    assert report["frame"]["n"] == len(split["val"]) == meta.metrics["n_val"]
    # One crop per DFDC video: the video level sees the same faces.
    assert report["video"]["n"] == report["frame"]["n"]
    # Same images, same preprocessing, same weights: the trainer's number, reproduced.
    assert report["frame"]["auc"] == pytest.approx(meta.metrics["val_auc"], abs=1e-6)
    assert report["threshold"] == 0.5 and report["threshold_source"] == "default"
    for key in ("accuracy", "ap_fake", "ap_real", "eer", "log_loss"):
        assert report["frame"][key] is not None
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["pr_frame.png", "pr_video.png", "roc_frame.png", "roc_video.png"]
    assert all((out / n).read_bytes().startswith(PNG) for n in pngs)
    assert "frame" in capsys.readouterr().out


def test_eval_on_class_folders_scores_sampled_frames_and_aggregates_per_video(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "videos"
    assert main(["eval", "--model", str(tiny_model), "--data", str(VIDEOS), "--out", str(out),
                 "--no-plots"]) == 0  # fmt: skip
    report = json.loads((out / "metrics.json").read_text())
    assert report["layout"] == "videos"
    assert report["video"]["n"] == 20 and report["video"]["n_fake"] == 19
    assert report["frame"]["n"] == 20 * 32  # uniform:32, the scan's default sampling
    videos = json.loads((out / "videos.json").read_text())
    assert sum(v["label"] == "REAL" for v in videos) == 1
    assert all(0.0 <= v["fake_probability"] <= 1.0 for v in videos)
    assert not list(out.glob("*.png"))


def _faces(video: str, n: int, fake: bool) -> list[LabelledFace]:
    return [LabelledFace(f"{video}#{i}", video, video, fake, frame_index=i) for i in range(n)]


def test_video_level_uses_the_scans_decision_rule() -> None:
    faces = _faces("a", 14, True) + _faces("b", 4, False)
    probs = np.array([0.9] * 13 + [0.1] + [0.3, 0.3, 0.3, 0.7])
    ids, y, p = video_scores(faces, probs, AggregateConfig(rule="mean"))
    assert ids == ["a", "b"] and y.tolist() == [1.0, 0.0]
    assert p[0] == pytest.approx((0.9 * 13 + 0.1) / 14) and p[1] == pytest.approx(0.4)
    # Confident strategy: 13 of 14 faces above 0.8 -> the mean of those alone.
    _, _, p = video_scores(faces, probs, AggregateConfig(rule="track_confident_max"))
    assert p[0] == pytest.approx(0.9)


def test_video_with_faces_labelled_both_ways_is_a_config_error() -> None:
    faces = _faces("a", 1, True) + _faces("a", 1, False)
    with pytest.raises(ConfigError, match="both REAL and FAKE"):
        video_scores(faces, np.array([0.5, 0.5]), AggregateConfig(rule="mean"))


def test_split_val_needs_a_checkpoint_split_that_matches_the_data(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "--model", str(tiny_model), "--data", str(VIDEOS), "--split", "val",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "no face of the checkpoint's val split" in capsys.readouterr().err


def test_calibrate_stores_temperature_and_a_threshold_within_the_target_fpr(
    tiny_model: Path, tmp_path: Path
) -> None:
    calibrated = tmp_path / "calibrated.pt"
    assert main(["calibrate", "--model", str(tiny_model), "--data", str(DATA),
                 "--target-fpr", "0.25", "--out", str(calibrated)]) == 0  # fmt: skip
    before, after = load_checkpoint(str(tiny_model)), load_checkpoint(str(calibrated))
    assert before.meta.temperature == 1.0 and before.meta.threshold is None
    assert after.meta.temperature > 0 and after.meta.temperature != 1.0
    assert after.meta.threshold is not None and 0.0 <= after.meta.threshold <= 1.0
    assert after.meta.metrics["calib_fpr"] <= 0.25
    assert after.meta.metrics["calib_log_loss_after"] <= after.meta.metrics["calib_log_loss_before"]
    assert after.meta.extra["split"] == before.meta.extra["split"]
    for name, tensor in before.state_dict.items():
        assert bool((after.state_dict[name] == tensor).all()), name
    # Eval of the calibrated model uses its threshold and holds the FPR on val.
    out = tmp_path / "report"
    assert main(["eval", "--model", str(calibrated), "--data", str(DATA), "--split", "val",
                 "--out", str(out), "--no-plots"]) == 0  # fmt: skip
    report = json.loads((out / "metrics.json").read_text())
    assert report["threshold_source"] == "checkpoint"
    assert report["threshold"] == pytest.approx(after.meta.threshold)
    assert 1.0 - report["video"]["accuracy_real"] <= 0.25
    # Temperature scaling is monotonic: the ranking, so the AUC, is unchanged.
    assert report["frame"]["auc"] == pytest.approx(before.meta.metrics["val_auc"], abs=1e-6)


def test_scan_takes_the_checkpoints_threshold_unless_one_is_given(
    tiny_model: Path, tmp_path: Path
) -> None:
    calibrated = tmp_path / "calibrated.pt"
    assert main(["calibrate", "--model", str(tiny_model), "--data", str(DATA),
                 "--target-fpr", "0.1", "--out", str(calibrated)]) == 0  # fmt: skip
    threshold = load_checkpoint(str(calibrated)).meta.threshold
    videos = str(shared_dir() / "data" / "videos" / "real")

    def resolved(*extra: str, model: Path = calibrated) -> float:
        args = build_parser().parse_args(
            ["scan", videos, "--model", str(model), "--out", str(tmp_path / "o"), *extra]
        )
        args.beam_args = []
        cfg = build_scan_config(args)
        return configure_for_model(cfg, resolve_model(cfg)).aggregate.threshold

    assert resolved() == pytest.approx(threshold)
    assert resolved("--threshold", "0.7") == 0.7
    assert resolved(model=tiny_model) == 0.5  # uncalibrated: the old default


@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_undecodable_image_in_the_data_is_one_line_naming_the_file(
    command: str,
    tiny_checkpoint: Path,
    crops_folder: CropsFolder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [("r1", "REAL", ""), ("f1", "FAKE", "r1"), ("bad", "FAKE", "r1")]
    data = crops_folder(rows, images={"bad": b"not a jpg"})
    out = tmp_path / "out"
    assert main([command, "--model", str(tiny_checkpoint), "--data", str(data), "--split", "all",
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err == f"dfscan: error: image {data / 'bad.jpg'} is not a decodable JPEG (9 bytes)\n"
    assert not out.exists()


def _with_split(tiny_checkpoint: Path, model: str, recorded: str, val: list[str]) -> None:
    """Save the tiny checkpoint at ``model`` recording split path ``recorded`` (as training
    does, relative to the folder it ran in), and write the split beside it."""
    import dataclasses

    import fsspec

    from operators.models.checkpoints import save_checkpoint

    ckpt = load_checkpoint(str(tiny_checkpoint))
    meta = dataclasses.replace(ckpt.meta, extra={**ckpt.meta.extra, "split": recorded})
    save_checkpoint(ckpt.state_dict, meta, model)
    with fsspec.open(f"{model}.split.json", "w") as f:
        json.dump({"train": [], "val": val}, f)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_relative_split_path_is_found_beside_the_checkpoint_from_any_folder(
    where: str,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import fsspec

    from pipelines.train import read_labels

    rows = read_labels(DATA)
    val = [r.image for r in rows if not r.is_fake][:3] + [r.image for r in rows if r.is_fake][:3]
    model = (
        str(tmp_path / "artifacts" / "tiny.pt") if where == "local" else "memory://ckpts/tiny.pt"
    )
    _with_split(tiny_checkpoint, model, "artifacts/tiny.pt.split.json", val)
    # Another folder with its own artifacts/tiny.pt.split.json (another run's): the file
    # beside the checkpoint wins over the same relative path from here.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "artifacts").mkdir(parents=True)
    other = {"train": [], "val": [r.image for r in rows[100:102]]}
    (elsewhere / "artifacts" / "tiny.pt.split.json").write_text(json.dumps(other))
    monkeypatch.chdir(elsewhere)
    try:
        out = tmp_path / "report"
        assert main(["eval", "--model", model, "--data", str(DATA), "--split", "val",
                     "--out", str(out), "--no-plots"]) == 0  # fmt: skip
        assert json.loads((out / "metrics.json").read_text())["frame"]["n"] == 6
        calibrated = tmp_path / "calibrated.pt"
        assert main(["calibrate", "--model", model, "--data", str(DATA),
                     "--out", str(calibrated)]) == 0  # fmt: skip
        assert "on 6 faces" in capsys.readouterr().out
        # Neither beside the checkpoint nor from here: the error stays, one line.
        fsspec.filesystem("memory" if where == "memory" else "file").rm(f"{model}.split.json")
        (elsewhere / "artifacts" / "tiny.pt.split.json").unlink()
        assert main(["eval", "--model", model, "--data", str(DATA), "--split", "val",
                     "--out", str(out)]) == 2  # fmt: skip
        assert capsys.readouterr().err == (
            "dfscan: error: split file not found: artifacts/tiny.pt.split.json"
            f" (nor beside the checkpoint {model})\n"
        )
    finally:
        if where == "memory":
            fsspec.filesystem("memory").rm("/ckpts", recursive=True)


def test_a_split_uri_or_absolute_path_is_tried_as_recorded_first() -> None:
    assert split_candidates("s3://b/m.pt.split.json", "s3://b/m.pt") == ["s3://b/m.pt.split.json"]
    assert split_candidates("/old/m.pt.split.json", "/new/c.pt") == [
        "/old/m.pt.split.json",
        "/new/m.pt.split.json",
        "/new/c.pt.split.json",
    ]
    assert split_candidates("a/m.pt.split.json", "s3://b/m.pt") == [
        "s3://b/m.pt.split.json",
        "a/m.pt.split.json",
    ]
    assert split_candidates("a/m.pt.split.json", None) == ["a/m.pt.split.json"]
