"""Records that flow between operators.

Every record is a frozen dataclass so a stage cannot mutate what an earlier stage
produced; stages derive new records with ``dataclasses.replace``. Records are plain
Python (numpy arrays only inside ``Frame``) so every engine can pickle them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class VideoStatus(str, enum.Enum):
    """Why a video has (or has no) score. One row per video carries exactly one."""

    SCORED = "scored"
    NO_FACE = "no_face"
    DECODE_ERROR = "decode_error"
    UNSUPPORTED = "unsupported"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"


@dataclass(frozen=True)
class VideoFile:
    """A file found by listing: where it is, before its content is read."""

    uri: str
    size_bytes: int
    mtime: float | None = None  # seconds since the epoch, when the store reports one
    # When the platform received the upload, where the listing knows it better than the
    # store's mtime: a manifest's uploaded_at, a date-partitioned input's day. NaN: the
    # listing knows there is none (an empty uploaded_at cell), so mtime must not stand in.
    uploaded_at: float | None = None


@dataclass(frozen=True)
class VideoRef:
    """A listed file with its content id (sha256 of the bytes)."""

    video_id: str
    uri: str
    size_bytes: int
    mtime: float | None = None  # as listed: with size, what tells a changed file
    uploaded_at: float | None = None  # as VideoFile.uploaded_at

    @property
    def upload_time(self) -> float | None:
        """The upload time the window and the shard partition go by: the listing's
        ``uploaded_at`` when it has one, else the store's modification time."""
        return self.uploaded_at if self.uploaded_at is not None else self.mtime


@dataclass(frozen=True)
class VideoMeta:
    """What the container header and the stream say about a video."""

    duration_s: float | None
    fps: float | None
    width: int
    height: int
    codec: str
    frame_count: int | None
    rotation: int = 0  # degrees, as displayed; applied to the decoded frames


@dataclass(frozen=True, eq=False)
class Frame:
    """One sampled, decoded frame: BGR uint8, already rotated for display."""

    index: int
    pts_s: float
    image: np.ndarray


@dataclass(frozen=True)
class Detection:
    """One face found in one frame, in full-frame pixel coordinates."""

    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    landmarks: tuple[float, ...]  # 5 points as x0, y0, ... x4, y4 (eyes, nose, mouth corners)
    score: float


@dataclass(frozen=True)
class FaceCrop:
    """A detected face, cropped and JPEG-encoded, tied to its frame and track."""

    frame_index: int
    pts_s: float
    track_id: int
    bbox: tuple[float, float, float, float]
    landmarks: tuple[float, ...]
    det_score: float
    jpeg: bytes
    crop_width: int
    crop_height: int


@dataclass(frozen=True)
class DetectorInfo:
    name: str
    sha256: str


@dataclass(frozen=True)
class VideoFaces:
    """The decode+detect result for one video: its faces, or the reason there are none."""

    ref: VideoRef
    status: VideoStatus
    detector: DetectorInfo
    sampling: str
    error: str | None = None
    meta: VideoMeta | None = None
    frames_sampled: int = 0
    frames_with_face: int = 0
    faces: tuple[FaceCrop, ...] = ()
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shard_uri: str | None = None  # set once the faces are committed to a shard


@dataclass(frozen=True)
class ScoredVideo:
    """Faces of one video with one fake probability per face (same order as ``faces``)."""

    video: VideoFaces
    scores: tuple[float, ...]
    model_version: str
    score_seconds: float = 0.0


@dataclass(frozen=True)
class TrackScore:
    """Scores of one face track: the per-track input to the video decision."""

    track_id: int
    faces: int
    mean: float
    confident: float
    max: float
    frames: tuple[tuple[int, float, float], ...]  # (frame_index, pts_s, score)


@dataclass(frozen=True)
class VideoScan:
    """One warehouse row: the verdict on one video under one model version."""

    video_id: str
    model_version: str
    uri: str
    size_bytes: int
    mtime: float | None
    status: VideoStatus
    error: str | None
    frames_sampled: int
    frames_with_face: int
    faces: int
    tracks: int
    score_mean: float | None
    score_max: float | None
    score_confident: float | None
    track_scores: str  # JSON list of TrackScore, per-frame scores included (for the UI)
    fake_probability: float | None
    label: str | None  # "FAKE" / "REAL", None when there is no score
    threshold: float
    decision_rule: str
    model_arch: str
    detector: str
    detector_sha256: str
    sampling: str
    duration_s: float | None
    width: int | None
    height: int | None
    decode_s: float
    detect_s: float
    score_s: float
    shard_uri: str | None
    run_id: str
    scanned_at: float  # seconds since the epoch (UTC)


@dataclass(frozen=True)
class ShardVideo:
    """A video whose faces are committed in a face shard: what a rescore reads instead
    of decoding the video again. ``frames_sampled`` and ``meta`` come from the video's
    earlier warehouse row (the shard holds only frames with a face)."""

    ref: VideoRef
    shard_uri: str
    detector: DetectorInfo
    sampling: str
    frames_sampled: int = 0
    meta: VideoMeta | None = None


@dataclass(frozen=True)
class TrainingRun:
    """One row of ``training_runs``: a training run or tuning trial, reproducible from its
    config, data hash and code version, and findable by the artifact it wrote."""

    run_id: str
    command: str  # train | tune | tune-trial
    status: str  # running | succeeded | failed
    config: str  # JSON text of the typed config
    data_hash: str
    code_version: str
    started_at: float  # seconds since the epoch (UTC)
    ended_at: float | None = None
    metrics: str | None = None  # JSON text
    artifact_uri: str | None = None
    parent_run_id: str | None = None
    error: str | None = None
