"""``dfscan train``: fit a face classifier on labelled faces, one recipe for every engine.

The split is by source video (a fake and the real video it was made from always land on
the same side), because DFDC fakes share identity, background and lighting with their
original: a random per-image split lets a model score well by remembering faces, which
is memory, not detection. The split is written beside the checkpoint so anyone can
re-evaluate on exactly the same held-out images (``dfscan eval --split val``); a data
set built by ``dfscan dataset build`` carries its own saved split, which is reused.

``fit`` is the one training loop: ``train`` runs it in this process, ``dfscan tune``
runs it once per Ray Tune trial (reporting each epoch), ``--workers N`` runs it on N Ray
Train workers with DistributedDataParallel. The defaults are sized for ``make demo`` on
a 2-core CPU; ``--max-minutes`` ends training early on a slower machine but still
evaluates and saves. torch is imported inside functions so ``dfscan --help`` starts fast.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipelines.config import ConfigError, shared_dir
from pipelines.labelled_data import LabelRow, read_labels

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pipelines.labelled_data import FaceSet, LabelledFace

__all__ = ["LabelRow", "read_labels"]  # re-exported: the labels.csv reader lives in labelled_data

MOBILENET_IMAGENET = "models/imagenet/mobilenet_v2-b0353104.pth"
DEFAULT_AUGMENT = ("hflip", "color")
SBI_MODES = ("off", "mix", "only")


@dataclass(frozen=True)
class Recipe:
    """Per-architecture training defaults; each number carries its reason."""

    image_size: int
    epochs: int
    batch_size: int
    lr: float


RECIPES: dict[str, Recipe] = {
    # Fine-tuned from ImageNet at 160 px: a train step costs ~12 ms/img on 2 CPU cores
    # (channels_last) vs ~26 at 192 and ~70 at 224, so an epoch of the DFDC crops takes
    # ~19 s; more epochs at 160 beat fewer at 192 on source-split val AUC. 12 epochs
    # (~4.5 min) reached val AUC 0.863 where 8 reached 0.809 (same split and seed);
    # SBI or re-encoding augmentations cost val AUC at this budget (0.77-0.79 at 8).
    "mobilenet_v2": Recipe(image_size=160, epochs=12, batch_size=32, lr=1e-3),
    # No ImageNet weights ship for these two: native sizes, longer schedules, for GPUs.
    "resnet18": Recipe(image_size=224, epochs=20, batch_size=64, lr=1e-3),
    "xception": Recipe(image_size=299, epochs=20, batch_size=32, lr=5e-4),
}


# ---------------------------------------------------------------- schedules
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


def cosine_lr(progress: float, peak: float) -> float:
    """A 3% warm-up (AdamW's first steps are noisy), then cosine from peak to ~0:
    more time near the peak than one-cycle, for long runs from a good start."""
    warm = 0.03
    p = min(max(progress, 0.0), 1.0)
    if p < warm:
        return peak * (0.1 + 0.9 * p / warm)
    t = (p - warm) / (1.0 - warm)
    return peak * (1e-4 + (1.0 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * t)))


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "onecycle": one_cycle_lr,
    "cosine": cosine_lr,
}


# ---------------------------------------------------------------- configuration
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
    head_hidden: int = 0  # 0: linear head; N: one hidden layer (ReLU, batch-norm, dropout)
    dropout: float | None = None  # on the pooled conv output; None: the arch's default
    schedule: str = "onecycle"
    patience: int = 0  # early stopping: epochs without a better val AUC; 0 = off
    augment: tuple[str, ...] = DEFAULT_AUGMENT
    sbi: str = "off"  # self-blended fakes: off | mix (with the data's fakes) | only (reals)
    sbi_prob: float = 0.5  # chance a real training face becomes a self-blended fake
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA only; CPU trains in float32
    deterministic: bool = False  # also force deterministic kernels (slower on GPU)
    warehouse: str | None = None  # record the run in training_runs; None: not recorded
    workers: int = 0  # >0: Ray Train data-parallel over this many workers
    run_id: str = ""

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["data"] = str(self.data)
        d.pop("warehouse", None)  # a URL may carry a password: never recorded
        return json.dumps(d, sort_keys=True)


def register(subparsers: Any) -> None:
    """Add ``train`` to the dfscan CLI."""
    p = subparsers.add_parser(
        "train",
        help="train a deepfake face classifier",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_train_arguments(p)
    p.add_argument("--out", required=True, help="checkpoint path or fsspec URI")
    p.add_argument("--epochs", type=int, default=None, help="default: the arch's recipe")
    p.add_argument("--batch-size", type=int, default=None, help="default: the arch's recipe")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW, on weights only")
    p.add_argument("--dropout", type=float, default=None, help="default: the arch's")
    p.add_argument("--head-hidden", type=int, default=0, help="hidden-layer head width; 0=linear")
    p.add_argument("--schedule", default="onecycle", choices=sorted(SCHEDULES))
    p.add_argument("--workers", type=int, default=0, help="Ray Train data-parallel workers")
    p.set_defaults(func=run)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Flags ``train`` and ``tune`` share (tune searches over the others)."""
    from pipelines.cli import warehouse_arg

    p.add_argument(
        "--data",
        required=True,
        help="labels.csv crops folder, `dfscan dataset build` output, or FAKE/ REAL/ videos",
    )
    p.add_argument("--arch", default="mobilenet_v2", choices=sorted(RECIPES))
    p.add_argument(
        "--pretrained",
        default=None,
        help="ImageNet state dict to start from (default: shared MobileNetV2 file for "
        "mobilenet_v2, none otherwise); 'none' forces random init",
    )
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--image-size", type=int, default=None, help="default: the arch's recipe")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=5.0,
        help="stop training after this wall time (still evaluates and saves)",
    )
    p.add_argument("--limit", type=int, default=None, help="use at most N images (tests)")
    p.add_argument("--num-threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.add_argument(
        "--augment",
        default=",".join(DEFAULT_AUGMENT),
        help="comma list of hflip,rotate_scale,perspective,color,downscale,jpeg,blur,erase"
        f" | all | none (default: {','.join(DEFAULT_AUGMENT)})",
    )
    p.add_argument(
        "--sbi",
        nargs="?",
        const="mix",
        default="off",
        choices=SBI_MODES,
        help="self-blended fakes from real faces: mix (default when given) or only",
    )
    p.add_argument("--sbi-prob", type=float, default=0.5, help="chance a real becomes an SBI fake")
    p.add_argument("--patience", type=int, default=0, help="early stop after N epochs w/o gain")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels too")
    p.add_argument(
        "--warehouse",
        type=warehouse_arg,
        help="record the run in this warehouse's training_runs",
    )
    p.add_argument("--run-id", help="id of this run (default: time + random)")


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Validate CLI values once, with one-line errors, before anything heavy starts."""
    from pipelines.augment import parse_augment
    from pipelines.cli import new_run_id

    if args.arch not in RECIPES:
        raise ConfigError(f"unknown --arch {args.arch!r}: choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[args.arch]
    data = Path(args.data)
    if not data.is_dir():
        raise ConfigError(f"--data {data} is not a folder")
    pretrained = args.pretrained
    if pretrained is None:
        default = shared_dir() / MOBILENET_IMAGENET
        pretrained = str(default) if args.arch == "mobilenet_v2" and default.is_file() else None
    elif pretrained.lower() == "none":
        pretrained = None
    try:
        augment = parse_augment(args.augment)
    except ValueError as err:
        raise ConfigError(f"--augment: {err}") from None
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
        head_hidden=args.head_hidden,
        dropout=args.dropout,
        schedule=args.schedule,
        patience=args.patience,
        augment=augment,
        sbi=args.sbi,
        sbi_prob=args.sbi_prob,
        device=args.device,
        amp=not args.no_amp,
        deterministic=args.deterministic,
        warehouse=args.warehouse,
        workers=args.workers,
        run_id=args.run_id or new_run_id(),
    )
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """One-line ConfigErrors for values no run could use (shared by train and tune)."""
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
    if cfg.head_hidden < 0:
        raise ConfigError(f"--head-hidden must be >= 0, got {cfg.head_hidden}")
    if cfg.dropout is not None and not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"unknown --schedule {cfg.schedule!r}: one of {', '.join(SCHEDULES)}")
    if cfg.patience < 0:
        raise ConfigError(f"--patience must be >= 0, got {cfg.patience}")
    if cfg.sbi not in SBI_MODES:
        raise ConfigError(f"unknown --sbi {cfg.sbi!r}: choose one of {', '.join(SBI_MODES)}")
    if not 0.0 < cfg.sbi_prob <= 1.0:
        raise ConfigError(f"--sbi-prob must be in (0, 1], got {cfg.sbi_prob}")
    if cfg.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.workers}")


# ---------------------------------------------------------------- data
G = TypeVar("G")


def limit_rows(rows: list[G], limit: int | None, seed: int) -> list[G]:
    """At most ``limit`` rows, taken whole source groups at a time so pairs stay together."""
    if limit is None or limit >= len(rows):
        return rows
    import numpy as np

    groups: dict[str, list[G]] = {}
    for r in rows:
        groups.setdefault(r.source, []).append(r)  # type: ignore[attr-defined]
    order = np.random.default_rng(seed).permutation(len(groups))
    keys = list(groups)
    picked: list[G] = []
    for i in order:
        g = groups[keys[i]]
        if len(picked) + len(g) > limit:
            continue
        picked.extend(g)
        if len(picked) == limit:
            break
    return picked


def split_by_source(rows: list[G], val_fraction: float, seed: int) -> tuple[list[G], list[G]]:
    """Train/val split by source video with GroupShuffleSplit (see module docstring)."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = [r.source for r in rows]  # type: ignore[attr-defined]
    if len(set(groups)) < 2:
        raise ConfigError("need images from at least two source videos to split train/val")
    gss = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(gss.split(rows, groups=groups))
    return [rows[i] for i in train_idx], [rows[i] for i in val_idx]


