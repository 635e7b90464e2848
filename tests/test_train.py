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
from pipelines.cli import main
from pipelines.config import ConfigError, shared_dir
from pipelines.labelled_data import LabelledFace
from tests.conftest import CropRow, CropsFolder

DATA = shared_dir() / "data" / "faces" / "dfdc224"
MOBILENET = shared_dir() / train.MOBILENET_IMAGENET


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


class _NotATensor:
    """Any class outside torch's weights-only allow-list."""


def test_unreadable_pretrained_weights_are_one_clear_line_without_torchs_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    pickled = tmp_path / "pickled.pth"
    torch.save({"features.0.weight": _NotATensor()}, pickled)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(MOBILENET.read_bytes()[:4096])
    for path, reason in [
        (pickled, f"holds a pickled {__name__}._NotATensor, not only tensors"),
        (cut, "file ends early"),  # torchvision's file is torch's legacy (non-zip) format
    ]:
        argv = ["train", "--data", str(DATA), "--out", str(tmp_path / "x.pt"), "--pretrained"]
        assert main([*argv, str(path)]) == 2
        assert capsys.readouterr().err == (
            f"dfscan: error: pretrained weights {path} cannot be read: not a torch state dict"
            f" ({reason})\n"
        )


def test_data_folder_without_labels_is_a_config_error(tmp_path: Path) -> None:
    args = _args("--data", str(tmp_path), "--out", str(tmp_path / "x.pt"))
    with pytest.raises(ConfigError, match="has no labels.csv"):
        args.func(args)


# Four real videos, a fake made from r1: groups r1 (both classes), r2, r3, r4 (REAL).
PAIR_AND_REALS: list[CropRow] = [
    *((f"r{i}", "REAL", "") for i in range(1, 5)),
    ("f1", "FAKE", "r1"),
]
QUICK = ("--pretrained", "none", "--epochs", "1", "--batch-size", "2", "--image-size", "32",
         "--num-threads", "1", "--max-minutes", "0.2")  # fmt: skip


def test_undecodable_image_is_one_line_naming_the_file_and_leaves_nothing_behind(
    crops_folder: CropsFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = crops_folder([*PAIR_AND_REALS, ("bad", "REAL", "")], images={"bad": b"\xff" * 8})
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(data), "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # a warning about this tiny split may come first
    assert last == f"dfscan: error: image {data / 'bad.jpg'} is not a decodable JPEG (8 bytes)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops"]  # no model, no split


@pytest.mark.parametrize(
    ("rows", "flags", "message"),
    [
        (PAIR_AND_REALS[:4], (), "training needs both REAL and FAKE faces: --data {data} has"
         " only REAL faces (4)"),
        ([("f1", "FAKE", "r1"), ("f2", "FAKE", "r2")], ("--sbi",), "training needs REAL faces"
         " to self-blend: --data {data} has only FAKE faces (2)"),
    ],
)  # fmt: skip
def test_data_of_one_class_is_refused_before_training(
    rows: list[CropRow],
    flags: tuple[str, ...],
    message: str,
    crops_folder: CropsFolder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_fit(*a: object, **k: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(train, "fit", no_fit)
    data = crops_folder(rows)
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(data), "--out", str(out), *QUICK, *flags]) == 2
    assert capsys.readouterr().err == f"dfscan: error: {message.format(data=data)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops"]  # no model, no split


