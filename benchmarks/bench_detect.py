"""Detection speed-ups against recall, all measured in one run on the same frames.

For each setting (SCRFD-500M and SCRFD-2.5G at det_size 640/480/320, detection on a
half-size frame, the square letterbox insightface uses on its own, YuNet): ms per frame
and recall against the reference, SCRFD-2.5G at 640 on the full frame: the fraction of
the reference's faces that the setting also finds (IoU >= 0.5, one-to-one), overall and
by face size. Frames are the scan's own
(``uniform:32`` through ``FrameDecoder``) from the shared real videos and the generated
benchmark corpus; every setting sees the same decoded frames, video by video.

Also measured: the resizing each setting does before its network (the part ``det_scale``
changes for SCRFD), and whether batching SCRFD frames would pay (see ``batching_probe``).
Nothing is asserted: these are measurements.

    python benchmarks/bench_detect.py [--videos DIR] [--no-corpus] [--repeat 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import DetectorConfig, LimitsConfig, SamplingConfig, shared_dir  # noqa: E402
from schemas.records import Detection  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "detect.json"
IOU_MATCH = 0.5
# Shorter box side of the reference face, px: the pipeline drops faces under 20 px.
SIZE_BUCKETS: tuple[tuple[int, float], ...] = ((20, 40), (40, 80), (80, 160), (160, math.inf))
# Keep every face: with the pipeline's cap of 8, which 8 are kept would decide recall.
_NO_CAP = 10_000


@dataclass(frozen=True)
class Setting:
    """One detector configuration under test.

    ``fit`` (SCRFD only) is how the frame meets the network's input:
    ``aspect``: dfscan's, the frame fitted to ``det_size`` keeping its aspect ratio;
    ``square``: insightface's own, letterboxed into a ``det_size`` square (what dfscan
    ran before); ``native``: never enlarged, the frame's own size up to ``det_size``.
    The last two are kept here to measure what each choice costs and finds.
    """

    detector: str
    det_size: int = 640
    det_scale: float = 1.0
    fit: str = "aspect"

    @property
    def label(self) -> str:
        scale = f" x{self.det_scale:g}" if self.det_scale != 1.0 else ""
        fit = f" {self.fit}" if self.fit != "aspect" else ""
        return f"{self.detector} {self.det_size}{scale}{fit}"

    def config(self) -> DetectorConfig:
        return DetectorConfig.build(
            self.detector, det_size=self.det_size, det_scale=self.det_scale, max_faces=_NO_CAP
        )

    def shrink(self, width: int, height: int) -> float:
        """The factor the detector shrinks the frame by (INTER_AREA) before the network;
        SCRFD's fit to its input is insightface's own resize, after this."""
        if self.detector == "yunet" or self.fit == "native":
            return min(self.det_scale, self.det_size / max(width, height))
        return self.det_scale

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """The network's input for a frame of this size."""
        s = min(self.shrink(width, height), 1.0)
        w, h = max(1, round(width * s)), max(1, round(height * s))
        if self.detector == "yunet":
            return w, h
        if self.fit == "square":
            return self.det_size, self.det_size
        if self.fit == "native":
            return _ceil32(w), _ceil32(h)
        short = _ceil32(-(-self.det_size * min(w, h) // max(w, h)))
        return (self.det_size, short) if w >= h else (short, self.det_size)


def _ceil32(side: int) -> int:
    return max(32, -(-side // 32) * 32)


DEFAULT = Setting("scrfd-500m")  # what `dfscan scan` runs without flags
REFERENCE = Setting("scrfd-2.5g")
SETTINGS = (
    DEFAULT,
    Setting("scrfd-500m", fit="square"),
    Setting("scrfd-500m", fit="native"),
    Setting("scrfd-500m", 480),
    Setting("scrfd-500m", 320),
    Setting("scrfd-500m", 640, 0.5),
    REFERENCE,
    Setting("scrfd-2.5g", fit="square"),
    Setting("scrfd-2.5g", 480),
    Setting("scrfd-2.5g", 320),
    Setting("scrfd-2.5g", 640, 0.5),
    Setting("yunet"),
    Setting("yunet", 640, 0.5),
)


def build(setting: Setting) -> Any:
    """A loaded detector for ``setting`` (a subclass for the fits dfscan does not use)."""
    from operators.detect_faces import SCRFDDetector, build_detector

    class OtherFitSCRFD(SCRFDDetector):
        def input_scale(self, width: int, height: int) -> float:
            return setting.shrink(width, height)

        def input_size(self, width: int, height: int) -> tuple[int, int]:
            return setting.input_size(width, height)

    det = build_detector(setting.config())
    if setting.fit != "aspect":
        det = OtherFitSCRFD(setting.config())
    det.load()
    return det


@dataclass
class Tally:
    """Running totals of one setting over one set of videos."""

    frames: int = 0
    input_pixels: int = 0  # summed over frames: what the network computed on
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # all threads of this process: less disturbed by neighbours
    resize_seconds: float = 0.0
    detections: int = 0
    unmatched: int = 0  # detections matching no reference face
    ref_by_bucket: list[int] = field(default_factory=lambda: [0] * len(SIZE_BUCKETS))
    hit_by_bucket: list[int] = field(default_factory=lambda: [0] * len(SIZE_BUCKETS))

    def add(self, other: Tally) -> None:
        self.frames += other.frames
        self.input_pixels += other.input_pixels
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds
        self.resize_seconds += other.resize_seconds
        self.detections += other.detections
        self.unmatched += other.unmatched
        for i in range(len(SIZE_BUCKETS)):
            self.ref_by_bucket[i] += other.ref_by_bucket[i]
            self.hit_by_bucket[i] += other.hit_by_bucket[i]

    @property
    def ms_per_frame(self) -> float:
        return 1000 * self.seconds / max(self.frames, 1)

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1000 * self.cpu_seconds / max(self.frames, 1)

    @property
    def recall(self) -> float:
        return sum(self.hit_by_bucket) / max(sum(self.ref_by_bucket), 1)

    def bucket_recall(self, i: int) -> float | None:
        return self.hit_by_bucket[i] / self.ref_by_bucket[i] if self.ref_by_bucket[i] else None


def iou_matrix(a: list[Detection], b: list[Detection]) -> np.ndarray:
    """Pairwise IoU of two lists of boxes, shape (len(a), len(b))."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    pa, pb = np.array([d.bbox for d in a]), np.array([d.bbox for d in b])
    ix = np.clip(
        np.minimum(pa[:, None, 2], pb[None, :, 2]) - np.maximum(pa[:, None, 0], pb[None, :, 0]),
        0,
        None,
    )
    iy = np.clip(
        np.minimum(pa[:, None, 3], pb[None, :, 3]) - np.maximum(pa[:, None, 1], pb[None, :, 1]),
        0,
        None,
    )
    inter = ix * iy
    area_a = (pa[:, 2] - pa[:, 0]) * (pa[:, 3] - pa[:, 1])
    area_b = (pb[:, 2] - pb[:, 0]) * (pb[:, 3] - pb[:, 1])
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter))


def matched(reference: list[Detection], found: list[Detection]) -> list[bool]:
    """Per reference face: does a found face overlap it (IoU >= 0.5), one-to-one?"""
    from scipy.optimize import linear_sum_assignment

    hits = [False] * len(reference)
    iou = iou_matrix(reference, found)
    if iou.size:
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols, strict=True):
            hits[r] = bool(iou[r, c] >= IOU_MATCH)
    return hits


def bucket_of(det: Detection) -> int | None:
    side = min(det.bbox[2] - det.bbox[0], det.bbox[3] - det.bbox[1])
    for i, (lo, hi) in enumerate(SIZE_BUCKETS):
        if lo <= side < hi:
            return i
    return None


def resize_seconds(setting: Setting, frames: list[np.ndarray]) -> float:
    """Time of the resizes done before the network, timed alone: the detector's shrink
    (INTER_AREA: det_scale, and YuNet's det_size cap), then for SCRFD insightface's fit
    into its input (cv2.resize, INTER_LINEAR; a copy when the sizes already match)."""
    t0 = time.perf_counter()
    for img in frames:
        h, w = img.shape[:2]
        s = setting.shrink(w, h)
        if s < 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        if setting.detector == "yunet":
            continue
        h, w = img.shape[:2]
        iw, ih = setting.input_size(w, h)
        r = min(iw / w, ih / h)
        cv2.resize(img, (max(1, int(w * r)), max(1, int(h * r))))
    return time.perf_counter() - t0


def decode(video: Path, sampling: SamplingConfig) -> list[np.ndarray]:
    from operators.decode_frames import FrameDecoder

    with FrameDecoder(sampling, LimitsConfig(isolate=False)).open(str(video)) as decoded:
        return [f.image for f in decoded.frames]


def measure_video(
    detectors: dict[Setting, Any], frames: list[np.ndarray], repeat: int
) -> dict[Setting, Tally]:
    """Every setting on the same frames; the best of ``repeat`` timings (the machine is
    shared, so the minimum is the least disturbed run); recall from the first run.

    Wall time is what a scan waits; CPU time (every thread of this process) is the cost,
    and moves less when other processes compete for the cores."""
    found: dict[Setting, list[list[Detection]]] = {}
    out: dict[Setting, Tally] = {}
    for setting, det in detectors.items():
        wall = cpu = math.inf
        for i in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            dets = det.detect_batch(frames)
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
            if i == 0:
                found[setting] = dets
        resize = min(resize_seconds(setting, frames) for _ in range(repeat))
        area = sum(int(np.prod(setting.input_size(f.shape[1], f.shape[0]))) for f in frames)
        out[setting] = Tally(
            frames=len(frames),
            input_pixels=area,
            seconds=wall,
            cpu_seconds=cpu,
            resize_seconds=resize,
        )
    for setting, tally in out.items():
        for ref, got in zip(found[REFERENCE], found[setting], strict=True):
            hits = matched(ref, got)
            tally.detections += len(got)
            tally.unmatched += len(got) - sum(hits)
            for det, hit in zip(ref, hits, strict=True):
                b = bucket_of(det)
                if b is not None:
                    tally.ref_by_bucket[b] += 1
                    tally.hit_by_bucket[b] += hit
    return out


def batching_probe(rounds: int = 10, batch: int = 8) -> list[dict[str, Any]]:
    """Would batching SCRFD frames pay on this machine?

    The shipped graphs declare batch 1 and ONNX Runtime refuses more. With the batch axis
    made dynamic they run: the outputs are (H, W, N, anchors)-interleaved, so frame n's
    rows are ``out.reshape(cells, N, A, k)[:, n]``; this checks they equal single-frame
    runs, then times ``batch`` frames as one run against ``batch`` single runs
    (alternating, ``rounds`` times; medians)."""
    import onnx
    import onnxruntime as ort

    from operators.detect_faces import ort_session_options

    out = []
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, 640, 640)).astype(np.float32)
    for name in ("scrfd-500m", "scrfd-2.5g"):
        path = DetectorConfig.build(name).model_path
        model = onnx.load(path)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        declared = [d.dim_param or d.dim_value for d in dims]
        stock = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        try:
            stock.run(None, {stock.get_inputs()[0].name: x[:2]})
            refusal = ""
        except Exception as err:  # ORT raises its own Fail/InvalidArgument types
            refusal = str(err).splitlines()[0]
        dims[0].dim_param = "N"
        for o in model.graph.output:  # stale fixed lengths would only warn; drop them
            o.type.tensor_type.ClearField("shape")
        so = ort_session_options()
        so.log_severity_level = 3
        sess = ort.InferenceSession(
            model.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        feed = sess.get_inputs()[0].name
        batched = sess.run(None, {feed: x})
        singles = [sess.run(None, {feed: x[n : n + 1]}) for n in range(batch)]
        diff = 0.0
        for k, out_k in enumerate(batched):
            width = out_k.shape[1]
            per_frame = out_k.reshape(-1, batch, 2, width)  # 2 anchors per cell
            for n in range(batch):
                diff = max(
                    diff, float(np.abs(per_frame[:, n].reshape(-1, width) - singles[n][k]).max())
                )
        one: list[float] = []
        many: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for n in range(batch):
                sess.run(None, {feed: x[n : n + 1]})
            one.append((time.perf_counter() - t0) / batch)
            t0 = time.perf_counter()
            sess.run(None, {feed: x})
            many.append((time.perf_counter() - t0) / batch)
        out.append(
            {
                "detector": name,
                "declared_input": declared,
                "stock_batch2_error": refusal,
                "batched_vs_single_max_abs_diff": diff,
                "ms_per_frame_batch1": 1000 * statistics.median(one),
                f"ms_per_frame_batch{batch}": 1000 * statistics.median(many),
            }
        )
    return out


def video_sets(args: argparse.Namespace) -> dict[str, list[Path]]:
    sets = {"real": sorted(Path(args.videos).glob("*.mp4"))}
    if not args.no_corpus:
        from benchmarks.corpus import CLIPS, build_corpus

        folder = build_corpus()  # cached after the first run
        sets["generated"] = [folder / spec.filename for spec in CLIPS]
    return sets


def run(args: argparse.Namespace) -> dict[str, Any]:
    sampling = SamplingConfig.parse(args.frames)
    detectors = {}
    warm = np.zeros((720, 1280, 3), np.uint8)
    for s in SETTINGS:
        det = build(s)
        det.detect_batch([warm])  # the first run allocates
        detectors[s] = det
    load_before = os.getloadavg()
    per_set: dict[str, dict[Setting, Tally]] = {}
    for set_name, videos in video_sets(args).items():
        totals = {s: Tally() for s in SETTINGS}
        for video in videos:
            frames = decode(video, sampling)
            for s, tally in measure_video(detectors, frames, args.repeat).items():
                totals[s].add(tally)
            print(f"  {set_name}/{video.name}: {len(frames)} frames", file=sys.stderr)
        per_set[set_name] = totals
    if len(per_set) > 1:
        everything = {s: Tally() for s in SETTINGS}
        for totals in per_set.values():
            for s, tally in totals.items():
                everything[s].add(tally)
        per_set["all"] = everything
    return {
        "sampling": str(sampling),
        "repeat": args.repeat,
        "cores": len(os.sched_getaffinity(0)),
        "loadavg_1m": [load_before[0], os.getloadavg()[0]],
        "reference": REFERENCE.label,
        "default": DEFAULT.label,
        "iou_match": IOU_MATCH,
        "size_buckets_px": [[lo, None if hi == math.inf else hi] for lo, hi in SIZE_BUCKETS],
        "sets": {
            name: [_row(s, totals[s], totals[DEFAULT]) for s in SETTINGS]
            for name, totals in per_set.items()
        },
        "batching": batching_probe() if not args.no_batching else [],
    }


def _row(s: Setting, t: Tally, default: Tally) -> dict[str, Any]:
    return {
        "setting": s.label,
        **asdict(s),
        "frames": t.frames,
        "mean_input_kpx": t.input_pixels / max(t.frames, 1) / 1000,
        "ms_per_frame": t.ms_per_frame,
        "cpu_ms_per_frame": t.cpu_ms_per_frame,
        "resize_ms_per_frame": 1000 * t.resize_seconds / max(t.frames, 1),
        "speed_vs_default": default.ms_per_frame / t.ms_per_frame if t.seconds else None,
        "cpu_speed_vs_default": (
            default.cpu_ms_per_frame / t.cpu_ms_per_frame if t.cpu_seconds else None
        ),
        "recall": t.recall,
        "recall_by_size": [t.bucket_recall(i) for i in range(len(SIZE_BUCKETS))],
        "reference_faces_by_size": t.ref_by_bucket,
        "detections": t.detections,
        "unmatched_detections": t.unmatched,
    }


def _bucket_name(lo: int, hi: float) -> str:
    return f"{lo}+ px" if hi == math.inf else f"{lo}-{int(hi)} px"


def print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 170))
    for name, rows in result["sets"].items():
        refs = rows[0]["reference_faces_by_size"]
        t = Table(
            title=f"detection on {name} videos ({rows[0]['frames']} frames, {result['sampling']}):"
            f" recall vs {result['reference']} full frame, IoU >= {result['iou_match']}"
        )
        cols = ["setting", "input kpx", "ms/frame", "CPU ms/frame", "resize ms/frame"]
        cols += ["x default", "x default (CPU)", "recall"]
        cols += [
            f"{_bucket_name(lo, hi)} ({n})" for (lo, hi), n in zip(SIZE_BUCKETS, refs, strict=True)
        ]
        cols += ["unmatched dets"]
        for c in cols:
            t.add_column(c, justify="left" if c == "setting" else "right")
        for r in rows:
            by_size = ["-" if v is None else f"{v:.3f}" for v in r["recall_by_size"]]
            t.add_row(
                r["setting"] + (" (default)" if r["setting"] == result["default"] else ""),
                f"{r['mean_input_kpx']:.0f}",
                f"{r['ms_per_frame']:.1f}",
                f"{r['cpu_ms_per_frame']:.1f}",
                f"{r['resize_ms_per_frame']:.2f}",
                f"{r['speed_vs_default']:.2f}x",
                f"{r['cpu_speed_vs_default']:.2f}x",
                f"{r['recall']:.3f}",
                *by_size,
                str(r["unmatched_detections"]),
            )
        console.print(t)
    if result["batching"]:
        b = Table(
            title="SCRFD batching probe: 640x640, the network alone (graph batch axis made dynamic)"
        )
        for c in (
            "detector",
            "declared input",
            "stock file, batch 2",
            "batched == single",
            "ms/frame batch 1",
            "ms/frame batch 8",
        ):
            b.add_column(c)
        for r in result["batching"]:
            b.add_row(
                r["detector"],
                str(r["declared_input"]),
                r["stock_batch2_error"] or "accepted",
                f"max abs diff {r['batched_vs_single_max_abs_diff']:.1e}",
                f"{r['ms_per_frame_batch1']:.1f}",
                f"{r['ms_per_frame_batch8']:.1f}",
            )
        console.print(b)
    lo, hi = result["loadavg_1m"]
    console.print(
        f"1-minute load average before/after: {lo:.2f} / {hi:.2f} on {result['cores']} cores"
    )


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", default=str(shared_dir() / "data" / "videos" / "real"))
    p.add_argument(
        "--no-corpus", action="store_true", help="only --videos, not the generated clips"
    )
    p.add_argument("--frames", default="uniform:32")
    p.add_argument(
        "--repeat", type=int, default=2, help="timed runs per setting and video (best kept)"
    )
    p.add_argument("--no-batching", action="store_true", help="skip the SCRFD batching probe")
    p.add_argument(
        "--json",
        default=str(RESULTS),
        help=f"write the numbers here (default {RESULTS.relative_to(ROOT)})",
    )
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    result = run(args)
    print_tables(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
