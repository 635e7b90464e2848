"""dfscan's decode+detect against the icpr2020dfdc extraction path, on the same videos.

The peer is the face extraction of polimi-ispl/icpr2020dfdc, which many users run: per
video, OpenCV's ``cv2.VideoCapture`` reads N frames evenly spaced from the first to the
last (``linspace`` over ``CAP_PROP_FRAME_COUNT``), walking the file with ``grab()`` and
decoding only the wanted frames with ``retrieve()``; each frame is converted to RGB, cut
into square tiles (side ``min(H, W, 720)``: three across a landscape frame), each tile
shrunk to 128x128 (INTER_AREA) for BlazeFace; detections are mapped back to the frame,
merged across tiles by NMS (IoU 0.3), widened by 20% and cropped.

BlazeFace: that repository's PyTorch weights file is not available offline here. The
stand-in is Google's BlazeFace short-range model as shipped inside mediapipe's wheel
(``mediapipe.solutions.face_detection``, ``model_selection=0``), score threshold 0.75
like the repository's BlazeFace. mediapipe 0.10.21, the last release with the model in
its wheel, needs numpy<2 and protobuf<5, so it cannot share dfscan's environment: the
peer half runs in its own interpreter (``--peer-python``; ``make bench-peer`` builds
one). MediaPipe runs TFLite with XNNPACK, one tile per call; the repository runs its
PyTorch port on batches of tiles.
Without mediapipe the peer half times the OpenCV read path alone and says so.

dfscan's half is the ``FaceExtractor`` operator (PyAV decode of ``uniform:N``, SCRFD-500M
at 640 by default, JPEG crops, tracks), in this process so that its CPU time can be
counted (``--isolate``: in the decode worker process, as scans run it), with setup
(model load) outside the timing, as for the peer. Both halves run one video at a time;
rounds alternate and the best round of each is kept. Wall time is what a user waits;
CPU time (all threads of the process) is the cost, and moves less when other processes
share the machine.

Then both run on the whole machine (``--parallel``, default one video per core): the
peer's loop in that many processes, videos dealt round-robin, timed from the first loop
start to the last loop end; dfscan as the local runner drives it, one extractor with that
many decode workers. This is how each would be deployed on a multi-core host.

    python benchmarks/bench_peer.py [--videos DIR] [--frames 32] [--peer-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "peer.json"
PEER_VENV_PYTHON = ROOT / "benchmarks" / ".corpus" / "peer-venv" / "bin" / "python"
DEFAULT_VIDEOS = Path(os.environ.get("DFSCAN_SHARED", ROOT.parent / "shared")) / "data/videos/real"

# The peer's settings (icpr2020dfdc's BlazeFace front model and FaceExtractor).
TILE_INPUT = 128  # BlazeFace front model input side
MAX_TILE = 720  # tile side cap
MIN_SCORE = 0.75
NMS_IOU = 0.3
MARGIN = 0.2  # box widened by 20% of its height (twice that above, for the forehead)


# ---------------------------------------------------------------- the peer path
def peer_read(path: str, num_frames: int) -> tuple[list[np.ndarray], list[int]]:
    """N evenly spaced RGB frames, read by walking the file with grab() and decoding
    only the wanted frames with retrieve(); stops at the first failure."""
    capture = cv2.VideoCapture(path)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:
            return [], []
        wanted = np.unique(np.linspace(0, count - 1, num_frames, dtype=int)).tolist()
        frames: list[np.ndarray] = []
        taken: list[int] = []
        for index in range(wanted[0], wanted[-1] + 1):
            if not capture.grab():
                break
            if index != wanted[len(taken)]:
                continue
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            taken.append(index)
        return frames, taken
    finally:
        capture.release()


def tile_origins(height: int, width: int) -> tuple[int, list[tuple[int, int]]]:
    """Tile side and (x, y) origins: squares of min(H, W, 720), stepping by half the
    leftover length, so a 16:9 frame gives left, centre and right tiles."""
    side = min(height, width, MAX_TILE)
    x_step, y_step = (width - side) // 2, (height - side) // 2
    xs = range(0, width - side + 1, x_step) if x_step > 0 else range(1)
    ys = range(0, height - side + 1, y_step) if y_step > 0 else range(1)
    return side, [(x, y) for y in ys for x in xs]


class BlazeFaceStandIn:
    """BlazeFace short-range through mediapipe, one 128x128 tile per call."""

    def __init__(self) -> None:
        import mediapipe as mp

        self._mp = mp.solutions.face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=MIN_SCORE
        )

    def detect(self, tile: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        """(x, y, w, h, score) relative to the tile."""
        result = self._mp.process(tile)
        out = []
        for d in result.detections or []:
            box = d.location_data.relative_bounding_box
            out.append((box.xmin, box.ymin, box.width, box.height, float(d.score[0])))
        return out


def peer_faces(frame: np.ndarray, detector: BlazeFaceStandIn) -> list[np.ndarray]:
    """Face crops of one RGB frame: tiles -> detector -> frame boxes -> NMS -> margin."""
    h, w = frame.shape[:2]
    side, origins = tile_origins(h, w)
    boxes: list[list[float]] = []
    scores: list[float] = []
    for x0, y0 in origins:
        tile = cv2.resize(
            frame[y0 : y0 + side, x0 : x0 + side],
            (TILE_INPUT, TILE_INPUT),
            interpolation=cv2.INTER_AREA,
        )
        for bx, by, bw, bh, score in detector.detect(tile):
            boxes.append([x0 + bx * side, y0 + by * side, bw * side, bh * side])
            scores.append(score)
    keep = cv2.dnn.NMSBoxes(boxes, scores, MIN_SCORE, NMS_IOU) if boxes else []
    crops = []
    for i in np.asarray(keep).reshape(-1):
        x, y, bw, bh = boxes[int(i)]
        pad = round(MARGIN * bh)
        top, left = max(int(y) - 2 * pad, 0), max(int(x) - pad, 0)
        bottom, right = min(int(y + bh) + pad, h), min(int(x + bw) + pad, w)
        crops.append(frame[top:bottom, left:right].copy())
    return crops


def peer_worker(videos: list[str], num_frames: int) -> dict[str, Any]:
    """The whole peer half; runs in the peer's interpreter and prints JSON."""
    detector: BlazeFaceStandIn | None = None
    detector_name: str | None = None
    missing: str | None = None
    try:
        detector = BlazeFaceStandIn()
        detector_name = "BlazeFace short-range (mediapipe " + _mediapipe_version() + ")"
        detector.detect(np.zeros((TILE_INPUT, TILE_INPUT, 3), np.uint8))  # warm-up
    except ImportError as err:
        detector, missing = None, f"{err.name or 'mediapipe'} is not importable in {sys.executable}"
    except AttributeError:  # mediapipe > 0.10.21: no solutions API and no model in the wheel
        detector, missing = None, f"mediapipe {_mediapipe_version()} ships no BlazeFace model"
    rows = []
    loop_start = time.time()  # epoch seconds: parallel peer processes share one clock
    for path in videos:
        t0, c0 = time.perf_counter(), time.process_time()
        frames, _ = peer_read(path, num_frames)
        t1, c1 = time.perf_counter(), time.process_time()
        faces = sum(len(peer_faces(f, detector)) for f in frames) if detector else 0
        t2, c2 = time.perf_counter(), time.process_time()
        rows.append(
            {
                "video": Path(path).name,
                "frames": len(frames),
                "faces": faces,
                "read_s": t1 - t0,
                "detect_s": t2 - t1,
                "read_cpu_s": c1 - c0,
                "detect_cpu_s": c2 - c1,
            }
        )
    return {
        "python": sys.executable,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "detector": detector_name,
        "detector_missing": missing,
        "videos": rows,
        "loop_start": loop_start,
        "loop_end": time.time(),
    }


