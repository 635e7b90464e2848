"""Per-video decisions from face scores."""

from __future__ import annotations

import json

import pytest

from operators.aggregate import DECISION_RULES, aggregate_video, confident_strategy
from pipelines.config import AggregateConfig
from schemas.records import (
    DetectorInfo,
    FaceCrop,
    ScoredVideo,
    VideoFaces,
    VideoRef,
    VideoStatus,
)


def face(frame: int, track: int) -> FaceCrop:
    return FaceCrop(frame, frame / 25, track, (0, 0, 10, 10), (0.0,) * 10, 0.9, b"j", 8, 8)


def video(faces: list[FaceCrop], status: VideoStatus = VideoStatus.SCORED, **kw) -> VideoFaces:
    return VideoFaces(
        VideoRef("vid", "file:///v.mp4", 10, None),
        status,
        DetectorInfo("scrfd-500m", "abc"),
        "uniform:32",
        faces=tuple(faces),
        **kw,
    )


def aggregate(v: VideoFaces, scores: list[float] | None, **cfg):
    scored = ScoredVideo(v, tuple(scores), "m-1") if scores is not None else None
    return aggregate_video(
        v,
        scored,
        AggregateConfig(**cfg),
        model_version="m-1",
        model_arch="mobilenet_v2",
        run_id="r",
        scanned_at=0.0,
    )


def test_confident_strategy_averages_confident_fakes_when_many():
    scores = [0.95] * 12 + [0.1] * 8
    assert confident_strategy(scores) == pytest.approx(0.95)


def test_confident_strategy_averages_confident_reals_when_almost_all():
    scores = [0.05] * 19 + [0.6]
    assert confident_strategy(scores) == pytest.approx(0.05)


def test_confident_strategy_falls_back_to_the_mean():
    assert confident_strategy([0.9, 0.1, 0.5]) == pytest.approx(0.5)


def test_one_fake_track_among_real_ones_decides_the_video():
    faces = [face(i, 0) for i in range(10)] + [face(i, 1) for i in range(10)]
    scores = [0.1] * 10 + [0.9] * 10
    row = aggregate(video(faces), scores)
    assert row.status == VideoStatus.SCORED
    assert row.score_mean == pytest.approx(0.5)
    assert row.fake_probability == pytest.approx(0.9)
    assert row.label == "FAKE"
    assert row.tracks == 2
    tracks = json.loads(row.track_scores)
    assert [t["track_id"] for t in tracks] == [0, 1]
    assert tracks[1]["frames"][0] == [0, 0.0, 0.9]


def test_single_face_track_does_not_decide_when_longer_tracks_exist():
    faces = [face(i, 0) for i in range(5)] + [face(3, 1)]
    row = aggregate(video(faces), [0.1] * 5 + [0.99])
    assert row.fake_probability == pytest.approx(0.1)
    assert row.label == "REAL"
    assert row.score_max == pytest.approx(0.99)


@pytest.mark.parametrize("rule,expected", [("mean", 0.4), ("max", 0.7), ("track_mean_max", 0.4)])
def test_rule_is_configurable(rule: str, expected: float):
    faces = [face(i, 0) for i in range(3)]
    row = aggregate(video(faces), [0.1, 0.4, 0.7], rule=rule)
    assert row.fake_probability == pytest.approx(expected)
    assert row.decision_rule == rule
    assert rule in DECISION_RULES


def test_threshold_sets_the_label():
    faces = [face(i, 0) for i in range(3)]
    assert aggregate(video(faces), [0.4] * 3, threshold=0.3).label == "FAKE"
    assert aggregate(video(faces), [0.4] * 3, threshold=0.5).label == "REAL"


@pytest.mark.parametrize(
    "status",
    [VideoStatus.DECODE_ERROR, VideoStatus.NO_FACE, VideoStatus.UNSUPPORTED, VideoStatus.TIMEOUT],
)
def test_video_without_scores_keeps_its_status_and_no_probability(status: VideoStatus):
    row = aggregate(video([], status=status, error="why"), None)
    assert row.status == status
    assert row.fake_probability is None and row.label is None
    assert row.error == "why"
    assert json.loads(row.track_scores) == []