@dataclass
class TrainData:
    """Decoded training and validation faces, in memory (~150 MB for DFDC224 at 160 px)."""

    faceset: FaceSet
    train: list[LabelledFace]
    val: list[LabelledFace]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    data_hash: str
    split_how: str


def split_faces(
    faceset: FaceSet, cfg: TrainConfig
) -> tuple[list[LabelledFace], list[LabelledFace], str]:
    """The saved split of a built data set, else a fresh split by source video.

    Both classes must be there to train on (before any image is decoded): a model fitted
    to one class learns a constant, and its val AUC is undefined.
    """
    faces = limit_rows(list(faceset.faces), cfg.limit, cfg.seed)
    limited = f" (after --limit {cfg.limit})" if len(faces) < len(faceset.faces) else ""
    if not _trainable(faces, cfg.sbi):
        need = "both REAL and FAKE faces" if cfg.sbi == "off" else "REAL faces to self-blend"
        raise ConfigError(
            f"training needs {need}: --data {faceset.root} has {_classes(faces)}{limited}"
        )
    if faces and all(f.split for f in faces):
        train = [f for f in faces if f.split == "train"]
        val = [f for f in faces if f.split == "val"]
        if not train or not val:
            raise ConfigError(f"data set {faceset.root} has an empty train or val split")
        how, fix = "the data set's saved split (by source video)", "rebuild it with another --seed"
    else:
        train, val = split_by_source(faces, cfg.val_fraction, cfg.seed)
        how = f"split by source video (seed {cfg.seed}, val {cfg.val_fraction:g})"
        fix = "try another --seed or --val-fraction, or more data"
    if not _trainable(train, cfg.sbi):
        raise ConfigError(f"the train side of the {how} has {_classes(train)}: {fix}")
    if len({f.is_fake for f in val}) < 2:
        # Not fatal (the model can still be fine), but every number that picks or grades
        # it is: val AUC is NaN, and early stopping and the best epoch cannot use it.
        print(
            f"dfscan: warning: the val side of the {how} has {_classes(val)}: val_auc will"
            f" be nan and cannot grade the model or choose its best epoch; {fix}",
            file=sys.stderr,
            flush=True,
        )
    return train, val, how