def _mediapipe_version() -> str:
    import mediapipe as mp

    return str(mp.__version__)


# ---------------------------------------------------------------- dfscan's half
def dfscan_round(videos: list[Path], num_frames: int, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from operators.extract_faces import FaceExtractor
    from pipelines.config import CropConfig, DetectorConfig, LimitsConfig, SamplingConfig
    from schemas.records import VideoRef

    detector = DetectorConfig.build(args.detector, det_size=args.det_size, det_scale=args.det_scale)
    limits = LimitsConfig(isolate=args.isolate)
    sampling = SamplingConfig("uniform", count=num_frames)
    extractor = FaceExtractor(sampling, detector, CropConfig(scale=1.3), limits)
    extractor.setup()
    rows = []
    try:
        for v in videos:
            ref = VideoRef(v.name, str(v), v.stat().st_size)
            t0, c0 = time.perf_counter(), time.process_time()
            result = extractor.extract(ref)
            rows.append(
                {
                    "video": v.name,
                    "status": result.status.value,
                    "frames": result.frames_sampled,
                    "faces": len(result.faces),
                    "seconds": time.perf_counter() - t0,
                    # In a decode worker the work is another process's CPU time.
                    "cpu_s": None if args.isolate else time.process_time() - c0,
                    "decode_s": result.stage_seconds.get("decode", 0.0),
                }
            )
    finally:
        extractor.teardown()
    scale = f" x{args.det_scale:g}" if args.det_scale != 1.0 else ""
    where = "decode worker process" if args.isolate else "in-process"
    return {"detector": f"{args.detector} {args.det_size}{scale}", "where": where, "videos": rows}


def peer_round(python: str, videos: list[Path], num_frames: int) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--peer-worker", "--frames", str(num_frames)]
    cmd += [str(v) for v in videos]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"bench_peer: the peer half failed in {python}: {tail[0]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- the whole machine
def peer_parallel(python: str, videos: list[Path], num_frames: int, n: int) -> dict[str, Any]:
    """The peer's loop in ``n`` processes at once, videos dealt round-robin (how one
    spreads a Python loop over cores); wall = first loop start to last loop end, so
    interpreter start and model load stay outside, as for dfscan's setup."""
    procs = []
    for k in range(n):
        part = [str(v) for v in videos[k::n]]
        if part:
            cmd = [python, str(Path(__file__).resolve()), "--peer-worker"]
            cmd += ["--frames", str(num_frames), *part]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    runs = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit("bench_peer: a parallel peer process failed")
        runs.append(json.loads(out.strip().splitlines()[-1]))
    rows = [row for run in runs for row in run["videos"]]
    wall = max(r["loop_end"] for r in runs) - min(r["loop_start"] for r in runs)
    frames, faces = sum(r["frames"] for r in rows), sum(r["faces"] for r in rows)
    return {"frames": frames, "faces": faces, "wall_s": wall}


def dfscan_parallel(
    videos: list[Path], num_frames: int, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    """dfscan as the local runner drives it: one extractor with ``n`` decode workers
    (one FFmpeg and one ONNX Runtime thread each), ``n`` videos in flight."""
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(ROOT))
    from operators.extract_faces import FaceExtractor
    from pipelines.config import CropConfig, DetectorConfig, LimitsConfig, SamplingConfig
    from schemas.records import VideoRef

    detector = DetectorConfig.build(args.detector, det_size=args.det_size, det_scale=args.det_scale)
    sampling = SamplingConfig("uniform", count=num_frames)
    extractor = FaceExtractor(sampling, detector, CropConfig(scale=1.3), LimitsConfig(), workers=n)
    extractor.setup()
    refs = [VideoRef(v.name, str(v), v.stat().st_size) for v in videos]
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(extractor.extract, refs))
        wall = time.perf_counter() - t0
    finally:
        extractor.teardown()
    return {
        "frames": sum(r.frames_sampled for r in results),
        "faces": sum(len(r.faces) for r in results),
        "wall_s": wall,
    }


