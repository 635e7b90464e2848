"""Typed configuration, built once at the edge (the CLI) and passed to operators.

Every config is a frozen, picklable dataclass: operators keep them in their
constructors and ship them to remote workers unchanged. Parsing of user strings
(``uniform:32``) happens here, so a typo fails on the driver with one clear line,
not on a remote worker.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A user-supplied setting is invalid; the message is shown as one line."""


def shared_dir() -> Path:
    """Where the shared models and data live (``DFSCAN_SHARED`` or ``../shared``)."""
    env = os.environ.get("DFSCAN_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared"


@dataclass(frozen=True)
class SamplingConfig:
    """Which frames to decode: ``uniform:N``, ``fps:F`` or ``keyframes``."""

    policy: str = "uniform"
    count: int = 32  # uniform: frames spread over the duration (32, as DFDC-era detectors)
    fps: float = 1.0  # fps: frames per second of video time

    POLICIES = ("uniform", "fps", "keyframes")

    @classmethod
    def parse(cls, text: str) -> SamplingConfig:
        name, _, arg = text.strip().partition(":")
        if name == "uniform":
            try:
                count = int(arg) if arg else 32
            except ValueError:
                raise ConfigError(f"--frames uniform:N needs an integer N, got {arg!r}") from None
            if count < 1:
                raise ConfigError(f"--frames uniform:N needs N >= 1, got {count}")
            return cls("uniform", count=count)
        if name == "fps":
            try:
                fps = float(arg) if arg else 1.0
            except ValueError:
                raise ConfigError(f"--frames fps:F needs a number F, got {arg!r}") from None
            if not fps > 0:
                raise ConfigError(f"--frames fps:F needs F > 0, got {fps}")
            return cls("fps", fps=fps)
        if name == "keyframes" and not arg:
            return cls("keyframes")
        raise ConfigError(f"unknown --frames {text!r}: use uniform:N, fps:F or keyframes")

    def __str__(self) -> str:
        if self.policy == "uniform":
            return f"uniform:{self.count}"
        if self.policy == "fps":
            return f"fps:{self.fps:g}"
        return "keyframes"


# Detector names users type, mapped to the model file under shared/models.
DETECTOR_FILES: dict[str, str] = {
    "scrfd-500m": "scrfd/det_500m.onnx",
    "scrfd-2.5g": "scrfd/det_2.5g.onnx",
    "yunet": "yunet/face_detection_yunet_2023mar.onnx",
}


@dataclass(frozen=True)
class DetectorConfig:
    name: str = "scrfd-500m"
    model_path: str = ""  # local path or fsspec URI of the ONNX file
    det_size: int = 640  # long side of the detector input (SCRFD: a multiple of 32)
    # Frame shrunk by this (INTER_AREA) before detection; boxes map back to full size.
    det_scale: float = 1.0
    score_threshold: float = 0.5
    nms_threshold: float = 0.4
    max_faces: int = 8  # per frame, largest first; crowds beyond this are not the use case
    min_face_px: int = 20  # shorter box side in px; smaller faces carry too little to classify
    device: str = "auto"  # auto|cpu|cuda: ONNX Runtime provider choice
    # sha256 the model file must have; empty: the one operators/models/manifest.json lists
    model_sha256: str = ""

    @classmethod
    def build(cls, name: str, model_path: str | None = None, **kw: object) -> DetectorConfig:
        if name not in DETECTOR_FILES:
            raise ConfigError(
                f"unknown --detector {name!r}: choose one of {', '.join(DETECTOR_FILES)}"
            )
        path = model_path or str(shared_dir() / "models" / DETECTOR_FILES[name])
        return cls(name=name, model_path=path, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CropConfig:
    # Square box enlarged 1.3x (the FaceForensics++ convention). None: take the
    # checkpoint's own, so crops are cut the way the classifier was trained.
    scale: float | None = None
    size: int = 224  # crop side in pixels; the scan sets it from the checkpoint's input size
    jpeg_quality: int = 95  # high enough that the classifier sees little extra JPEG damage


# Video codecs an upload may use: what phones, browsers and editors write. Every other
# decoder (hundreds of rarely audited ones) never sees untrusted bytes.
ALLOWED_VIDEO_CODECS: tuple[str, ...] = (
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "av1",
    "mpeg4",
    "mpeg1video",
    "mpeg2video",
    "mjpeg",
    "gif",
    "h263",
    "flv1",
    "vc1",
    "wmv3",
    "theora",
    "prores",
)


@dataclass(frozen=True)
class LimitsConfig:
    """What one upload may cost, checked from the container header before any frame is
    decoded: uploads are adversarial, and a header is the cheapest place to say no."""

    max_bytes: int = 4 * 1024**3  # larger files get `too_large` before any read
    timeout_s: float = 300.0  # per-video wall clock for decode+detect
    # Per frame, from the header and as the decoder's own `max_pixels` (8K: a 16384x16384
    # header is refused before FFmpeg allocates a frame buffer for it).
    max_pixels: int = 8192 * 8192
    max_duration_s: float = 6 * 3600.0  # a longer declared duration is a lying header
    max_frames: int = 1_000_000  # declared or decoded; ~9 h at 30 fps
    max_streams: int = 16  # video + audio/subtitle tracks; dozens is a crafted file
    allowed_codecs: tuple[str, ...] = ALLOWED_VIDEO_CODECS  # FFmpeg codec ids (canonical)
    # Decode+detect in a child process that a crash or hang costs, not the run.
    isolate: bool = True
    # Decode workers per extractor (isolated only): 0 = one per core on the local runner,
    # where they are the scan's parallelism; one on Ray and Beam, which run an extractor
    # per actor or worker thread themselves.
    decode_workers: int = 0
    # Input URIs must sit under one of these (``file:///`` = any local file); empty:
    # no restriction (the CLI always sets some, see ``--allow-prefix``).
    allow_prefixes: tuple[str, ...] = ()


# How the classifier runs (operators/models/backends.py). ``auto``, decided on the worker:
# on CPU the fastest backend whose video-level AUC stays within 0.005 of eager torch
# (benchmarks/bench_scoring.py: onnx), on CUDA eager torch with fp16 autocast.
DEFAULT_SCORE_BACKEND = "auto"


@dataclass(frozen=True)
class ScorerConfig:
    checkpoint: str = ""  # local path or fsspec URI
    device: str = "auto"  # auto|cpu|cuda
    # Faces per forward pass; the CLI asks 256 on CUDA (scorers.default_batch_size).
    batch_size: int = 64  # 64 keeps CPU caches warm
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = one per available core
    backend: str = DEFAULT_SCORE_BACKEND  # auto | torch | torch-cl | onnx | int8


@dataclass(frozen=True)
class AggregateConfig:
    rule: str = "track_confident_max"
    threshold: float = 0.5
    min_track_faces: int = 2  # tracks shorter than this are detector noise for the decision
    confident_high: float = 0.8
    confident_low: float = 0.2


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs the operators, and its own settings."""

    name: str = "local"  # local | ray | beam
    ray_address: str | None = None  # None: start Ray in-process; "auto" or ray://host:10001
    beam_args: tuple[str, ...] = ()  # Beam pipeline options after `--`, passed untouched


# Words --since/--until accept, as UTC days back from the current one: a nightly cron
# runs `--since yesterday --until today` and never computes a date itself.
WINDOW_WORDS: dict[str, int] = {"today": 0, "yesterday": 1}


def _utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.timezone.utc)


def parse_instant(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """A ``--since``/``--until`` value as an aware UTC datetime.

    A date is that day's UTC midnight; ``today``/``yesterday`` are UTC days of ``now``
    (the clock unless given). A date-time must carry its timezone: a naive one would mean
    the machine's zone, which a cron pod and a laptop do not share.
    """
    raw = text.strip()
    word = raw.lower()
    if word in WINDOW_WORDS:
        current = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
        return _utc_midnight(current.date() - dt.timedelta(days=WINDOW_WORDS[word]))
    try:
        return _utc_midnight(dt.date.fromisoformat(raw))
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"not a date: {text!r} (use 2026-11-21, 2026-11-21T06:00:00+00:00, today or yesterday)"
        ) from None
    if value.tzinfo is None:
        raise ConfigError(f"{text!r} has no timezone: add Z or +HH:MM, or give a date (UTC day)")
    return value.astimezone(dt.timezone.utc)


@dataclass(frozen=True)
class TimeWindow:
    """Uploads in ``[since, until)``, UTC: what one incremental scan covers. An end left
    None is open. Half-open, so consecutive nightly windows never scan a video twice."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def __post_init__(self) -> None:
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None and value.tzinfo is None:
                raise ConfigError(f"--{name} {value.isoformat()} has no timezone")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ConfigError(
                f"--since {self.since.isoformat()} is not before --until"
                f" {self.until.isoformat()}: the window is empty"
            )

    def contains(self, timestamp: float) -> bool:
        """Whether an upload at ``timestamp`` (seconds since the epoch) is in the window."""
        if self.since is not None and timestamp < self.since.timestamp():
            return False
        return self.until is None or timestamp < self.until.timestamp()

    def __str__(self) -> str:
        since = self.since.isoformat() if self.since else "-inf"
        until = self.until.isoformat() if self.until else "+inf"
        return f"[{since}, {until})"


@dataclass(frozen=True)
class ScanConfig:
    input_uri: str
    out_uri: str
    warehouse_url: str
    run_id: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    storage_options: dict[str, object] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    pushgateway: str | None = None
    push_interval_s: float = 15.0  # Pushgateway push period; Prometheus scrapes it every 15 s
    # Videos per face shard: ~500 faces, ~5-10 MB. Small enough that scoring (after the
    # shard commit) starts soon after decoding, large enough to keep part counts sane.
    shard_max_videos: int = 16
    # Warehouse rows per transaction; a scan of fewer than 8 x this many commits about
    # an eighth of its rows at a time (pipelines.graph.rows_per_transaction).
    warehouse_max_rows: int = 256
    progress: bool = True
    rescan: bool = False  # decode again what the warehouse has under this model version
    # Only uploads in this window (--since/--until); None: everything listed.
    window: TimeWindow | None = None
    # No --threshold given: use the checkpoint's calibrated threshold when it has one.
    threshold_from_model: bool = False

    @property
    def crop_scale(self) -> float:
        return self.crop.scale if self.crop.scale is not None else 1.3

    @property
    def faces_uri(self) -> str:
        return self.out_uri.rstrip("/") + "/faces"


@dataclass(frozen=True)
class RescoreConfig:
    """``dfscan rescore``: score committed face shards with another checkpoint."""

    faces_uri: str
    warehouse_url: str
    run_id: str
    scorer: ScorerConfig
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    storage_options: dict[str, object] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rescan: bool = False  # score again videos that already have a row under this model
    progress: bool = True
    # No --threshold given: use the checkpoint's calibrated threshold when it has one.
    threshold_from_model: bool = False
