"""Give each face a track id across the sampled frames of one video.

A simple IoU tracker, hand-written because it is ~40 lines: tracking-by-detection
libraries bring motion models and re-identification that sparse samples (32 frames over
a whole video) cannot use. Matching open tracks to new detections is an assignment
problem, solved optimally with scipy's ``linear_sum_assignment`` rather than a greedy
loop, so the list order of detections never changes the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from schemas.records import Detection


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes (N,4) and (M,4) in x1, y1, x2, y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # last matched box: no motion model, sampled frames are too sparse
    missed: int = 0


class IouTracker:
    """Tracks faces over one video's sampled frames; feed the frames in order.

    ``max_gap`` is how many consecutive sampled frames a track may miss (a turned head, a
    detector miss) and still continue; a face seen again after more than that gets a new
    id. Ids start at 0 and grow in order of first appearance (list order within a frame).
    """

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 3) -> None:
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self._tracks: list[_Track] = []
        self._next_id = 0

    def update(self, detections: list[Detection]) -> list[int]:
        """Track id for each of ``detections`` (same order), continuing or starting tracks."""
        boxes = np.array([d.bbox for d in detections], dtype=np.float64).reshape(-1, 4)
        ids: list[int | None] = [None] * len(detections)
        matched: set[int] = set()
        if self._tracks and len(boxes):
            iou = iou_matrix(np.stack([t.box for t in self._tracks]), boxes)
            # Pairs under the threshold count as zero so they cannot win the assignment
            # at the expense of a valid pair.
            gain = np.where(iou >= self.iou_threshold, iou, 0.0)
            for r, c in zip(*linear_sum_assignment(gain, maximize=True), strict=True):
                if gain[r, c] > 0:
                    track = self._tracks[r]
                    track.box, track.missed = boxes[c], 0
                    ids[c] = track.track_id
                    matched.add(r)
        for r, track in enumerate(self._tracks):
            if r not in matched:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_gap]
        out: list[int] = []
        for c, track_id in enumerate(ids):
            if track_id is None:
                track_id = self._next_id
                self._next_id += 1
                self._tracks.append(_Track(track_id, boxes[c]))
            out.append(track_id)
        return out
