"""The detector flags, shared by ``dfscan scan`` and ``dfscan dataset build --videos`` so
a data set is cut exactly as a scan would cut it, and a new detector setting reaches both.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.config import DETECTOR_FILES, DetectorConfig
from pipelines.limits_cli import _fraction, _positive


def _det_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:  # 0 would be no frame at all; > 1 only adds pixels
        raise argparse.ArgumentTypeError(f"must be within (0, 1], got {text}")
    return value


def add_detector_arguments(p: Any) -> None:
    """``p``: a parser or an argument group."""
    p.add_argument("--detector", default="scrfd-500m", choices=sorted(DETECTOR_FILES))
    p.add_argument("--detector-model", help="ONNX file for the detector (default: shared models)")
    p.add_argument("--detector-sha256", help="sha256 of --detector-model (default: manifest's)")
    p.add_argument("--det-size", type=_positive(int), default=640, help="detector input side")
    p.add_argument(
        "--det-scale",
        type=_det_scale,
        default=1.0,
        help="shrink frames by this before detection, e.g. 0.5 (crops stay full size)",
    )
    p.add_argument("--det-threshold", type=_fraction, default=0.5)


def detector_from_args(args: argparse.Namespace) -> DetectorConfig:
    return DetectorConfig.build(
        args.detector,
        args.detector_model,
        det_size=args.det_size,
        det_scale=args.det_scale,
        score_threshold=args.det_threshold,
        device=args.device,
        model_sha256=(args.detector_sha256 or "").lower(),
    )
