"""Load: one ``dfscan scan`` over a manifest of N small generated clips, for several N.

Issues #7 and #8: throughput must hold as N grows, the peak RSS of the whole process
tree must stay flat (within 1.2x from 100 to 1,000 and from 1,000 to 10,000 clips), and
no file descriptor or temporary file may leak. Tiny clips (160 px, 1 s, two sampled
frames) make the per-video fixed costs (listing, hashing, the decode worker's round trip,
the warehouse write) the whole cost, so this is also where they are measured.

Each scan is a child process with its own ``TMPDIR`` and ``OUT``. A sampler reads the
tree's summed RSS (psutil) and the scan process's open descriptors (``/proc/PID/fd``)
every ``--interval`` seconds; after exit, files left in ``TMPDIR`` and in
``OUT/faces/_tmp`` are counted and the warehouse rows checked (one per clip).

    python benchmarks/bench_load.py --model artifacts/starter.pt [--sizes 100,1000,10000]
        [--frames uniform:2] [--json benchmarks/results/load.json]

Clips are generated once (two processes) into ``benchmarks/.corpus/load-*/`` and reused:
a face from the shared photos pasted at a position, size and over a background that all
depend on the clip's index, so every clip has its own bytes and its own sha256.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / ".corpus"  # the benchmarks' clip cache (gitignored)
CORES = len(os.sched_getaffinity(0))
SIDE = 160  # px: small enough that decode is negligible, large enough for SCRFD to see a face
FPS = 25
SECONDS = 1
# Bump when the clip recipe changes: the cache folder is named after it.
RECIPE = f"load-v2-{SIDE}px-{SECONDS}s"
FACE_IMAGES = ("alex-lacamoire.png", "lin-manuel-miranda.png", "obama_small.jpg")  # face-filling
MAX_RSS_RATIO = 1.2  # issues #7/#8: peak at 10x the videos within 1.2x
# Descriptors a larger run may hold beyond the smallest one's peak: a shard file being
# written, a DuckDB WAL, a pipe to a replaced decode worker. Anything growing with N
# blows past this at 1,000 clips.
FD_SLACK = 16
MAX_TIMELINE_POINTS = 240  # samples kept per run in the JSON (evenly thinned)


# --- the corpus ---------------------------------------------------------------------


def _load_faces() -> list[np.ndarray]:
    import cv2

    from pipelines.config import shared_dir

    faces = []
    for name in FACE_IMAGES:
        img = cv2.imread(str(shared_dir() / "data" / "images" / name))
        if img is None:
            raise SystemExit(f"bench_load: cannot read shared image {name}")
        faces.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return faces


_FACES: list[np.ndarray] = []


def make_clip(index: int, path: Path) -> None:
    """Clip ``index``: its own background, face, face size and drift, so its own bytes."""
    import av
    import cv2

    if not _FACES:
        _FACES.extend(_load_faces())
    rng = np.random.default_rng(index)
    coarse = rng.integers(40, 200, (SIDE // 16, SIDE // 16, 3), dtype=np.uint8)
    background = np.asarray(
        cv2.resize(coarse, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC), dtype=np.uint8
    )
    face = _FACES[index % len(_FACES)]
    fh = int(rng.integers(SIDE // 2, SIDE * 2 // 3))
    fw = min(SIDE - 8, int(face.shape[1] * fh / face.shape[0]))
    face = cv2.resize(face, (fw, fh), interpolation=cv2.INTER_AREA)
    x0 = int(rng.integers(0, SIDE - fw - 4 + 1))
    y0 = int(rng.integers(0, SIDE - fh + 1))
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.codec_context.gop_size = FPS
        stream.options = {"preset": "ultrafast", "x264-params": "log-level=error"}
        for i in range(SECONDS * FPS):
            frame = background.copy()
            x = min(x0 + i // 8, SIDE - fw)  # a slow drift: the tracker sees one face
            frame[y0 : y0 + fh, x : x + fw] = face
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)  # a crash mid-clip never leaves a half file under the final name


def _make_range(folder: str, indices: list[int]) -> int:
    for i in indices:
        make_clip(i, clip_path(Path(folder), i))
    return len(indices)


def clip_path(folder: Path, index: int) -> Path:
    return folder / f"clip-{index:06d}.mp4"


def build_clips(n: int, workers: int = CORES) -> Path:
    """The first ``n`` clips in the cache folder, generating only the missing ones."""
    folder = CACHE / RECIPE
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(n) if not clip_path(folder, i).exists()]
    if missing:
        print(f"generating {len(missing)} clips into {folder}", flush=True)
        t0 = time.perf_counter()
        chunks = [missing[k::workers] for k in range(workers)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = sum(pool.map(_make_range, [str(folder)] * workers, chunks))
        print(f"generated {done} clips in {time.perf_counter() - t0:.1f} s", flush=True)
    return folder


def write_manifest(folder: Path, n: int) -> Path:
    path = folder / f"manifest-{n}.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri"])
        for i in range(n):
            writer.writerow([str(clip_path(folder, i))])
    return path


# --- watching a scan ----------------------------------------------------------------


def count_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None  # the process has exited


@dataclass
class Sample:
    t_s: float
    rss_mb: float  # the whole tree: the scan and its decode worker
    root_rss_mb: float  # the scan process alone
    fds: int
    processes: int


@dataclass
class TreeSampler:
    """Samples a process tree's summed RSS and the root process's open descriptors."""

    pid: int
    interval_s: float
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            rss = [0] * len(procs)
            for i, proc in enumerate(procs):
                try:
                    rss[i] = proc.memory_info().rss
                except psutil.Error:
                    continue
            fds = count_fds(self.pid)
            if fds is None:
                return
            self.samples.append(
                Sample(
                    t_s=time.perf_counter() - self._t0,
                    rss_mb=sum(rss) / 2**20,
                    root_rss_mb=rss[0] / 2**20,
                    fds=fds,
                    processes=len(procs),
                )
            )
            self._stop.wait(self.interval_s)

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        return self.samples


def files_under(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())


def stage_seconds(metrics_prom: Path) -> dict[str, dict[str, float]]:
    """``dfscan_stage_seconds`` sum and count per stage from the scan's textfile."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    if not metrics_prom.exists():
        return out
    for family in text_string_to_metric_families(metrics_prom.read_text()):
        if family.name != "dfscan_stage_seconds":
            continue
        for s in family.samples:
            stage = s.labels.get("stage", "")
            if s.name.endswith("_sum"):
                out.setdefault(stage, {})["seconds"] = s.value
            elif s.name.endswith("_count"):
                out.setdefault(stage, {})["calls"] = s.value
    return out