def _trainable(faces: Sequence[LabelledFace], sbi: str) -> bool:
    """Both classes to fit on: REAL faces, and FAKE ones or self-blended fakes made from them."""
    real = any(not f.is_fake for f in faces)
    return real and (sbi != "off" or any(f.is_fake for f in faces))


def _classes(faces: Sequence[LabelledFace]) -> str:
    """'only REAL faces (12)' / 'no faces' / '3 REAL and 4 FAKE faces'."""
    fake = sum(f.is_fake for f in faces)
    real = len(faces) - fake
    if not faces:
        return "no faces"
    if not fake or not real:
        return f"only {'REAL' if fake == 0 else 'FAKE'} faces ({len(faces)})"
    return f"{real} REAL and {fake} FAKE faces"


def load_data(cfg: TrainConfig, *, write_split: bool = True) -> TrainData:
    """Open, split and decode the faces; write the split beside the checkpoint."""
    import fsspec
    import numpy as np

    from pipelines.labelled_data import open_faces

    faceset = open_faces(cfg.data, size=cfg.image_size)
    train, val, how = split_faces(faceset, cfg)
    split = {
        "data": str(cfg.data),
        "layout": faceset.layout,
        "group": "source video: a fake's original, a real video itself",
        "how": how,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "train": [f.key for f in train],
        "val": [f.key for f in val],
    }
    if cfg.sbi == "only":
        train = [f for f in train if not f.is_fake]  # fakes come from self-blending only
    # Decoded before the split is written: an image that does not decode is a ConfigError
    # that leaves no split file behind for a checkpoint that never comes.
    x_train = faceset.images(train, cfg.image_size)
    x_val = faceset.images(val, cfg.image_size)
    if write_split:
        fs, split_path = fsspec.core.url_to_fs(split_uri(cfg.out))
        parent = split_path.rsplit("/", 1)[0] if "/" in split_path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(split_path, "w") as f:
            json.dump(split, f, indent=1)
    return TrainData(
        faceset=faceset,
        train=train,
        val=val,
        x_train=x_train,
        y_train=np.array([f.is_fake for f in train], dtype=np.float32),
        x_val=x_val,
        y_val=np.array([f.is_fake for f in val], dtype=np.float32),
        data_hash=faceset.data_hash([*train, *val]),
        split_how=how,
    )


