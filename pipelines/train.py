"""``dfscan train``: fit the starter face classifier on labelled face crops.

The split is by source video (a fake and the real video it was made from always land on
the same side), because DFDC fakes share identity, background and lighting with their
original: a random per-image split lets a model score well by remembering faces, which
is memory, not detection. The split is written beside the checkpoint so anyone can
re-evaluate on exactly the same held-out images.

The defaults are sized for ``make demo`` on a 2-core CPU (a few minutes); ``--max-minutes``
is a safety valve that ends training early on a slower machine but still evaluates and
saves. torch is imported inside ``run`` so ``dfscan --help`` starts fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError, shared_dir

if TYPE_CHECKING:
    import numpy as np
    import torch

LABEL_COLUMNS = ("image", "videoname", "label", "original")
MOBILENET_IMAGENET = "models/imagenet/mobilenet_v2-b0353104.pth"


@dataclass(frozen=True)
class Recipe:
    """Per-architecture training defaults; each number carries its reason."""

    image_size: int
    epochs: int
    batch_size: int
    lr: float


RECIPES: dict[str, Recipe] = {
    # Fine-tuned from ImageNet at 160 px: a train step costs ~12 ms/img on 2 CPU cores
    # (channels_last) vs ~26 at 192 and ~70 at 224, so 8 epochs fit in ~3 minutes; more
    # epochs at 160 beat fewer at 192 on source-split val AUC (0.84 vs 0.81 measured).
    "mobilenet_v2": Recipe(image_size=160, epochs=8, batch_size=32, lr=1e-3),
    # No ImageNet weights ship for these two: native sizes, longer schedules, for GPUs.
    "resnet18": Recipe(image_size=224, epochs=20, batch_size=64, lr=1e-3),
    "xception": Recipe(image_size=299, epochs=20, batch_size=32, lr=5e-4),
}


@dataclass(frozen=True)
class LabelRow:
    image: str  # path relative to the data folder, as in labels.csv
    videoname: str
    label: str  # REAL / FAKE
    original: str  # for fakes, the real video it was made from

    @property
    def is_fake(self) -> bool:
        return self.label == "FAKE"

    @property
    def source(self) -> str:
        """The split group: a fake goes with its original, a real video is its own source."""
        return self.original if self.is_fake and self.original else self.videoname


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    arch: str
    pretrained: str | None
    out: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    image_size: int
    val_fraction: float
    seed: int
    max_minutes: float
    limit: int | None
    num_threads: int


def register(subparsers: Any) -> None:
    """Add ``train`` to the dfscan CLI."""
    p = subparsers.add_parser(
        "train",
        help="train the starter deepfake face classifier",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--data", required=True, help="folder with labels.csv and the face images")
    p.add_argument("--arch", default="mobilenet_v2", choices=sorted(RECIPES))
    p.add_argument(
        "--pretrained",
        default=None,
        help="ImageNet state dict to start from (default: shared MobileNetV2 file for "
        "mobilenet_v2, none otherwise); 'none' forces random init",
    )
    p.add_argument("--out", required=True, help="checkpoint path or fsspec URI")
    p.add_argument("--epochs", type=int, default=None, help="default: the arch's recipe")
    p.add_argument("--batch-size", type=int, default=None, help="default: the arch's recipe")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--image-size", type=int, default=None, help="default: the arch's recipe")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=4.0,
        help="stop training after this wall time (still evaluates and saves)",
    )
    p.add_argument("--limit", type=int, default=None, help="use at most N images (tests)")
    p.add_argument("--num-threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Validate CLI values once, with one-line errors, before anything heavy starts."""
    if args.arch not in RECIPES:
        raise ConfigError(f"unknown --arch {args.arch!r}: choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[args.arch]
    data = Path(args.data)
    if not (data / "labels.csv").is_file():
        raise ConfigError(f"--data {data} has no labels.csv")
    pretrained = args.pretrained
    if pretrained is None:
        default = shared_dir() / MOBILENET_IMAGENET
        pretrained = str(default) if args.arch == "mobilenet_v2" and default.is_file() else None
    elif pretrained.lower() == "none":
        pretrained = None
    cfg = TrainConfig(
        data=data,
        arch=args.arch,
        pretrained=pretrained,
        out=args.out,
        epochs=recipe.epochs if args.epochs is None else args.epochs,
        batch_size=recipe.batch_size if args.batch_size is None else args.batch_size,
        lr=recipe.lr if args.lr is None else args.lr,
        weight_decay=args.weight_decay,
        image_size=recipe.image_size if args.image_size is None else args.image_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_minutes=args.max_minutes,
        limit=args.limit,
        num_threads=args.num_threads,
    )
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 2:
        raise ConfigError(f"--batch-size must be >= 2 (BatchNorm), got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    if not 32 <= cfg.image_size <= 1024:
        raise ConfigError(f"--image-size must be in [32, 1024], got {cfg.image_size}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    if not cfg.max_minutes > 0:
        raise ConfigError(f"--max-minutes must be > 0, got {cfg.max_minutes}")
    if cfg.limit is not None and cfg.limit < 8:
        raise ConfigError(
            f"--limit must be >= 8 so both sides of the split get images, got {cfg.limit}"
        )
    if cfg.num_threads < 0:
        raise ConfigError(f"--num-threads must be >= 0, got {cfg.num_threads}")
    return cfg


def read_labels(data: Path) -> list[LabelRow]:
    """Rows of ``labels.csv``; a missing column or unknown label is a one-line ConfigError."""
    path = data / "labels.csv"
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(LABEL_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
        rows = [LabelRow(*(str(r[c] or "").strip() for c in LABEL_COLUMNS)) for r in reader]
    bad = sorted({r.label for r in rows} - {"REAL", "FAKE"})
    if bad:
        raise ConfigError(f"{path} has labels {bad}; expected REAL or FAKE")
    if not rows:
        raise ConfigError(f"{path} has no rows")
    return rows


def limit_rows(rows: list[LabelRow], limit: int | None, seed: int) -> list[LabelRow]:
    """At most ``limit`` rows, taken whole source groups at a time so pairs stay together."""
    if limit is None or limit >= len(rows):
        return rows
    import numpy as np

    groups: dict[str, list[LabelRow]] = {}
    for r in rows:
        groups.setdefault(r.source, []).append(r)
    order = np.random.default_rng(seed).permutation(len(groups))
    keys = list(groups)
    picked: list[LabelRow] = []
    for i in order:
        g = groups[keys[i]]
        if len(picked) + len(g) > limit:
            continue
        picked.extend(g)
        if len(picked) == limit:
            break
    return picked


def split_by_source(
    rows: list[LabelRow], val_fraction: float, seed: int
) -> tuple[list[LabelRow], list[LabelRow]]:
    """Train/val split by source video with GroupShuffleSplit (see module docstring)."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = [r.source for r in rows]
    if len(set(groups)) < 2:
        raise ConfigError("need images from at least two source videos to split train/val")
    gss = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(gss.split(rows, groups=groups))
    return [rows[i] for i in train_idx], [rows[i] for i in val_idx]


def load_images(data: Path, rows: list[LabelRow], size: int) -> np.ndarray:
    """All crops as uint8 RGB (N, size, size, 3) in memory: ~150 MB for DFDC224 at 160 px.

    Goes through ``decode_crops`` so training sees the same pixels a scan feeds the model.
    """
    from operators.score_faces import decode_crops

    jpegs = []
    for r in rows:
        path = data / r.image
        try:
            jpegs.append(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"image listed in labels.csv is missing: {path}") from None
    return decode_crops(jpegs, size)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light, label-preserving changes: horizontal flip and +-10% brightness/contrast.

    Stronger colour or blur augmentation would also erase the blending artefacts the
    model is supposed to find.
    """
    import torch

    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    brightness = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean * brightness
    return x.clamp_(0.0, 255.0)


def one_cycle_lr(progress: float, peak: float) -> float:
    """Linear warm-up over the first 15% from peak/25, then cosine down to ~peak/1e4.

    Written as a function of progress in [0, 1] (not a step counter) so that progress can
    also be wall time when --max-minutes binds.
    """
    warm = 0.15
    p = min(max(progress, 0.0), 1.0)
    if p < warm:
        return peak * (0.04 + 0.96 * p / warm)
    t = (p - warm) / (1.0 - warm)
    return peak * (1e-4 + (1.0 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * t)))


def _evaluate(
    net: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    normalise: Any,
    batch_size: int,
) -> dict[str, float]:
    """Validation loss, ROC AUC and accuracy at 0.5 on held-out source videos."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    net.eval()
    logits = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(images[s : s + batch_size]).permute(0, 3, 1, 2).float()
            logits.append(net(normalise(x)).reshape(-1))
    z = torch.cat(logits)
    y = torch.from_numpy(labels)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y).item()
    probs = torch.sigmoid(z).numpy()
    auc = float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")
    acc = float(((probs >= 0.5) == (labels >= 0.5)).mean())
    return {"val_loss": loss, "val_auc": auc, "val_acc": acc}


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"dfscan {version('dfscan')}"
    except PackageNotFoundError:
        return "dfscan (not installed)"


def _training_data(cfg: TrainConfig, n_train: int, n_val: int) -> str:
    text = (
        f"{cfg.data} labels.csv: {n_train} train / {n_val} val face crops, "
        f"split by source video (seed {cfg.seed})"
    )
    if "dfdc" in str(cfg.data).lower():
        text += "; DFDC research-only terms (Deepfake Detection Challenge dataset licence)"
    return text


def train(cfg: TrainConfig) -> dict[str, float]:
    """Run the whole recipe; return the validation metrics stored in the checkpoint."""
    import fsspec
    import numpy as np
    import torch

    from operators.models.checkpoints import CheckpointMeta, save_checkpoint
    from operators.models.scorers import arch_spec, available_cpus, build_network

    started = time.monotonic()
    deadline = started + cfg.max_minutes * 60.0
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads or available_cpus())

    spec = arch_spec(cfg.arch)
    # Built first so a wrong --pretrained file fails before minutes of image loading.
    net = build_network(cfg.arch, cfg.pretrained)
    rows = limit_rows(read_labels(cfg.data), cfg.limit, cfg.seed)
    train_rows, val_rows = split_by_source(rows, cfg.val_fraction, cfg.seed)
    split_uri = cfg.out + ".split.json"
    split = {
        "data": str(cfg.data),
        "group": "original for FAKE, videoname for REAL",
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "train": [r.image for r in train_rows],
        "val": [r.image for r in val_rows],
    }
    fs, split_path = fsspec.core.url_to_fs(split_uri)
    parent = split_path.rsplit("/", 1)[0] if "/" in split_path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(split_path, "w") as f:
        json.dump(split, f, indent=1)

    x_train = load_images(cfg.data, train_rows, cfg.image_size)
    x_val = load_images(cfg.data, val_rows, cfg.image_size)
    y_train = np.array([r.is_fake for r in train_rows], dtype=np.float32)
    y_val = np.array([r.is_fake for r in val_rows], dtype=np.float32)
    print(
        f"data: {len(train_rows)} train ({int(y_train.sum())} fake) / {len(val_rows)} val "
        f"({int(y_val.sum())} fake) at {cfg.image_size}px, loaded in "
        f"{time.monotonic() - started:.1f}s",
        flush=True,
    )

    scale = (1.0 / (255.0 * torch.tensor(spec.std))).view(1, 3, 1, 1)
    shift = (-torch.tensor(spec.mean) / torch.tensor(spec.std)).view(1, 3, 1, 1)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x * scale + shift).contiguous(memory_format=torch.channels_last)

    net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # No weight decay on norms and biases: decaying BN scales only fights the normalisation.
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    # Whole batches only (BatchNorm); the <batch_size leftover differs each epoch by shuffle.
    steps_per_epoch = max(1, len(x_train) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    train_started = time.monotonic()
    reserve = 0.0  # seconds kept back for the last evaluation and the save
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    y_train_t = torch.from_numpy(y_train)

    metrics: dict[str, float] = {}
    epochs_run = 0.0
    stopped_early = False
    global_step = 0
    for group in opt.param_groups:
        group["lr"] = one_cycle_lr(0.0, cfg.lr)
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=gen)
        total, seen, steps = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if len(idx) < 2:
                break
            x = torch.from_numpy(x_train[idx.numpy()]).permute(0, 3, 1, 2).float()
            x = normalise(_augment(x, gen))
            y = y_train_t[idx]
            loss = loss_fn(net(x).reshape(-1), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            global_step += 1
            # The schedule follows whichever runs out first, steps or --max-minutes, so a
            # slow machine still ends on an annealed model rather than mid-peak.
            budget = max(deadline - reserve - train_started, 1e-3)
            time_frac = (time.monotonic() - train_started) / budget
            lr = one_cycle_lr(max(global_step / total_steps, time_frac), cfg.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            total += loss.item() * len(idx)
            seen += len(idx)
            steps += 1
            if time_frac >= 1.0 and global_step < total_steps:
                stopped_early = True
                break
        epochs_run = epoch + steps / steps_per_epoch
        eval_started = time.monotonic()
        metrics = _evaluate(net, x_val, y_val, normalise, 2 * cfg.batch_size)
        # Keep room for one more evaluation plus the save, so --max-minutes bounds the run.
        reserve = 1.5 * (time.monotonic() - eval_started) + 2.0
        metrics["train_loss"] = total / max(seen, 1)
        print(
            f"epoch {epoch + 1}/{cfg.epochs} train_loss={metrics['train_loss']:.4f} "
            f"val_loss={metrics['val_loss']:.4f} val_auc={metrics['val_auc']:.4f} "
            f"val_acc={metrics['val_acc']:.4f} elapsed={time.monotonic() - started:.0f}s",
            flush=True,
        )
        if stopped_early:
            print(f"stopped after {epochs_run:.2f} epochs: --max-minutes {cfg.max_minutes} reached")
            break

    metrics.update(
        epochs_run=float(epochs_run),
        n_train=float(len(train_rows)),
        n_val=float(len(val_rows)),
        train_seconds=time.monotonic() - started,
    )
    meta = CheckpointMeta(
        arch=cfg.arch,
        input_size=cfg.image_size,
        mean=spec.mean,
        std=spec.std,
        crop_scale=1.3,
        training_data=_training_data(cfg, len(train_rows), len(val_rows)),
        metrics=metrics,
        created_at=time.time(),
        code_version=_code_version(),
        extra={
            "head_hidden": "0",
            "pretrained": Path(cfg.pretrained).name if cfg.pretrained else "none",
            "split": split_uri,
            "epochs": str(cfg.epochs),
            "stopped_early": str(stopped_early).lower(),
            "lr": str(cfg.lr),
            "batch_size": str(cfg.batch_size),
            "seed": str(cfg.seed),
        },
    )
    net = net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    sha = save_checkpoint(net.state_dict(), meta, cfg.out)
    print(f"wrote {cfg.out} (sha256 {sha[:12]}) and {split_uri}")
    auc = metrics["val_auc"]
    print(f"val_auc={auc:.4f} val_acc={metrics['val_acc']:.4f}", flush=True)
    return metrics


def run(args: argparse.Namespace) -> int:
    """CLI entry: bad settings raise ConfigError (the CLI prints its one line)."""
    cfg = build_config(args)
    train(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``train`` without the full CLI (``python -m pipelines.train ...``)."""
    parser = argparse.ArgumentParser(prog="dfscan")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
