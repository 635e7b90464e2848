"""``dfscan tune``: random search over the training recipe with Ray Tune and ASHA.

Each trial is one ``fit`` (the trainer's own loop) with sampled batch size, epochs,
dropout, weight decay, LR schedule and the hidden-layer head switch, reporting val AUC
after every epoch. ASHA stops trials that trail their peers at the same epoch, so a
budget of N trials costs far less than N full runs. The faces are decoded once on the
driver and shared with every trial through Ray's object store, and every trial sees the
same split by source video (written once, as ``best.pt.split.json``), so trials differ
only in their recipe.

Trials take fractional CPUs (``--cpus-per-trial``; 2 trials on 2 cores at 1.0 each,
torch threads = the trial's share). A trial that crashes is retried ``--max-failures``
times. The best checkpoint over all trials and epochs is copied to ``OUT/best.pt``; the
trials table is printed and, with ``--warehouse``, every trial is recorded as a
``tune-trial`` row under the ``tune`` run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError
from pipelines.train import SCHEDULES, TrainConfig, add_train_arguments

if TYPE_CHECKING:
    import torch

    from pipelines.train import TrainData

SEARCHED = ("batch_size", "epochs", "dropout", "weight_decay", "schedule", "head_hidden")


@dataclass(frozen=True)
class SearchSpace:
    """The random search's ranges; each one a reason."""

    batch_sizes: tuple[int, ...] = (16, 32, 64)  # small batches regularise; 64 is GPU-sized
    epochs: tuple[int, int] = (2, 8)  # inclusive; 8 is the starter recipe
    dropout: tuple[float, float] = (0.0, 0.5)  # uniform; 0.5 is the classic head dropout
    weight_decay: tuple[float, float] = (1e-4, 0.1)  # log-uniform around AdamW's 0.01-0.05
    schedules: tuple[str, ...] = tuple(sorted(SCHEDULES))
    head_hidden: tuple[int, ...] = (0, 256)  # linear head, or one hidden layer of 256

    def param_space(self) -> dict[str, Any]:
        from ray import tune

        return {
            "batch_size": tune.choice(list(self.batch_sizes)),
            "epochs": tune.randint(self.epochs[0], self.epochs[1] + 1),
            "dropout": tune.uniform(*self.dropout),
            "weight_decay": tune.loguniform(*self.weight_decay),
            "schedule": tune.choice(list(self.schedules)),
            "head_hidden": tune.choice(list(self.head_hidden)),
        }


@dataclass(frozen=True)
class TuneConfig:
    base: TrainConfig  # the recipe trials start from; SEARCHED fields are sampled
    out: str  # folder: best.pt, best.pt.split.json, trials.json, ray_results/
    trials: int = 8
    cpus_per_trial: float = 1.0
    max_failures: int = 1
    grace_epochs: int = 1  # ASHA: every trial runs at least this many epochs
    space: SearchSpace = SearchSpace()
    ray_address: str | None = None


def _trial_config(base: TrainConfig, params: dict[str, Any], trial_id: str) -> TrainConfig:
    return dataclasses.replace(
        base,
        batch_size=int(params["batch_size"]),
        epochs=int(params["epochs"]),
        dropout=float(params["dropout"]),
        weight_decay=float(params["weight_decay"]),
        schedule=str(params["schedule"]),
        head_hidden=int(params["head_hidden"]),
        run_id=f"{base.run_id}-{trial_id}",
    )


def _trial(params: dict[str, Any], base: TrainConfig, data: TrainData) -> None:
    """One Ray Tune trial: fit, reporting val AUC and a checkpoint after every epoch."""
    from ray import tune

    from operators.models.checkpoints import save_checkpoint
    from pipelines.train import FitResult, checkpoint_meta, fit

    trial_id = tune.get_context().get_trial_id()
    cfg = _trial_config(base, params, trial_id)
    started = time.time()

    def on_epoch(epoch: int, metrics: dict[str, float], net: torch.nn.Module) -> None:
        meta = checkpoint_meta(cfg, data, FitResult(net, metrics, best_epoch=epoch))
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(net.state_dict(), meta, str(Path(folder) / "model.pt"))
            report: dict[str, Any] = {k: v for k, v in metrics.items() if not math.isnan(v)}
            report.update(trial_started_at=started, data_hash=data.data_hash)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))

    fit(cfg, data, on_epoch=on_epoch, log=lambda s: print(f"[{trial_id}] {s}", flush=True))