def split_uri(out: str) -> str:
    return out + ".split.json"


# ---------------------------------------------------------------- the loop
@dataclass(frozen=True)
class Distributed:
    """Where this copy of the loop runs: rank 0 of 1 unless Ray Train started it."""

    rank: int = 0
    world_size: int = 1

    def share(self, values: Sequence[float]) -> list[float]:
        """Rank 0's values on every rank, so decisions (LR, stop) never diverge."""
        if self.world_size == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64)
        dist.broadcast(t, src=0)
        return [float(v) for v in t.tolist()]


# Called after each epoch with the metrics and the (unwrapped) network: Tune's report.
EpochHook = Callable[[int, dict[str, float], "torch.nn.Module"], None]


@dataclass
class FitResult:
    net: Any  # torch.nn.Module, unwrapped, on CPU, contiguous format
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int = 0


def seed_everything(seed: int, deterministic: bool) -> None:
    """Same seed, same run: Python, numpy and torch RNGs, and optionally the kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def evaluate_net(
    net: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Validation loss, ROC AUC and accuracy at 0.5 on held-out source videos."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    net.eval()
    logits = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(images[s : s + batch_size]).to(device)
            logits.append(net(normalise(x.permute(0, 3, 1, 2).float())).float().reshape(-1))
    z = torch.cat(logits).cpu()
    y = torch.from_numpy(labels)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y).item()
    probs = torch.sigmoid(z).numpy()
    auc = float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")
    acc = float(((probs >= 0.5) == (labels >= 0.5)).mean())
    return {"val_loss": loss, "val_auc": auc, "val_acc": acc}


def fit(
    cfg: TrainConfig,
    data: TrainData,
    *,
    dist: Distributed | None = None,
    on_epoch: EpochHook | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """The training loop every engine runs: AdamW, LR schedule, augmentation, SBI,
    early stopping on val AUC, AMP on CUDA, DDP when ``dist.world_size > 1``."""
    import contextlib

    import numpy as np
    import torch

    from operators.models.scorers import arch_spec, available_cpus, build_network
    from operators.models.torch_backends import resolve_device
    from pipelines.augment import augment_batch

    dist = dist or Distributed()
    started = time.monotonic()
    deadline = started + cfg.max_minutes * 60.0
    seed_everything(cfg.seed, cfg.deterministic)
    torch.set_num_threads(cfg.num_threads or available_cpus())
    device = resolve_device(cfg.device)
    spec = arch_spec(cfg.arch)
    net = build_network(cfg.arch, cfg.pretrained, hidden=cfg.head_hidden, dropout=cfg.dropout)

    scale = (1.0 / (255.0 * torch.tensor(spec.std))).view(1, 3, 1, 1).to(device)
    shift = (-torch.tensor(spec.mean) / torch.tensor(spec.std)).view(1, 3, 1, 1).to(device)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x * scale + shift).contiguous(memory_format=torch.channels_last)

    net = net.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    model: torch.nn.Module = net
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Ray Train gives each worker its own GPU as "cuda" (CUDA_VISIBLE_DEVICES).
        ids = None
        if device.type == "cuda":
            ids = [device.index if device.index is not None else torch.cuda.current_device()]
        model = DistributedDataParallel(net, device_ids=ids)
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
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.float16
    if use_amp and torch.cuda.is_bf16_supported():
        amp_dtype = torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    lr_at = SCHEDULES[cfg.schedule]
    # The global batch is split over the workers, so N workers take the same steps as one.
    local_batch = max(2, cfg.batch_size // dist.world_size)
    # Whole batches only (BatchNorm); the leftover differs each epoch by shuffle.
    steps_per_epoch = max(1, len(data.x_train) // (local_batch * dist.world_size))
    total_steps = cfg.epochs * steps_per_epoch
    sbi_prob = cfg.sbi_prob if cfg.sbi != "off" else 0.0
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)  # same order on every rank

    train_started = time.monotonic()
    reserve = 0.0  # seconds kept back for the last evaluation and the save
    metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    best_auc, best_epoch, best_state = -1.0, 0, None
    stale = 0
    epochs_run = 0.0
    stopped_early = False
    global_step = 0
    step_seconds = 0.0
    for group in opt.param_groups:
        group["lr"] = lr_at(0.0, cfg.lr)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(data.x_train), generator=gen).numpy()
        rng = np.random.default_rng([cfg.seed, epoch, dist.rank])  # augmentation draws
        total, seen, steps = 0.0, 0, 0
        epoch_started = time.monotonic()
        for step in range(steps_per_epoch):
            first = (step * dist.world_size + dist.rank) * local_batch
            idx = np.sort(order[first : first + local_batch])
            if len(idx) < 2:
                break
            images, labels = augment_batch(
                data.x_train[idx], data.y_train[idx], cfg.augment, rng, sbi_prob
            )
            x = torch.from_numpy(images).to(device, non_blocking=True)
            y = torch.from_numpy(labels).to(device)
            x = normalise(x.permute(0, 3, 1, 2).float())
            amp = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
            with amp:
                loss = loss_fn(model(x).float().reshape(-1), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            global_step += 1
            # The schedule follows whichever runs out first, steps or --max-minutes, so a
            # slow machine still ends on an annealed model rather than mid-peak.
            budget = max(deadline - reserve - train_started, 1e-3)
            (time_frac,) = dist.share([(time.monotonic() - train_started) / budget])
            lr = lr_at(max(global_step / total_steps, time_frac), cfg.lr)
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
        step_seconds += eval_started - epoch_started  # augmentation + forward + backward
        metrics = evaluate_net(net, data.x_val, data.y_val, normalise, 2 * local_batch, device)
        metrics["val_auc"], metrics["val_loss"], metrics["val_acc"] = dist.share(
            [metrics["val_auc"], metrics["val_loss"], metrics["val_acc"]]
        )
        # Keep room for one more evaluation plus the save, so --max-minutes bounds the run.
        reserve = 1.5 * (time.monotonic() - eval_started) + 2.0
        metrics["train_loss"] = total / max(seen, 1)
        metrics["epoch"] = float(epoch + 1)
        history.append(dict(metrics))
        log(
            f"epoch {epoch + 1}/{cfg.epochs} train_loss={metrics['train_loss']:.4f} "
            f"val_loss={metrics['val_loss']:.4f} val_auc={metrics['val_auc']:.4f} "
            f"val_acc={metrics['val_acc']:.4f} lr={lr:.2e} "
            f"elapsed={time.monotonic() - started:.0f}s"
        )
        auc = metrics["val_auc"] if not math.isnan(metrics["val_auc"]) else -1.0
        if auc > best_auc:
            best_auc, best_epoch, stale = auc, epoch + 1, 0
            if cfg.patience:
                best_state = copy.deepcopy(net.state_dict())
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(epoch + 1, dict(metrics), net)
        if stopped_early:
            log(f"stopped after {epochs_run:.2f} epochs: --max-minutes {cfg.max_minutes} reached")
            break
        if cfg.patience and stale >= cfg.patience and epoch + 1 < cfg.epochs:
            log(f"early stop: no val AUC gain in {cfg.patience} epochs (best: epoch {best_epoch})")
            stopped_early = True
            break
    if best_state is not None and best_epoch != len(history):
        # Early stopping keeps the best epoch's weights, and reports that epoch's numbers.
        net.load_state_dict(best_state)
        metrics.update({k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")})
    metrics.update(
        epochs_run=float(epochs_run),
        best_epoch=float(best_epoch),
        train_seconds=time.monotonic() - started,
        # Images through the optimiser per second of training steps (validation excluded).
        train_images_per_s=global_step * local_batch * dist.world_size / max(step_seconds, 1e-9),
    )
    net = net.cpu().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return FitResult(net, metrics, history, stopped_early, best_epoch)


# ---------------------------------------------------------------- checkpoint + records
def training_data_text(cfg: TrainConfig, data: TrainData) -> str:
    text = (
        f"{cfg.data} ({data.faceset.layout}): {len(data.train)} train / {len(data.val)} val "
        f"faces, {data.split_how}"
    )
    if cfg.sbi != "off":
        text += f"; self-blended fakes ({cfg.sbi}, p={cfg.sbi_prob:g})"
    if "dfdc" in str(cfg.data).lower():
        text += "; DFDC research-only terms (Deepfake Detection Challenge dataset licence)"
    return text


def checkpoint_meta(cfg: TrainConfig, data: TrainData, result: FitResult) -> Any:
    """The checkpoint's metadata: preprocessing, provenance, and the recipe's switches."""
    from operators.models.checkpoints import CheckpointMeta
    from operators.models.scorers import arch_spec
    from pipelines import code_version

    spec = arch_spec(cfg.arch)
    metrics = dict(result.metrics)
    metrics.update(n_train=float(len(data.train)), n_val=float(len(data.val)))
    return CheckpointMeta(
        arch=cfg.arch,
        input_size=cfg.image_size,
        mean=spec.mean,
        std=spec.std,
        crop_scale=1.3,
        training_data=training_data_text(cfg, data),
        metrics=metrics,
        created_at=time.time(),
        code_version=code_version(),
        extra={
            "head_hidden": str(cfg.head_hidden),
            "dropout": str(cfg.dropout if cfg.dropout is not None else spec.dropout),
            "pretrained": Path(cfg.pretrained).name if cfg.pretrained else "none",
            "split": split_uri(cfg.out),
            "epochs": str(cfg.epochs),
            "stopped_early": str(result.stopped_early).lower(),
            "best_epoch": str(result.best_epoch),
            "lr": str(cfg.lr),
            "schedule": cfg.schedule,
            "weight_decay": str(cfg.weight_decay),
            "batch_size": str(cfg.batch_size),
            "augment": ",".join(cfg.augment) or "none",
            "sbi": cfg.sbi if cfg.sbi == "off" else f"{cfg.sbi}:{cfg.sbi_prob:g}",
            "seed": str(cfg.seed),
            "data_hash": data.data_hash,
            "run_id": cfg.run_id,
        },
    )


def save_model(cfg: TrainConfig, data: TrainData, result: FitResult, uri: str | None = None) -> str:
    from operators.models.checkpoints import save_checkpoint

    return save_checkpoint(
        result.net.state_dict(), checkpoint_meta(cfg, data, result), uri or cfg.out
    )


def record_run(
    url: str | None,
    cfg: TrainConfig,
    *,
    command: str,
    status: str,
    started_at: float,
    data_hash: str = "",
    metrics: dict[str, float] | None = None,
    artifact: str | None = None,
    error: str | None = None,
    parent: str | None = None,
    ended: bool = True,
    ended_at: float | None = None,
) -> None:
    """Upsert the run's ``training_runs`` row (no-op without a warehouse URL)."""
    if not url:
        return
    from operators.write_warehouse import build_warehouse
    from pipelines import code_version
    from schemas.records import TrainingRun

    clean = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in (metrics or {}).items()
    }
    row = TrainingRun(
        run_id=cfg.run_id,
        command=command,
        status=status,
        config=cfg.to_json(),
        data_hash=data_hash,
        code_version=code_version(),
        started_at=started_at,
        ended_at=(ended_at or time.time()) if ended else None,
        metrics=json.dumps(clean, sort_keys=True) if metrics is not None else None,
        artifact_uri=artifact,
        parent_run_id=parent,
        error=error,
    )
    warehouse = build_warehouse(url)
    try:
        warehouse.ensure_schema()
        warehouse.record_training_run(row)
    finally:
        warehouse.close()  # DuckDB: never hold the file while training


