"""``dfscan train --workers N``: the same ``fit`` loop, data-parallel on Ray Train.

Each of N ``TorchTrainer`` workers loads the data itself (from a path or URI all of
them can read), takes every N-th batch of the shared shuffled order, and trains the
same network wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU, set up
by Ray Train). The global batch is split over the workers and the LR schedule and
stop decisions are rank 0's, so N workers follow the same recipe as one process. Rank
0 writes the split and the checkpoint; the driver records the run.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.train import TrainConfig


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train

    from pipelines.train import Distributed, fit, load_data, save_model

    cfg: TrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    dist = Distributed(ctx.get_world_rank(), ctx.get_world_size())
    lead = dist.rank == 0
    data = load_data(cfg, write_split=lead)
    result = fit(cfg, data, dist=dist, log=print if lead else (lambda _s: None))
    metrics: dict[str, Any] = dict(result.metrics)
    metrics.update(n_train=float(len(data.train)), n_val=float(len(data.val)))
    metrics["data_hash"] = data.data_hash
    if not lead:
        ray.train.report(metrics)  # a barrier: every rank reports once
        return
    metrics["sha256"] = save_model(cfg, data, result)
    # Ray Train keeps metrics only with a checkpoint; the model itself is at cfg.out
    # (any fsspec URI), so the checkpoint is just the numbers.
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_distributed(cfg: TrainConfig) -> dict[str, float]:
    """Fit on ``cfg.workers`` Ray Train workers; return rank 0's final metrics."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from operators.models.backends import device_type
    from pipelines.ray_runner import _import_ray, _machine_cpus, connect
    from pipelines.train import record_run, split_uri

    ray = _import_ray()
    started_ray = connect(ray, None)
    started_at = time.time()
    use_gpu = device_type(cfg.device) == "cuda"
    # One worker per core by default; each worker's torch gets its share of the cores.
    cpus = max(1, _machine_cpus() // cfg.workers)
    worker_cfg = dataclasses.replace(cfg, workers=0, num_threads=cfg.num_threads or cpus)
    record_run(
        cfg.warehouse, cfg, command="train", status="running", started_at=started_at, ended=False
    )
    try:
        with tempfile.TemporaryDirectory(prefix="dfscan-raytrain-") as storage:
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={"cfg": worker_cfg},
                scaling_config=ScalingConfig(
                    num_workers=cfg.workers,
                    use_gpu=use_gpu,
                    resources_per_worker={"CPU": float(cpus)},
                ),
                run_config=RunConfig(
                    name=cfg.run_id,
                    storage_path=storage,
                    # One retry for a lost worker; a bug fails the same way every time.
                    failure_config=FailureConfig(max_failures=1),
                ),
            )
            result = trainer.fit()
    except BaseException as exc:
        record_run(
            cfg.warehouse, cfg, command="train", status="failed", started_at=started_at,
            error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
        raise
    finally:
        if started_ray:
            ray.shutdown()
    if result.error is not None:
        record_run(
            cfg.warehouse, cfg, command="train", status="failed", started_at=started_at,
            error=f"{type(result.error).__name__}: {result.error}",
        )  # fmt: skip
        raise result.error
    metrics = dict(result.metrics or {})
    data_hash = str(metrics.pop("data_hash", ""))
    sha = str(metrics.pop("sha256", ""))
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    numeric["workers"] = float(cfg.workers)
    record_run(
        cfg.warehouse, cfg, command="train", status="succeeded", started_at=started_at,
        data_hash=data_hash, metrics=numeric, artifact=cfg.out,
    )  # fmt: skip
    print(
        f"wrote {cfg.out} (sha256 {sha[:12]}) and {split_uri(cfg.out)} with {cfg.workers} workers"
    )
    print(f"val_auc={numeric['val_auc']:.4f} val_acc={numeric['val_acc']:.4f}", flush=True)
    return numeric