def test_a_split_side_with_one_class_fails_for_train_and_warns_for_val(
    crops_folder: CropsFolder, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.labelled_data import open_faces

    data = crops_folder(PAIR_AND_REALS)
    faceset = open_faces(data)

    def split(seed: int, *flags: str) -> tuple[list[LabelledFace], list[LabelledFace], str]:
        args = _args("--data", str(data), "--out", "x.pt", "--val-fraction", "0.25",
                     "--seed", str(seed), *flags)  # fmt: skip
        return train.split_faces(faceset, train.build_config(args))

    # Seed 0 holds out r3 alone: val has no fake, so val AUC cannot be computed.
    tr, va, how = split(0)
    assert [f.key for f in va] == ["r3.jpg"] and any(f.is_fake for f in tr)
    err = capsys.readouterr().err
    assert err.startswith(
        f"dfscan: warning: the val side of the {how} has only REAL faces (1): val_auc will be nan"
    )
    assert err.count("\n") == 1
    # Seed 4 holds out the pair: train has no fake to learn from.
    with pytest.raises(ConfigError, match=r"the train side of .* has only REAL faces \(3\)"):
        split(4)
    # ... unless fakes are self-blended from its reals.
    tr, _, _ = split(4, "--sbi", "only")
    assert len(tr) == 3


def test_learning_rate_warms_up_then_anneals_to_near_zero() -> None:
    peak = 1e-3
    assert train.one_cycle_lr(0.0, peak) == pytest.approx(peak / 25)
    assert train.one_cycle_lr(0.15, peak) == pytest.approx(peak)
    assert train.one_cycle_lr(1.0, peak) == pytest.approx(peak * 1e-4)
    assert train.one_cycle_lr(5.0, peak) == train.one_cycle_lr(1.0, peak)  # past the budget
    after = [train.one_cycle_lr(p / 20, peak) for p in range(3, 21)]
    assert after == sorted(after, reverse=True)


# ---------------------------------------------------------------- recipes
def _face(size: int = 96) -> np.ndarray:
    import cv2

    img = cv2.imread(str(DATA / "faces_224" / "tkrworlkkq.jpg"))
    return cv2.cvtColor(cv2.resize(img, (size, size)), cv2.COLOR_BGR2RGB)


def test_augment_flag_parses_names_in_registry_order_and_rejects_typos(tmp_path: Path) -> None:
    from pipelines.augment import AUGMENTATIONS, parse_augment

    assert parse_augment("jpeg,hflip") == ("hflip", "jpeg")
    assert parse_augment("all") == tuple(AUGMENTATIONS)
    assert parse_augment("none") == ()
    args = _args("--data", str(DATA), "--out", str(tmp_path / "x.pt"), "--augment", "hflip,jpg")
    with pytest.raises(ConfigError, match="unknown augmentation.*jpg"):
        args.func(args)


@pytest.mark.parametrize(
    "name", ["hflip", "rotate_scale", "perspective", "color", "downscale", "jpeg", "blur", "erase"]
)
def test_each_augmentation_changes_the_face_but_keeps_shape_and_dtype(name: str) -> None:
    from pipelines.augment import AUGMENTATIONS

    img = _face()
    out = AUGMENTATIONS[name].fn(img, np.random.default_rng(3))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).mean() > 0.1


def test_self_blend_draws_a_blending_boundary_around_the_face_region() -> None:
    from pipelines.augment import face_mask, self_blend

    mask = face_mask(96, 96, np.random.default_rng(0))[..., 0]
    assert mask[48, 48] > 0.9 and max(mask[0, 0], mask[0, -1], mask[-1, 0], mask[-1, -1]) < 0.05
    # A flat image has no boundary anywhere; its self-blend has one: the blended face
    # region (source) no longer matches the surround (target), whichever was perturbed.
    flat = np.full((96, 96, 3), 128, dtype=np.uint8)
    for seed in range(8):
        out = self_blend(flat, np.random.default_rng(seed)).astype(float)
        assert out.shape == flat.shape
        centre, corner = out[40:56, 40:56].mean(axis=(0, 1)), out[:8, :8].mean(axis=(0, 1))
        assert np.abs(centre - corner).max() > 1.0, seed
        assert out[:8, :8].std(axis=(0, 1)).max() < 1.0  # the surround itself stays flat
    face = _face()
    assert not np.array_equal(self_blend(face, np.random.default_rng(0)), face)


def test_sbi_turns_chosen_reals_into_fakes_and_never_relabels_a_fake() -> None:
    from pipelines.augment import augment_batch

    x = np.stack([_face(64)] * 6)
    y = np.array([0, 0, 0, 1, 1, 1], dtype=np.float32)
    out, labels = augment_batch(x, y, (), np.random.default_rng(0), sbi_prob=1.0)
    assert labels.tolist() == [1.0] * 6
    assert all(not np.array_equal(out[i], x[i]) for i in range(3))  # reals were blended
    assert all(np.array_equal(out[i], x[i]) for i in range(3, 6))  # fakes untouched
    _, labels = augment_batch(x, y, (), np.random.default_rng(0), sbi_prob=0.0)
    assert labels.tolist() == y.tolist()


