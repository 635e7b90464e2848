"""Give each face a track id across the sampled frames of one video.

A simple IoU tracker, written here because it is a few lines: tracking-by-detection
libraries bring motion models and re-identification that sparse samples (32 frames
over a whole video) cannot use. Matching between the open tracks and the new
detections is an assignment problem solved with scipy's ``linear_sum_assignment``.
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
    box: np.ndarray
    missed: int = 0


class IouTracker:
    """Tracks faces over one video's sampled frames; feed frames in order.

    ``max_gap`` is how many consecutive sampled frames a track may miss (a turned head,
    a detector miss) before it ends; a face seen again after that gets a new id.
    """

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 3) -> None:
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self._tracks: list[_Track] = []
        self._next_id = 0

    def update(self, detections: list[Detection]) -> list[int]:
        """Track ids for ``detections`` (same order), continuing or starting tracks."""
        boxes = np.array([d.bbox for d in detections], dtype=np.float64).reshape(-1, 4)
        ids: list[int | None] = [None] * len(detections)
        matched_tracks: set[int] = set()
        if self._tracks and len(boxes):
            track_boxes = np.stack([t.box for t in self._tracks])
            iou = iou_matrix(track_boxes, boxes)
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols, strict=True):
                if iou[r, c] >= self.iou_threshold:
                    track = self._tracks[r]
                    track.box, track.missed = boxes[c], 0
                    ids[c] = track.track_id
                    matched_tracks.add(r)
        for i, track in enumerate(self._tracks):
            if i not in matched_tracks:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_gap]
        for c, track_id in enumerate(ids):
            if track_id is None:
                self._tracks.append(_Track(self._next_id, boxes[c]))
                ids[c] = self._next_id
                self._next_id += 1
        return [int(i) for i in ids if i is not None]
