"""``dfscan plan``: workers and GPUs for a daily volume, from costs measured by ``make bench``.

Measured inputs (``benchmarks/results/throughput.json``, written by
``benchmarks/bench_throughput.py`` on the machine that ran it): decode CPU-seconds per
second of video for the chosen sampling, detector CPU-seconds per frame, faces per
frame, classifier CPU-seconds per face. Published inputs (not measured here, each named
in the output): a GPU's classifier throughput relative to one CPU core, from vendor
inference figures for small CNNs at fp16 and batch >= 256. The arithmetic is printed, so
every number can be checked by hand; ``docs/capacity.md`` is this command's output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError
from pipelines.limits_cli import _positive

DEFAULT_COSTS = (
    Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "throughput.json"
)

# Published figures, not measured here: faces/s of a MobileNetV2/ResNet18-class classifier
# at fp16, batch 256, on one GPU (vendor and MLPerf-style inference results for small
# CNNs at 224 px, rounded down). Replace with your own measurement when you have the GPU.
GPU_FACES_PER_S: dict[str, float] = {
    "t4": 4000.0,
    "l4": 7000.0,
    "a10g": 8000.0,
    "a100": 20000.0,
    "h100": 35000.0,
}
HEADROOM = 0.7  # plan for 70% utilisation: retries, skew between videos, daily peaks
FRAMES_PER_VIDEO = 32  # uniform:32, the default sampling


@dataclass(frozen=True)
class MeasuredCosts:
    decode_s_per_video_s: float
    detect_s_per_frame: float
    faces_per_frame: float
    score_s_per_face: float
    source: str


def load_costs(path: Path) -> MeasuredCosts:
    """The measured costs in ``path``; a missing, unreadable or misshapen file is a
    ``ConfigError`` that names the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no measured costs at {path}: run `make bench` first") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read measured costs {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scans"), list):
        raise ConfigError(
            f'{path} has no "scans" list: not a throughput.json written by `make bench`'
        )
    scans = [
        s
        for s in data["scans"]
        if isinstance(s, dict) and s.get("runner") == "local" and s.get("frames") == "uniform:32"
    ]
    if not scans or not data.get("video_seconds"):
        raise ConfigError(f"{path} has no local uniform:32 scan with video_seconds")
    scan, floors = scans[0], data.get("floors")
    if not isinstance(floors, dict):
        raise ConfigError(f'{path} has no "floors" object: rerun `make bench`')
    local = "scans[local uniform:32]"
    return MeasuredCosts(
        # CPU seconds of the scan's decoder alone when measured (decode_s is wall time
        # inside workers that share the cores, an upper bound).
        decode_s_per_video_s=_cost(path, local, scan, "decode_cpu_s", "decode_s")
        / _cost(path, "", data, "video_seconds"),
        detect_s_per_frame=_cost(path, "floors", floors, "detector_s_per_frame"),
        # A bench video may show no face: zero faces (and frames) are measurements too.
        faces_per_frame=_cost(path, local, scan, "faces", zero_ok=True)
        / max(1.0, _cost(path, local, scan, "frames_n", zero_ok=True)),
        score_s_per_face=_cost(path, "floors", floors, "scorer_s_per_face"),
        source=_shown(path),
    )


def _cost(path: Path, where: str, obj: dict[str, Any], *keys: str, zero_ok: bool = False) -> float:
    """The first of ``keys`` present in ``obj`` (the part of the file at ``where``): a
    finite number > 0, or >= 0 with ``zero_ok``."""

    def name(key: str) -> str:
        return f"{where}.{key}" if where else key

    key = next((k for k in keys if k in obj), None)
    if key is None:
        raise ConfigError(f"{path} lacks {' or '.join(map(name, keys))}: rerun `make bench`")
    value = obj[key]
    number = math.nan  # bool is an int to Python, not a measurement
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # json reads ints of any size
            number = float(value)  # and NaN and Infinity, which isfinite refuses
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        got = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ConfigError(f"{path}: {name(key)} must be a finite number {bound}, got {got}")
    return number


