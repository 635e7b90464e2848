"""Track ids across sampled frames."""

from __future__ import annotations

from operators.track_faces import IouTracker
from schemas.records import Detection


def box(x: float, y: float, s: float = 100.0) -> Detection:
    return Detection((x, y, x + s, y + s), (0.0,) * 10, 0.9)


def test_two_slowly_moving_faces_keep_their_ids_over_ten_frames():
    t = IouTracker()
    seen = [t.update([box(10 + 5 * i, 10), box(400 - 5 * i, 40)]) for i in range(10)]
    assert seen == [[0, 1]] * 10


def test_swapped_order_of_detections_keeps_the_ids():
    t = IouTracker()
    assert t.update([box(10, 10), box(300, 40)]) == [0, 1]
    assert t.update([box(305, 40), box(15, 10)]) == [1, 0]
    assert t.update([box(20, 10), box(310, 40)]) == [0, 1]


def test_faces_crossing_each_other_keep_their_ids():
    # A walks right, B walks left, 40 px lower: their boxes overlap mid-way.
    t = IouTracker()
    for i in range(20):
        a, b = box(100 + 10 * i, 100), box(300 - 10 * i, 140)
        dets, expected = ([b, a], [1, 0]) if i % 2 else ([a, b], [0, 1])
        if i == 0:
            assert t.update([a, b]) == [0, 1]
        else:
            assert t.update(dets) == expected, f"frame {i}"


def test_face_gone_longer_than_max_gap_gets_a_new_id():
    t = IouTracker(max_gap=2)
    assert t.update([box(10, 10)]) == [0]
    for _ in range(3):
        assert t.update([]) == []
    assert t.update([box(10, 10)]) == [1]


def test_face_gone_within_max_gap_keeps_its_id():
    t = IouTracker(max_gap=2)
    t.update([box(10, 10)])
    t.update([])
    t.update([])
    assert t.update([box(12, 10)]) == [0]


def test_a_jump_below_the_iou_threshold_starts_a_new_track():
    t = IouTracker(iou_threshold=0.3)
    assert t.update([box(10, 10)]) == [0]
    assert t.update([box(80, 10)]) == [1]  # IoU 30*100 / 17000 = 0.18


def test_new_ids_follow_first_appearance():
    t = IouTracker()
    assert t.update([box(10, 10)]) == [0]
    assert t.update([box(400, 10), box(12, 10), box(200, 300)]) == [1, 0, 2]
    assert t.update([box(600, 300), box(200, 300)]) == [3, 2]


def test_tracking_is_deterministic_on_repeat():
    frames = [
        [box(10 + i, 10), box(200, 200 - i), box(400, 10), box(60 + 9 * i, 30)] for i in range(8)
    ]
    runs = []
    for _ in range(2):
        t = IouTracker()
        runs.append([t.update(f) for f in frames])
    assert runs[0] == runs[1]
    assert runs[0][0] == [0, 1, 2, 3]
