"""Training benchmark of the starter recipe: speed and the honest held-out numbers.

Trains the starter model with ``dfscan train``'s own code on the DFDC crops (split by
source video), then prints: training images/s and seconds per epoch on this machine,
the validation AUC on held-out source videos, and ``dfscan eval``'s frame- and
video-level AUC on ``videos/face_crops`` (20 DFDC clips no training image comes from;
19 FAKE / 1 REAL, so its AUC ranks a single real video: read it as a smoke signal, not a
score). The machine load is printed too: on a shared box, timings drift with it.
Nothing is asserted: these are measurements.

    python benchmarks/bench_train.py [--out DIR] [--json F] [train flags, e.g. --sbi]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import shared_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="keep the model and reports here (default: a temp dir)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args, train_flags = parser.parse_known_args(argv)

    from pipelines.evaluate import EvalConfig, evaluate
    from pipelines.train import build_config, fit, load_data, save_model
    from pipelines.train import register as register_train

    shared = shared_dir()
    crops = shared / "data" / "faces" / "dfdc224"
    videos = shared / "data" / "videos" / "face_crops"
    with tempfile.TemporaryDirectory(prefix="dfscan-bench-train-") as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        model = out / "starter.pt"
        p = argparse.ArgumentParser()
        register_train(p.add_subparsers(dest="command"))
        targs = p.parse_args(["train", "--data", str(crops), "--out", str(model), *train_flags])
        cfg = build_config(targs)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        data = load_data(cfg)
        load_s = time.perf_counter() - t0
        cpu0 = time.process_time()
        result = fit(cfg, data, log=lambda s: print(s, flush=True))
        cpu_s = time.process_time() - cpu0
        save_model(cfg, data, result)
        m = result.metrics
        epochs = max(m["epochs_run"], 1e-9)
        report = evaluate(EvalConfig(model=str(model), data=str(videos), out=str(out / "eval")))
        numbers = {
            "recipe": json.loads(cfg.to_json()),
            "n_train": len(data.train),
            "n_val": len(data.val),
            "load_seconds": load_s,
            "train_seconds": m["train_seconds"],
            "train_cpu_seconds": cpu_s,
            "epochs_run": m["epochs_run"],
            "seconds_per_epoch": m["train_seconds"] / epochs,
            "train_images_per_s": m["train_images_per_s"],
            "val_auc": m["val_auc"],
            "val_acc": m["val_acc"],
            "face_crops_frame_auc": report["frame"]["auc"],
            "face_crops_video_auc": report["video"]["auc"],
            "face_crops_video_accuracy": report["video"]["accuracy"],
            "cpus": os.cpu_count(),
            "loadavg_before": load0,
            "loadavg_after": os.getloadavg()[0],
        }
    print()
    augment = ",".join(cfg.augment) or "none"
    print(f"starter recipe: {cfg.arch} {cfg.image_size}px, {cfg.epochs} epochs, batch "
          f"{cfg.batch_size}, augment {augment}, sbi {cfg.sbi}")  # fmt: skip
    print(f"  data            {numbers['n_train']} train / {numbers['n_val']} val faces "
          f"(split by source video), decoded in {load_s:.1f} s")  # fmt: skip
    print(f"  training        {numbers['train_images_per_s']:.1f} images/s, "
          f"{numbers['seconds_per_epoch']:.1f} s/epoch, {m['epochs_run']:.2f} epochs in "
          f"{m['train_seconds']:.0f} s ({cpu_s:.0f} CPU-s)")  # fmt: skip
    print(f"  val (DFDC224)   AUC {m['val_auc']:.4f}, accuracy {m['val_acc']:.4f}")
    fa, va = report["frame"]["auc"], report["video"]["auc"]
    print(f"  face_crops      frame AUC {fa if fa is None else round(fa, 4)}, video AUC "
          f"{va if va is None else round(va, 4)} (19 FAKE / 1 REAL videos)")  # fmt: skip
    print(f"  load average    {load0:.1f} before, {numbers['loadavg_after']:.1f} after "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