def _shown(path: Path) -> str:
    """The costs file as the docs name it: relative to the project when inside it."""
    root = DEFAULT_COSTS.parent.parent.parent
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def plan(
    costs: MeasuredCosts,
    videos_per_day: int,
    mean_duration_s: float,
    gpu_type: str | None,
    cores_per_node: int,
) -> list[tuple[str, str]]:
    """Lines of (quantity, arithmetic = result) for the plan."""
    lines: list[tuple[str, str]] = []
    decode = costs.decode_s_per_video_s * mean_duration_s
    detect = costs.detect_s_per_frame * FRAMES_PER_VIDEO
    faces = costs.faces_per_frame * FRAMES_PER_VIDEO
    score_cpu = costs.score_s_per_face * faces
    lines.append(
        (
            "decode per video",
            f"{costs.decode_s_per_video_s:.4f} s/s x {mean_duration_s:g} s = {decode:.3f} core-s",
        )
    )
    lines.append(
        (
            "detect per video",
            f"{costs.detect_s_per_frame * 1e3:.1f} ms x {FRAMES_PER_VIDEO} = {detect:.3f} core-s",
        )
    )
    lines.append(
        (
            "faces per video",
            f"{costs.faces_per_frame:.2f} faces/frame x {FRAMES_PER_VIDEO} = {faces:.1f}",
        )
    )
    cpu_per_video = decode + detect + (0.0 if gpu_type else score_cpu)
    if not gpu_type:
        lines.append(
            (
                "score per video (CPU)",
                f"{costs.score_s_per_face * 1e3:.2f} ms x {faces:.1f} = {score_cpu:.3f} core-s",
            )
        )
    cpu_day = cpu_per_video * videos_per_day
    cores = cpu_day / 86400 / HEADROOM
    nodes = math.ceil(cores / cores_per_node)
    lines.append(
        (
            "CPU per day",
            f"{cpu_per_video:.3f} core-s x {videos_per_day:,} = {cpu_day / 3600:,.0f} core-h",
        )
    )
    lines.append(
        (
            "CPU cores needed",
            f"{cpu_day:,.0f} core-s / 86400 s / {HEADROOM} headroom = {cores:,.1f} cores",
        )
    )
    lines.append(
        (f"CPU nodes ({cores_per_node} cores)", f"ceil({cores:,.1f} / {cores_per_node}) = {nodes}")
    )
    gpu_line = "scoring on the CPU nodes (no --gpu-type)"
    if gpu_type:
        rate = GPU_FACES_PER_S[gpu_type]
        faces_day = faces * videos_per_day
        gpus = max(1, math.ceil(faces_day / 86400 / rate / HEADROOM))
        gpu_line = (
            f"{faces_day:,.0f} faces / 86400 s / {rate:,.0f} faces/s (published, "
            f"{gpu_type}) / {HEADROOM} = {gpus} GPU(s)"
        )
    lines.append(("GPU scorers", gpu_line))
    year_node_h = cpu_per_video * videos_per_day * 365 / 3600 / cores_per_node
    lines.append(
        (
            "backfill of a year",
            f"{cpu_per_video:.3f} core-s x {videos_per_day * 365:,} videos / 3600 / "
            f"{cores_per_node} = {year_node_h:,.0f} node-hours",
        )
    )
    shares = {"decode": decode, "detect": detect, "score": 0.0 if gpu_type else score_cpu}
    top = max(shares, key=lambda k: shares[k])
    lines.append(("bottleneck", f"{top} ({shares[top] / cpu_per_video:.0%} of CPU per video)"))
    return lines


def register(sub: Any) -> None:
    p = sub.add_parser("plan", help="capacity plan from measured per-stage costs")
    p.add_argument("--videos-per-day", type=_positive(int), required=True)
    p.add_argument(
        "--mean-duration", type=_positive(float), required=True, help="seconds per video"
    )
    p.add_argument(
        "--gpu-type",
        choices=sorted(GPU_FACES_PER_S),
        help="score on GPUs of this type (published throughput)",
    )
    p.add_argument("--cores-per-node", type=_positive(int), default=16)
    p.add_argument("--costs", default=str(DEFAULT_COSTS), help="throughput.json from make bench")
    p.add_argument("--markdown", action="store_true", help="print as Markdown (docs/capacity.md)")
    p.set_defaults(func=run)


def render(args: argparse.Namespace, lines: list[tuple[str, str]], costs: MeasuredCosts) -> str:
    head = (
        f"Plan for {args.videos_per_day:,} videos/day of {args.mean_duration:g} s, "
        f"uniform:{FRAMES_PER_VIDEO}, {args.gpu_type or 'CPU-only'} scoring, "
        f"{args.cores_per_node}-core nodes"
    )
    src = f"Measured inputs: {costs.source} (make bench). Published inputs are marked."
    if args.markdown:
        rows = "\n".join(f"| {q} | {a} |" for q, a in lines)
        return f"### {head}\n\n{src}\n\n| quantity | arithmetic |\n|---|---|\n{rows}\n"
    width = max(len(q) for q, _ in lines)
    return "\n".join([head, src, *(f"  {q:<{width}}  {a}" for q, a in lines)])


def run(args: argparse.Namespace) -> int:
    costs = load_costs(Path(args.costs))
    try:
        lines = plan(
            costs, args.videos_per_day, args.mean_duration, args.gpu_type, args.cores_per_node
        )
    except OverflowError:
        # Each flag is finite and > 0, but their product can still pass a float's range.
        raise ConfigError(
            "too large to plan for (float overflow): check --videos-per-day, --mean-duration"
            " and --cores-per-node"
        ) from None
    print(render(args, lines, costs))
    return 0