def train(cfg: TrainConfig) -> dict[str, float]:
    """Run the whole recipe in this process; return the metrics stored in the checkpoint."""
    if cfg.workers > 0:
        from pipelines.ray_train import train_distributed

        return train_distributed(cfg)
    from operators.models.scorers import build_network

    started_at = time.time()
    # Built first so a wrong --pretrained file fails before minutes of image loading.
    build_network(cfg.arch, cfg.pretrained, hidden=cfg.head_hidden, dropout=cfg.dropout)
    record_run(
        cfg.warehouse, cfg, command="train", status="running", started_at=started_at, ended=False
    )
    data_hash = ""
    try:
        t0 = time.monotonic()
        data = load_data(cfg)
        data_hash = data.data_hash
        print(
            f"data: {len(data.train)} train ({int(data.y_train.sum())} fake) / {len(data.val)} "
            f"val ({int(data.y_val.sum())} fake) at {cfg.image_size}px, {data.split_how}, "
            f"loaded in {time.monotonic() - t0:.1f}s",
            flush=True,
        )
        result = fit(cfg, data, log=lambda s: print(s, flush=True))
        sha = save_model(cfg, data, result)
    except BaseException as exc:
        record_run(
            cfg.warehouse, cfg, command="train", status="failed", started_at=started_at,
            data_hash=data_hash, error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
        raise
    metrics = dict(result.metrics, n_train=float(len(data.train)), n_val=float(len(data.val)))
    record_run(
        cfg.warehouse, cfg, command="train", status="succeeded", started_at=started_at,
        data_hash=data.data_hash, metrics=metrics, artifact=cfg.out,
    )  # fmt: skip
    print(f"wrote {cfg.out} (sha256 {sha[:12]}) and {split_uri(cfg.out)}")
    print(f"val_auc={metrics['val_auc']:.4f} val_acc={metrics['val_acc']:.4f}", flush=True)
    return metrics


def run(args: argparse.Namespace) -> int:
    """CLI entry: bad settings raise ConfigError (the CLI prints its one line)."""
    train(build_config(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``train`` without the full CLI (``python -m pipelines.train ...``)."""
    parser = argparse.ArgumentParser(prog="dfscan")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