def _rates(frames: int, faces: int | None, seconds: float | None) -> dict[str, float | None]:
    """Per-second rates; None where the count or the time is unknown."""
    if seconds is None or seconds <= 0:
        return {"seconds": seconds, "frames_per_s": None, "faces_per_s": None}
    return {
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "faces_per_s": None if faces is None else faces / seconds,
    }


def _sum(rows: list[dict[str, Any]], *keys: str) -> float | None:
    values = [r[k] for r in rows for k in keys]
    return None if any(v is None for v in values) else float(sum(values))


def summarise(peer: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Wall and CPU rates of both halves, and dfscan's ratio over the peer for each."""
    parts = ("read", "detect") if peer["detector"] else ("read",)
    out: dict[str, Any] = {}
    for name, run, wall_keys, cpu_keys in (
        ("peer", peer, tuple(f"{p}_s" for p in parts), tuple(f"{p}_cpu_s" for p in parts)),
        ("dfscan", ours, ("seconds",), ("cpu_s",)),
    ):
        rows = run["videos"]
        frames = sum(r["frames"] for r in rows)
        # Without a peer detector its face count is unknown, not zero.
        counted = name == "dfscan" or peer["detector"]
        faces = sum(r["faces"] for r in rows) if counted else None
        out[name] = {
            "frames": frames,
            "faces": faces,
            "wall": _rates(frames, faces, _sum(rows, *wall_keys)),
            "cpu": _rates(frames, faces, _sum(rows, *cpu_keys)),
        }
    for clock in ("wall", "cpu"):
        for rate in ("frames_per_s", "faces_per_s"):
            a, b = out["dfscan"][clock][rate], out["peer"][clock][rate]
            out[f"ratio_{rate}_{clock}"] = a / b if a is not None and b else None
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    videos = sorted(Path(args.videos).glob("*.mp4"))
    if not videos:
        raise SystemExit(f"bench_peer: no .mp4 under {args.videos}")
    python = args.peer_python or (
        str(PEER_VENV_PYTHON) if PEER_VENV_PYTHON.exists() else sys.executable
    )
    peer_runs, ours_runs = [], []
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        peer_runs.append(peer_round(python, videos, args.frames))
        ours_runs.append(dfscan_round(videos, args.frames, args))
    peer = min(peer_runs, key=lambda r: _sum(r["videos"], "read_s", "detect_s") or 0.0)
    ours = min(ours_runs, key=lambda r: _sum(r["videos"], "seconds") or 0.0)
    machine: dict[str, Any] = {}
    if args.parallel > 1 and peer["detector"]:
        p_runs, o_runs = [], []
        for _ in range(args.rounds):
            p_runs.append(peer_parallel(python, videos, args.frames, args.parallel))
            o_runs.append(dfscan_parallel(videos, args.frames, args, args.parallel))
        pbest = min(p_runs, key=lambda r: r["wall_s"])
        obest = min(o_runs, key=lambda r: r["wall_s"])
        machine = {
            "videos_at_once": args.parallel,
            "peer": pbest,
            "dfscan": obest,
            "ratio_faces_per_s": (obest["faces"] / obest["wall_s"])
            / (pbest["faces"] / pbest["wall_s"]),
            "ratio_frames_per_s": (obest["frames"] / obest["wall_s"])
            / (pbest["frames"] / pbest["wall_s"]),
        }
    return {
        "whole_machine": machine,
        "videos": len(videos),
        "frames_per_video": args.frames,
        "rounds": args.rounds,
        "cores": len(os.sched_getaffinity(0)),
        "loadavg_1m": [load_before, os.getloadavg()[0]],
        "peer_run": peer,
        "dfscan_run": ours,
        "peer_read_s": _sum(peer["videos"], "read_s"),
        "dfscan_decode_s": _sum(ours["videos"], "decode_s"),
        **summarise(peer, ours),
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    pr, orun = r["peer_run"], r["dfscan_run"]
    t = Table(
        title=f"decode+detect: {r['videos']} videos x {r['frames_per_video']} frames, one video"
        f" at a time, best of {r['rounds']} rounds"
    )
    cols = ["path", "detector", "frames", "faces", "wall s", "frames/s", "faces/s"]
    cols += ["CPU s", "frames/CPU-s", "faces/CPU-s", "of which reading"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("path", "detector") else "right")
    for name, label, det, reading in (
        (
            "peer",
            "icpr2020dfdc: cv2 grab/retrieve, tiles, BlazeFace",
            pr["detector"] or "none: " + str(pr["detector_missing"]),
            f"{_fmt(r['peer_read_s'], '.2f')} s (OpenCV {pr['opencv']})",
        ),
        (
            "dfscan",
            f"dfscan FaceExtractor ({orun['where']})",
            orun["detector"],
            f"{_fmt(r['dfscan_decode_s'], '.2f')} s decoding (PyAV)",
        ),
    ):
        x = r[name]
        t.add_row(
            label,
            det,
            str(x["frames"]),
            _fmt(x["faces"], "d"),
            _fmt(x["wall"]["seconds"], ".2f"),
            _fmt(x["wall"]["frames_per_s"]),
            _fmt(x["wall"]["faces_per_s"]),
            _fmt(x["cpu"]["seconds"], ".2f"),
            _fmt(x["cpu"]["frames_per_s"]),
            _fmt(x["cpu"]["faces_per_s"]),
            reading,
        )
    Console(width=max(Console().width, 190)).print(t)
    for clock in ("wall", "cpu"):
        print(
            f"dfscan / peer ({clock} time): "
            f"{_fmt(r[f'ratio_frames_per_s_{clock}'], '.2f')}x frames/s, "
            f"{_fmt(r[f'ratio_faces_per_s_{clock}'], '.2f')}x faces/s (aim >= 3x)"
        )
    m = r.get("whole_machine") or {}
    if m:
        w = Table(title=f"the whole machine: {m['videos_at_once']} videos at a time")
        for c in ("path", "frames", "faces", "wall s", "frames/s", "faces/s"):
            w.add_column(c, justify="left" if c == "path" else "right")
        for label, x in (
            (f"icpr2020dfdc path, {m['videos_at_once']} processes", m["peer"]),
            (f"dfscan FaceExtractor, {m['videos_at_once']} decode workers", m["dfscan"]),
        ):
            w.add_row(
                label,
                str(x["frames"]),
                str(x["faces"]),
                f"{x['wall_s']:.2f}",
                f"{x['frames'] / x['wall_s']:.1f}",
                f"{x['faces'] / x['wall_s']:.1f}",
            )
        Console(width=max(Console().width, 190)).print(w)
        print(
            f"dfscan / peer, whole machine: {m['ratio_frames_per_s']:.2f}x frames/s,"
            f" {m['ratio_faces_per_s']:.2f}x faces/s (aim >= 3x)"
        )
    lo, hi = r["loadavg_1m"]
    print(f"1-minute load average before/after: {lo:.2f} / {hi:.2f} on {r['cores']} cores")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)  # --peer-worker's videos
    p.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--videos", default=str(DEFAULT_VIDEOS))
    p.add_argument("--frames", type=int, default=32, help="frames per video, both paths")
    p.add_argument(
        "--peer-python",
        help=f"interpreter with mediapipe (default: {PEER_VENV_PYTHON.relative_to(ROOT)})",
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--detector", default="scrfd-500m")
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument("--det-scale", type=float, default=1.0)
    p.add_argument(
        "--isolate",
        action="store_true",
        help="run dfscan's half in its decode worker process, as scans do (no CPU time then)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="also time both paths this many videos at a time (default: one per core; 1: skip)",
    )
    p.add_argument("--json", default=str(RESULTS))
    args = p.parse_args()
    if args.frames < 1 or args.rounds < 1:
        p.error("--frames and --rounds must be >= 1")
    if args.peer_worker:
        print(json.dumps(peer_worker(args.paths, args.frames)))
        return 0
    result = run(args)
    print_table(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