def _tiny(tmp_path: Path, name: str, *flags: str) -> Path:
    out = tmp_path / f"{name}.pt"
    args = _args(
        "--data", str(DATA), "--out", str(out), "--limit", "32", "--epochs", "2",
        "--batch-size", "8", "--image-size", "48", "--num-threads", "1", *flags,
    )  # fmt: skip
    assert args.func(args) == 0
    return out


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path: Path) -> None:
    flags = ("--augment", "all", "--sbi")
    a = load_checkpoint(str(_tiny(tmp_path, "a", *flags))).state_dict
    b = load_checkpoint(str(_tiny(tmp_path, "b", *flags))).state_dict
    c = load_checkpoint(str(_tiny(tmp_path, "c", *flags, "--seed", "1"))).state_dict
    assert all(bool((a[k] == b[k]).all()) for k in a)
    assert any(not bool((a[k] == c[k]).all()) for k in a if a[k].is_floating_point())


def test_hidden_layer_head_and_dropout_are_saved_and_rebuilt_by_the_scorer(tmp_path: Path) -> None:
    out = _tiny(tmp_path, "hidden", "--head-hidden", "32", "--dropout", "0.3",
                "--schedule", "cosine", "--arch", "resnet18")  # fmt: skip
    meta = load_checkpoint(str(out)).meta
    assert meta.extra["head_hidden"] == "32" and meta.extra["dropout"] == "0.3"
    assert meta.extra["schedule"] == "cosine"
    scorer = build_scorer(str(out), device="cpu", backend="torch")
    head = scorer.runtime.module.net.fc  # type: ignore[attr-defined]
    assert [type(m).__name__ for m in head] == [
        "Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"
    ]  # fmt: skip
    assert head[1].out_features == 32  # dropout is inert at inference: not checked
    probs = scorer.predict(decode_crops([(DATA / "faces_224" / "tkrworlkkq.jpg").read_bytes()], 48))
    assert probs.shape == (1,)


def test_sbi_only_trains_on_reals_and_says_so_in_the_checkpoint(tmp_path: Path) -> None:
    out = _tiny(tmp_path, "sbi", "--sbi", "only")
    meta = load_checkpoint(str(out)).meta
    split = json.loads(Path(meta.extra["split"]).read_text())
    labels = {r.image: r.label for r in train.read_labels(DATA)}
    reals = sum(labels[k] == "REAL" for k in split["train"])
    assert meta.metrics["n_train"] == reals < len(split["train"])
    assert "self-blended fakes (only" in meta.training_data
    assert meta.extra["sbi"] == "only:0.5"


def test_early_stopping_keeps_the_best_epoch_by_val_auc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aucs = iter([0.7, 0.6, 0.65, 0.9, 0.9])

    def fake_eval(*a: object, **k: object) -> dict[str, float]:
        return {"val_auc": next(aucs), "val_loss": 0.5, "val_acc": 0.5}

    monkeypatch.setattr(train, "evaluate_net", fake_eval)
    out = _tiny(tmp_path, "early", "--epochs", "5", "--patience", "2")
    meta = load_checkpoint(str(out)).meta
    assert meta.extra["best_epoch"] == "1" and meta.extra["stopped_early"] == "true"
    assert meta.metrics["val_auc"] == 0.7 and meta.metrics["epochs_run"] == pytest.approx(3.0)


def test_cosine_schedule_warms_up_briefly_then_anneals() -> None:
    peak = 1e-3
    assert train.cosine_lr(0.0, peak) == pytest.approx(peak / 10)
    assert train.cosine_lr(0.03, peak) == pytest.approx(peak)
    assert train.cosine_lr(1.0, peak) == pytest.approx(peak * 1e-4)
    # More of the run near the peak than one-cycle's long warm-up.
    assert train.cosine_lr(0.1, peak) > train.one_cycle_lr(0.1, peak)
