"""Score every face crop of a batch of videos with one deepfake classifier.

Faces are pooled ACROSS the videos of a batch into forward passes of ``batch_size``, so
short videos do not each pay for a half-empty pass; scores are then split back per
video in face order. JPEGs are decoded in chunks of one forward pass, so memory stays at
one batch of crops whatever the number of faces.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from operators.base import Operator, Resources
from operators.models.backends import backend_name, score_backend
from operators.models.scorers import Scorer, build_scorer
from pipelines.config import ConfigError, ScorerConfig
from schemas.records import ScoredVideo, VideoFaces


class UndecodableCrop(ValueError):
    """A face crop whose bytes do not decode; ``index`` is its position in the call."""

    def __init__(self, index: int, size: int) -> None:
        super().__init__(f"face crop {index} is not a decodable JPEG ({size} bytes)")
        self.index = index
        self.size = size


def decode_crops(jpegs: Sequence[bytes], size: int) -> np.ndarray:
    """JPEG face crops -> uint8 RGB (N, size, size, 3), resized with INTER_AREA when needed.

    Shared by scoring, training and the Beam ModelHandler so all three see identical
    pixels. A crop that does not decode is a bug upstream (we wrote it), so it raises;
    labelled data (someone else's files) turns ``UndecodableCrop`` into a ConfigError
    that names the file.
    """
    out = np.empty((len(jpegs), size, size, 3), dtype=np.uint8)
    for i, jpeg in enumerate(jpegs):
        img = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise UndecodableCrop(i, len(jpeg))
        if img.shape[0] != size or img.shape[1] != size:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[i])
    return out


class FaceScorer(Operator[VideoFaces, ScoredVideo]):
    """VideoFaces -> ScoredVideo: one fake probability per face, in the order of ``faces``."""

    name = "score_faces"

    def __init__(
        self,
        cfg: ScorerConfig,
        storage_options: dict[str, Any] | None = None,
        videos_per_call: int = 8,
    ) -> None:
        if cfg.batch_size < 1:
            raise ConfigError(f"scorer batch size must be >= 1, got {cfg.batch_size}")
        backend_name(cfg.backend)  # a typo fails on the driver, not on a remote worker
        self.cfg = cfg
        # The checkpoint may live in the same bucket as the data (s3://models/...).
        self.storage_options = dict(storage_options or {})
        self.videos_per_call = max(1, videos_per_call)
        self._scorer: Scorer | None = None

    @property
    def resources(self) -> Resources:
        # 8 videos x ~32 sampled frames gives a few full forward passes of 64 faces per call;
        # fewer when face shards are smaller (a small scan), so scoring starts sooner.
        # A whole GPU when one is wanted and the engine has it; the adapter checks the cluster.
        # A CPU-only backend (int8) never asks for one, whatever --device says.
        on_gpu = self.cfg.device != "cpu" and score_backend(self.cfg.backend).uses_gpu
        gpus = 1.0 if on_gpu else 0.0
        return Resources(cpus=1.0, gpus=gpus, batch_size=self.videos_per_call)

    def setup(self) -> None:
        if self._scorer is None:
            self._scorer = build_scorer(
                self.cfg.checkpoint,
                device=self.cfg.device,
                num_threads=self.cfg.num_threads,
                storage_options=self.storage_options,
                backend=self.cfg.backend,
            )

    def teardown(self) -> None:
        self._scorer = None

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            raise RuntimeError("FaceScorer.setup() has not been called")
        return self._scorer

    def process_batch(self, videos: list[VideoFaces]) -> list[ScoredVideo]:
        scorer = self.scorer
        size = scorer.input_size
        owners = [v for v, video in enumerate(videos) for _ in video.faces]
        jpegs = [face.jpeg for video in videos for face in video.faces]
        scores = np.empty(len(jpegs), dtype=np.float32)
        seconds = np.zeros(len(videos), dtype=np.float64)
        owner_arr = np.asarray(owners, dtype=np.int64)
        for start in range(0, len(jpegs), self.cfg.batch_size):
            stop = min(start + self.cfg.batch_size, len(jpegs))
            t0 = time.perf_counter()
            crops = decode_crops(jpegs[start:stop], size)
            scores[start:stop] = scorer.predict(crops)
            # Each video is charged its share of the pass: elapsed x its faces / faces in pass.
            share = (time.perf_counter() - t0) / (stop - start)
            np.add.at(seconds, owner_arr[start:stop], share)
        results: list[ScoredVideo] = []
        pos = 0
        for v, video in enumerate(videos):
            n = len(video.faces)
            results.append(
                ScoredVideo(
                    video=video,
                    scores=tuple(float(s) for s in scores[pos : pos + n]),
                    model_version=scorer.model_version,
                    score_seconds=float(seconds[v]),
                )
            )
            pos += n
        return results
