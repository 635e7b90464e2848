"""Per-video aggregation: face scores in, one verdict out. Pure functions.

Statistics kept for every scored video: mean, max, the DFDC winner's "confident
strategy", and per-track scores. Which of them becomes ``fake_probability`` is a
configurable rule, looked up in ``DECISION_RULES``:

- ``mean``: mean of all face scores.
- ``max``: the single most fake-looking face (sensitive, many false positives).
- ``confident``: the confident strategy over all faces (below).
- ``track_confident_max`` (default): the confident strategy within each track of at
  least ``min_track_faces`` faces, then the maximum over tracks. One deepfaked person
  among several real ones is not averaged away, and a one-frame false detection cannot
  decide the video.
- ``track_mean_max``: the same with a per-track mean.

Confident strategy (Selim Seferbekov's DFDC-winning rule): when more than 11 faces and
more than 40% of them score above ``high`` (0.8), average those; when more than 90% score
below ``low`` (0.2), average those; otherwise average everything. Confident frames win
over ambiguous ones without letting a single frame decide.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np

from operators.base import Operator, Resources
from pipelines.config import AggregateConfig
from schemas.records import ScoredVideo, TrackScore, VideoFaces, VideoScan, VideoStatus


def confident_strategy(
    scores: Sequence[float] | np.ndarray, high: float = 0.8, low: float = 0.2
) -> float:
    pred = np.asarray(scores, dtype=np.float64)
    if pred.size == 0:
        raise ValueError("confident_strategy needs at least one score")
    n = pred.size
    fakes = int(np.count_nonzero(pred > high))
    if fakes > n // 2.5 and fakes > 11:
        return float(pred[pred > high].mean())
    if np.count_nonzero(pred < low) > 0.9 * n:
        return float(pred[pred < low].mean())
    return float(pred.mean())


def track_scores(scored: ScoredVideo, cfg: AggregateConfig) -> list[TrackScore]:
    by_track: dict[int, list[tuple[int, float, float]]] = {}
    for face, score in zip(scored.video.faces, scored.scores, strict=True):
        by_track.setdefault(face.track_id, []).append((face.frame_index, face.pts_s, score))
    out = []
    for track_id in sorted(by_track):
        frames = by_track[track_id]
        s = [f[2] for f in frames]
        out.append(
            TrackScore(
                track_id=track_id,
                faces=len(s),
                mean=float(np.mean(s)),
                confident=confident_strategy(s, cfg.confident_high, cfg.confident_low),
                max=float(np.max(s)),
                frames=tuple(frames),
            )
        )
    return out


def _decisive(tracks: list[TrackScore], cfg: AggregateConfig) -> list[TrackScore]:
    long = [t for t in tracks if t.faces >= cfg.min_track_faces]
    return long or tracks  # every track short (e.g. keyframes on a short clip): use all


Rule = Callable[[np.ndarray, list[TrackScore], AggregateConfig], float]

DECISION_RULES: dict[str, Rule] = {
    "mean": lambda s, t, c: float(s.mean()),
    "max": lambda s, t, c: float(s.max()),
    "confident": lambda s, t, c: confident_strategy(s, c.confident_high, c.confident_low),
    "track_confident_max": lambda s, t, c: max(x.confident for x in _decisive(t, c)),
    "track_mean_max": lambda s, t, c: max(x.mean for x in _decisive(t, c)),
}


def aggregate_video(
    video: VideoFaces,
    scored: ScoredVideo | None,
    cfg: AggregateConfig,
    *,
    model_version: str,
    model_arch: str,
    run_id: str,
    scanned_at: float,
) -> VideoScan:
    """One warehouse row for one video. A video without scores keeps its typed status
    and gets no probability: nothing is silently scored 0.5."""
    if cfg.rule not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {cfg.rule!r}")
    meta = video.meta
    tracks: list[TrackScore] = []
    mean = mx = conf = prob = None
    label = None
    status = video.status
    score_s = 0.0
    if scored is not None and scored.scores:
        s = np.asarray(scored.scores, dtype=np.float64)
        tracks = track_scores(scored, cfg)
        mean, mx = float(s.mean()), float(s.max())
        conf = confident_strategy(s, cfg.confident_high, cfg.confident_low)
        prob = DECISION_RULES[cfg.rule](s, tracks, cfg)
        label = "FAKE" if prob >= cfg.threshold else "REAL"
        status = VideoStatus.SCORED
        score_s = scored.score_seconds
    elif status == VideoStatus.SCORED:
        status = VideoStatus.NO_FACE  # faces were expected but none reached the scorer
    return VideoScan(
        video_id=video.ref.video_id,
        model_version=model_version,
        uri=video.ref.uri,
        size_bytes=video.ref.size_bytes,
        mtime=video.ref.mtime,
        status=status,
        error=video.error,
        frames_sampled=video.frames_sampled,
        frames_with_face=video.frames_with_face,
        faces=len(video.faces),
        tracks=len({f.track_id for f in video.faces}),
        score_mean=mean,
        score_max=mx,
        score_confident=conf,
        track_scores=json.dumps([asdict(t) for t in tracks], separators=(",", ":")),
        fake_probability=prob,
        label=label,
        threshold=cfg.threshold,
        decision_rule=cfg.rule,
        model_arch=model_arch,
        detector=video.detector.name,
        detector_sha256=video.detector.sha256,
        sampling=video.sampling,
        duration_s=meta.duration_s if meta else None,
        width=meta.width if meta else None,
        height=meta.height if meta else None,
        decode_s=video.stage_seconds.get("decode", 0.0),
        detect_s=video.stage_seconds.get("detect", 0.0) + video.stage_seconds.get("crop", 0.0),
        score_s=score_s,
        shard_uri=video.shard_uri,
        run_id=run_id,
        scanned_at=scanned_at,
    )


class VideoAggregator(Operator[ScoredVideo, VideoScan]):
    """The aggregation as an operator, so every engine runs the same list of stages."""

    name = "aggregate"

    def __init__(
        self,
        cfg: AggregateConfig,
        model_version: str,
        model_arch: str,
        run_id: str,
        videos_per_batch: int = 64,
    ) -> None:
        if cfg.rule not in DECISION_RULES:
            raise ValueError(f"unknown decision rule {cfg.rule!r}")
        self.cfg = cfg
        self.model_version = model_version
        self.model_arch = model_arch
        self.run_id = run_id
        self.videos_per_batch = videos_per_batch

    @property
    def resources(self) -> Resources:
        # Arithmetic on a few hundred floats: the batch only sets how long rows wait
        # here before the warehouse writer sees them.
        return Resources(cpus=0.1, batch_size=self.videos_per_batch)

    def process_batch(self, items: list[ScoredVideo]) -> list[VideoScan]:
        import time

        now = time.time()
        return [
            aggregate_video(
                item.video,
                item,
                self.cfg,
                model_version=self.model_version,
                model_arch=self.model_arch,
                run_id=self.run_id,
                scanned_at=now,
            )
            for item in items
        ]
