"""Track ids across sampled frames."""

from __future__ import annotations

from operators.track_faces import IouTracker
from schemas.records import Detection


def box(x: float, y: float, s: float = 50.0) -> Detection:
    return Detection((x, y, x + s, y + s), (0.0,) * 10, 0.9)


def test_two_slowly_moving_faces_keep_their_ids():
    t = IouTracker()
    seen = [t.update([box(10 + 3 * i, 10), box(300 - 3 * i, 40)]) for i in range(10)]
    assert seen == [[0, 1]] * 10


def test_order_of_detections_does_not_swap_ids():
    t = IouTracker()
    assert t.update([box(10, 10), box(300, 40)]) == [0, 1]
    assert t.update([box(302, 40), box(12, 10)]) == [1, 0]


def test_face_gone_longer_than_the_gap_gets_a_new_id():
    t = IouTracker(max_gap=2)
    assert t.update([box(10, 10)]) == [0]
    for _ in range(3):
        assert t.update([]) == []
    assert t.update([box(10, 10)]) == [1]


def test_face_gone_within_the_gap_keeps_its_id():
    t = IouTracker(max_gap=2)
    t.update([box(10, 10)])
    t.update([])
    t.update([])
    assert t.update([box(12, 10)]) == [0]


def test_tracking_is_deterministic():
    frames = [[box(10 + i, 10), box(200, 200 - i), box(400, 10)] for i in range(6)]
    runs = []
    for _ in range(2):
        t = IouTracker()
        runs.append([t.update(f) for f in frames])
    assert runs[0] == runs[1]