def run_tune(cfg: TuneConfig) -> dict[str, Any]:
    """Search, print the trials table, keep the best checkpoint, record the runs."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipelines.ray_runner import _import_ray, connect
    from pipelines.train import load_data, record_run, validate

    validate(cfg.base)
    if cfg.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {cfg.trials}")
    if not cfg.cpus_per_trial > 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {cfg.cpus_per_trial}")
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    best_uri = str(out / "best.pt")
    base = dataclasses.replace(
        cfg.base,
        out=best_uri,  # the split file sits beside the best checkpoint
        num_threads=cfg.base.num_threads or max(1, math.floor(cfg.cpus_per_trial)),
        patience=0,  # ASHA decides when a trial stops
        workers=0,
    )
    started_at = time.time()
    record_run(
        base.warehouse, base, command="tune", status="running", started_at=started_at, ended=False
    )
    data = load_data(base)
    print(
        f"data: {len(data.train)} train / {len(data.val)} val at {base.image_size}px, "
        f"{data.split_how}; {cfg.trials} trials x {cfg.cpus_per_trial:g} CPU",
        flush=True,
    )
    # A checkpoint per epoch is the point here (ASHA may stop a trial at any epoch);
    # Tune's warning about frequent experiment snapshots would only repeat that.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray = _import_ray()
    started_ray = connect(ray, cfg.ray_address)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=base, data=data), {"cpu": cfg.cpus_per_trial}
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",  # one iteration = one epoch
            max_t=cfg.space.epochs[1],
            grace_period=max(1, cfg.grace_epochs),
            reduction_factor=2,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=cfg.space.param_space(),
            tune_config=tune.TuneConfig(
                metric="val_auc",
                mode="max",
                num_samples=cfg.trials,
                scheduler=scheduler,
            ),
            run_config=tune.RunConfig(
                name=base.run_id,
                storage_path=str(out / "ray_results"),
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1,  # per trial, its best epoch only: disk stays small
                    checkpoint_score_attribute="val_auc",
                    checkpoint_score_order="max",
                ),
                verbose=0,
            ),
        )
        grid = tuner.fit()
        rows = _trial_rows(grid, base)
        best = _keep_best(grid, best_uri)
    except BaseException as exc:
        record_run(
            base.warehouse, base, command="tune", status="failed", started_at=started_at,
            data_hash=data.data_hash, error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
        raise
    finally:
        if started_ray:
            ray.shutdown()
    for line in format_trials(rows):
        print(line)
    (out / "trials.json").write_text(json.dumps(rows, indent=1, default=str))
    for row in rows:
        record_run(
            base.warehouse,
            _trial_config(base, row["config"], row["trial_id"]),
            command="tune-trial",
            status="failed" if row["error"] else "succeeded",
            started_at=row["started_at"] or started_at,
            data_hash=data.data_hash,
            metrics=row["metrics"],
            artifact=row["checkpoint"],
            error=row["error"],
            parent=base.run_id,
            ended_at=row["ended_at"],
        )
    summary = {"best_trial": best["trial_id"] if best else None, "best_val_auc": None}
    if best:
        summary["best_val_auc"] = best["val_auc"]
        print(
            f"best: trial {best['trial_id']} val_auc={best['val_auc']:.4f} at epoch "
            f"{best['epoch']} -> {best_uri}"
        )
    record_run(
        base.warehouse, base, command="tune", status="succeeded" if best else "failed",
        started_at=started_at, data_hash=data.data_hash,
        metrics={"val_auc": best["val_auc"] if best else float("nan"),
                 "trials": float(len(rows))},
        artifact=best_uri if best else None,
        error=None if best else "no trial reported a val AUC",
    )  # fmt: skip
    return {"trials": rows, "best": best, "out": str(out), **summary}


def _trial_rows(grid: Any, base: TrainConfig) -> list[dict[str, Any]]:
    """One plain dict per trial: its sampled config, best and last val AUC, status."""
    rows: list[dict[str, Any]] = []
    for result in grid:
        metrics = dict(result.metrics or {})
        df = result.metrics_dataframe
        best_auc = None
        if df is not None and "val_auc" in df and len(df):
            best_auc = float(df["val_auc"].max())
        trial_id = metrics.get("trial_id") or Path(result.path).name
        config = {k: result.config[k] for k in SEARCHED}
        epochs_done = int(metrics.get("training_iteration", 0))
        ckpt = result.get_best_checkpoint("val_auc", "max") if best_auc is not None else None
        rows.append(
            {
                "trial_id": str(trial_id),
                "config": config,
                "epochs_done": epochs_done,
                "stopped_by_asha": result.error is None and epochs_done < int(config["epochs"]),
                "val_auc_last": metrics.get("val_auc"),
                "val_auc_best": best_auc,
                "started_at": metrics.get("trial_started_at"),
                "ended_at": metrics.get("timestamp"),  # Tune's time of the last report
                "metrics": {
                    k: float(v)
                    for k, v in metrics.items()
                    if k.startswith(("val_", "train_")) and isinstance(v, int | float)
                },
                "checkpoint": str(Path(ckpt.path) / "model.pt") if ckpt else None,
                "error": f"{type(result.error).__name__}: {result.error}" if result.error else None,
            }
        )
    rows.sort(key=lambda r: -1.0 if r["val_auc_best"] is None else -float(r["val_auc_best"]))
    return rows


def _keep_best(grid: Any, best_uri: str) -> dict[str, Any] | None:
    """Copy the best (trial, epoch) checkpoint over all trials to ``best_uri``."""
    try:
        best = grid.get_best_result(metric="val_auc", mode="max", scope="all")
    except RuntimeError:  # no trial reported the metric
        return None
    ckpt = best.get_best_checkpoint("val_auc", "max")
    if ckpt is None:
        return None
    with ckpt.as_directory() as folder:
        shutil.copyfile(Path(folder) / "model.pt", best_uri)
    df = best.metrics_dataframe
    row = df.loc[df["val_auc"].idxmax()]
    return {
        "trial_id": str(best.metrics.get("trial_id") or Path(best.path).name),
        "val_auc": float(row["val_auc"]),
        "epoch": int(row["training_iteration"]),
        "config": {k: best.config[k] for k in SEARCHED},
    }


def format_trials(rows: list[dict[str, Any]]) -> list[str]:
    def f(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)

    head = f"{'trial':<12} {'batch':>5} {'epochs':>6} {'dropout':>7} {'wd':>8} {'schedule':<9} "
    head += f"{'hidden':>6} {'done':>4} {'val_auc':>8} {'best':>8} status"
    lines = [head]
    for r in rows:
        c = r["config"]
        status = "error" if r["error"] else ("asha-stop" if r["stopped_by_asha"] else "done")
        lines.append(
            f"{r['trial_id']:<12} {c['batch_size']:>5} {c['epochs']:>6} {c['dropout']:>7.3f} "
            f"{c['weight_decay']:>8.2e} {c['schedule']:<9} {c['head_hidden']:>6} "
            f"{r['epochs_done']:>4} {f(r['val_auc_last']):>8} {f(r['val_auc_best']):>8} {status}"
        )
    return lines


# ---------------------------------------------------------------- command line
def register(sub: Any) -> None:
    p = sub.add_parser("tune", help="random search over the training recipe (Ray Tune + ASHA)")
    add_train_arguments(p)
    p.add_argument("--out", required=True, help="folder for best.pt, trials.json, ray_results/")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="fractions allowed")
    p.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial")
    p.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs before a stop")
    p.add_argument("--epochs-range", default="2:8", help="MIN:MAX epochs searched")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start one here)")
    p.set_defaults(func=run_command, schedule="onecycle")


def build_tune_config(args: argparse.Namespace) -> TuneConfig:
    from pipelines.train import build_config

    try:
        lo, hi = (int(v) for v in args.epochs_range.split(":"))
    except ValueError:
        raise ConfigError(f"--epochs-range must be MIN:MAX, got {args.epochs_range!r}") from None
    if not 1 <= lo <= hi:
        raise ConfigError(f"--epochs-range needs 1 <= MIN <= MAX, got {args.epochs_range}")
    # The searched fields take placeholders here; each trial samples its own.
    ns = argparse.Namespace(**vars(args))
    ns.epochs, ns.batch_size, ns.weight_decay, ns.dropout = hi, 32, 0.05, None
    ns.head_hidden, ns.workers = 0, 0
    ns.out = str(Path(args.out) / "best.pt")
    base = build_config(ns)
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
    return TuneConfig(
        base=base,
        out=args.out,
        trials=args.trials,
        cpus_per_trial=args.cpus_per_trial,
        max_failures=args.max_failures,
        grace_epochs=args.grace_epochs,
        space=SearchSpace(epochs=(lo, hi)),
        ray_address=args.ray_address,
    )


def run_command(args: argparse.Namespace) -> int:
    run_tune(build_tune_config(args))
    return 0