def warehouse_facts(db: Path) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        totals = con.execute(
            "SELECT count(*), count(DISTINCT video_id), sum(faces), sum(decode_s),"
            " sum(detect_s), sum(score_s) FROM video_scans"
        ).fetchone()
        assert totals is not None  # an aggregate always returns one row
        rows, ids, faces, decode_s, detect_s, score_s = totals
        statuses = dict(
            con.execute("SELECT status, count(*) FROM video_scans GROUP BY status").fetchall()
        )
    finally:
        con.close()
    return {
        "rows": int(rows),
        "distinct_ids": int(ids),
        "faces": int(faces or 0),
        "statuses": {str(k): int(v) for k, v in statuses.items()},
        "decode_s": float(decode_s or 0.0),
        "detect_s": float(detect_s or 0.0),
        "score_s": float(score_s or 0.0),
    }


def _thin(samples: list[Sample], keep: int) -> list[dict[str, Any]]:
    step = max(1, len(samples) // keep)
    return [asdict(s) for s in samples[::step]]


def scan_once(
    manifest: Path, n: int, model: str, frames: str, extra: list[str], interval_s: float
) -> dict[str, Any]:
    """One ``dfscan scan`` of ``manifest`` in a fresh TMPDIR and OUT; what it cost."""
    work = Path(tempfile.mkdtemp(prefix=f"dfscan-load-{n}-"))
    tmpdir, out = work / "tmp", work / "out"
    tmpdir.mkdir()
    dfscan = ROOT / ".venv" / "bin" / "dfscan"
    cmd = [
        str(dfscan) if dfscan.exists() else "dfscan",
        "scan",
        str(manifest),
        "--out",
        str(out),
        "--model",
        model,
        "--frames",
        frames,
        "--no-progress",
        "--run-id",
        f"load-{n}",
        *extra,
    ]
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    log = work / "scan.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(proc.pid, interval_s)
        returncode = proc.wait()
    wall = time.perf_counter() - t0
    samples = sampler.stop()
    if returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"bench_load: scan of {n} clips failed ({returncode}): {tail}")
    facts = warehouse_facts(out / "scans.duckdb")
    stages = stage_seconds(out / "metrics.prom")
    result = {
        "n": n,
        "wall_s": wall,
        "videos_per_s": n / wall,
        "peak_rss_mb": max((s.rss_mb for s in samples), default=0.0),
        "peak_root_rss_mb": max((s.root_rss_mb for s in samples), default=0.0),
        "max_fds": max((s.fds for s in samples), default=0),
        # A leak grows with time: the later half would hold more than the earlier one.
        "max_fds_first_half": max((s.fds for s in samples[: len(samples) // 2]), default=0),
        "max_fds_second_half": max((s.fds for s in samples[len(samples) // 2 :]), default=0),
        "max_processes": max((s.processes for s in samples), default=0),
        "tmp_left": files_under(tmpdir),
        "shard_tmp_left": files_under(out / "faces" / "_tmp"),
        **facts,
        "stages": stages,
        "timeline": _thin(samples, MAX_TIMELINE_POINTS),
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


# --- verdicts and the table -------------------------------------------------------------


def verdicts(runs: list[dict[str, Any]]) -> dict[str, bool]:
    """The issues' criteria over the runs, smallest N first."""
    by_n = {r["n"]: r for r in runs}
    out: dict[str, bool] = {}
    sizes = sorted(by_n)
    for small, large in zip(sizes, sizes[1:], strict=False):
        ratio = by_n[large]["peak_rss_mb"] / by_n[small]["peak_rss_mb"]
        out[f"rss {large}/{small} <= {MAX_RSS_RATIO}x"] = ratio <= MAX_RSS_RATIO
    base_fds = by_n[sizes[0]]["max_fds"]
    out[f"fds bounded (max <= {base_fds} + {FD_SLACK}, 2nd half <= 1st + 2)"] = all(
        r["max_fds"] <= base_fds + FD_SLACK
        and r["max_fds_second_half"] <= r["max_fds_first_half"] + 2
        for r in runs
    )
    out["0 leftover temp files"] = all(not r["tmp_left"] and not r["shard_tmp_left"] for r in runs)
    out["rows == N"] = all(r["rows"] == r["distinct_ids"] == r["n"] for r in runs)
    return out


def per_video_ms(run: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per video of each stage, and of what the decode worker adds."""
    n = run["n"]
    ms = {stage: 1000 * v.get("seconds", 0.0) / n for stage, v in sorted(run["stages"].items())}
    # decode_s counts time inside the decoder; detect_s the detector, crops and JPEGs.
    inside = 1000 * (run["decode_s"] + run["detect_s"]) / n
    ms["decode+detect+crop (rows)"] = inside
    if "decode_detect" in ms:
        # The rest of the stage: opening and probing the file, the packet index, and the
        # decode worker's round trip (pickles over a socket).
        ms["open+probe+worker round trip"] = ms["decode_detect"] - inside
    return ms


def print_report(runs: list[dict[str, Any]], checks: dict[str, bool]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    base = runs[0]
    t = Table(title=f"load: one scan per N ({CORES} cores; timings noisy on a shared machine)")
    for col in (
        "N",
        "wall s",
        "videos/s",
        "peak RSS MB",
        f"RSS / N={base['n']}",
        "max fds",
        "max fds 1st→2nd half",
        "temp files left",
        "rows",
        "statuses",
    ):
        t.add_column(col, justify="right")
    for r in runs:
        t.add_row(
            f"{r['n']:,}",
            f"{r['wall_s']:.1f}",
            f"{r['videos_per_s']:.2f}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['peak_rss_mb'] / base['peak_rss_mb']:.3f}",
            str(r["max_fds"]),
            f"{r['max_fds_first_half']}→{r['max_fds_second_half']}",
            str(len(r["tmp_left"]) + len(r["shard_tmp_left"])),
            f"{r['rows']:,}",
            ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items())),
        )
    console.print(t)
    stages = sorted({s for r in runs for s in per_video_ms(r)})
    p = Table(title="per-video cost, ms (stage time summed over calls / N; stages overlap)")
    p.add_column("stage")
    for r in runs:
        p.add_column(f"N={r['n']:,}", justify="right")
    costs = [per_video_ms(r) for r in runs]
    for stage in stages:
        p.add_row(stage, *(f"{c.get(stage, 0.0):.1f}" for c in costs))
    p.add_row("[bold]wall / N", *(f"{1000 * r['wall_s'] / r['n']:.1f}" for r in runs))
    console.print(p)
    v = Table(title="verdicts")
    v.add_column("check")
    v.add_column("result")
    for name, ok in checks.items():
        v.add_row(name, "[green]pass" if ok else "[red]FAIL")
    console.print(v)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise SystemExit(f"bench_load: --sizes takes integers (100,1000), got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise SystemExit(f"bench_load: --sizes needs positive integers, got {text!r}")
    return sizes


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "artifacts" / "starter.pt"))
    p.add_argument("--sizes", default="100,1000,10000", help="clip counts, comma-separated")
    p.add_argument("--frames", default="uniform:2")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "load.json"))
    p.add_argument("scan_args", nargs="*", help="more `dfscan scan` flags, after --")
    args = p.parse_args(None if argv is None else list(argv))
    sizes = parse_sizes(args.sizes)
    if not Path(args.model).exists():
        raise SystemExit(f"bench_load: no model at {args.model} (make demo trains it)")

    folder = build_clips(sizes[-1])
    runs = []
    for n in sizes:
        manifest = write_manifest(folder, n)
        print(f"scanning {n:,} clips ({args.frames})", flush=True)
        run = scan_once(manifest, n, args.model, args.frames, args.scan_args, args.interval)
        print(
            f"  {run['wall_s']:.1f} s, {run['videos_per_s']:.2f} videos/s,"
            f" peak RSS {run['peak_rss_mb']:,.0f} MB, max fds {run['max_fds']}",
            flush=True,
        )
        runs.append(run)
    checks = verdicts(runs)
    print_report(runs, checks)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "cores": CORES,
                "clip": {"side_px": SIDE, "fps": FPS, "seconds": SECONDS, "recipe": RECIPE},
                "frames": args.frames,
                "scan_args": args.scan_args,
                "runs": [{**r, "per_video_ms": per_video_ms(r)} for r in runs],
                "verdicts": checks,
            },
            indent=2,
        )
    )
    print(f"numbers written to {args.json}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
