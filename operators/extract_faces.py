"""Decode + detect + crop + track for one video at a time: the CPU stage of a scan.

Fused into one operator because frames are the largest thing in the pipeline: a batch
of sampled frames is decoded, run through the detector, cropped and dropped before the
next batch is decoded, so no engine ever ships or buffers raw frames. What leaves this
stage is a few JPEG crops per frame.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from typing import Any

from operators.base import Operator, Resources
from operators.decode_frames import FrameDecoder
from operators.errors import DecodeError, VideoError, VideoTimeout, VideoTooLarge
from pipelines.config import CropConfig, DetectorConfig, LimitsConfig, SamplingConfig
from schemas.records import FaceCrop, Frame, VideoFaces, VideoRef, VideoStatus


def _chunks(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    while chunk := list(itertools.islice(frames, size)):
        yield chunk


class FaceExtractor(Operator[VideoRef, VideoFaces]):
    """VideoRef -> VideoFaces (faces with tracks, or a typed error status)."""

    name = "decode_detect"

    def __init__(
        self,
        sampling: SamplingConfig,
        detector: DetectorConfig,
        crop: CropConfig,
        limits: LimitsConfig,
        storage_options: dict[str, Any] | None = None,
        decode_threads: int = 0,
        frames_per_batch: int = 8,
    ) -> None:
        self.sampling = sampling
        self.detector_cfg = detector
        self.crop = crop
        self.limits = limits
        self.storage_options = dict(storage_options or {})
        self.decode_threads = decode_threads
        # 8 frames in flight: at 1080p that is 50 MB of BGR, the bound on frame memory.
        self.frames_per_batch = frames_per_batch
        self._detector: Any = None
        self._decoder: FrameDecoder | None = None

    @property
    def resources(self) -> Resources:
        # One video per call: videos differ 100x in cost, so finer units balance better.
        return Resources(cpus=1.0, batch_size=1)

    def setup(self) -> None:
        from operators.detect_faces import build_detector

        self._detector = build_detector(self.detector_cfg)
        self._detector.load()
        self._decoder = FrameDecoder(
            self.sampling, self.limits, self.decode_threads, self.storage_options
        )

    def teardown(self) -> None:
        self._detector = None
        self._decoder = None

    def process_batch(self, items: list[VideoRef]) -> list[VideoFaces]:
        return [self.extract(ref) for ref in items]

    def extract(self, ref: VideoRef) -> VideoFaces:
        if self._detector is None or self._decoder is None:
            raise RuntimeError("FaceExtractor.setup() was not called")
        base = VideoFaces(
            ref=ref,
            status=VideoStatus.NO_FACE,
            detector=self._detector.info,
            sampling=str(self.sampling),
        )
        try:
            if ref.size_bytes > self.limits.max_bytes:
                raise VideoTooLarge(
                    f"{ref.size_bytes} bytes exceeds the limit of {self.limits.max_bytes}"
                )
            return self._extract(ref, base)
        except VideoError as err:
            return dataclasses.replace(base, status=err.status, error=str(err))

    def _extract(self, ref: VideoRef, base: VideoFaces) -> VideoFaces:
        from operators.detect_faces import crop_face, encode_jpeg
        from operators.track_faces import IouTracker

        assert self._decoder is not None
        deadline = time.monotonic() + self.limits.timeout_s
        tracker = IouTracker()
        faces: list[FaceCrop] = []
        frames_with_face = 0
        detect_s = crop_s = 0.0
        with self._decoder.open(ref.uri, deadline) as video:
            for chunk in _chunks(video.frames, self.frames_per_batch):
                t0 = time.perf_counter()
                detections = self._detector.detect_batch([f.image for f in chunk])
                t1 = time.perf_counter()
                for frame, dets in zip(chunk, detections, strict=True):
                    track_ids = tracker.update(dets)
                    frames_with_face += bool(dets)
                    for det, track_id in zip(dets, track_ids, strict=True):
                        crop = crop_face(frame.image, det, self.crop)
                        faces.append(
                            FaceCrop(
                                frame_index=frame.index,
                                pts_s=frame.pts_s,
                                track_id=track_id,
                                bbox=det.bbox,
                                landmarks=det.landmarks,
                                det_score=det.score,
                                jpeg=encode_jpeg(crop, self.crop.jpeg_quality),
                                crop_width=int(crop.shape[1]),
                                crop_height=int(crop.shape[0]),
                            )
                        )
                detect_s += t1 - t0
                crop_s += time.perf_counter() - t1
                if time.monotonic() > deadline:
                    raise VideoTimeout("decode+detect exceeded the per-video time limit")
            stats = video.stats
            meta = dataclasses.replace(video.meta, rotation=stats.rotation)
        if stats.frames_sampled == 0:
            raise DecodeError(
                f"no frame could be decoded ({stats.frames_decoded} frames reached the decoder)"
            )
        return dataclasses.replace(
            base,
            status=VideoStatus.SCORED if faces else VideoStatus.NO_FACE,
            error="; ".join(stats.notes) or None,
            meta=meta,
            frames_sampled=stats.frames_sampled,
            frames_with_face=frames_with_face,
            faces=tuple(faces),
            stage_seconds={"decode": stats.seconds, "detect": detect_s, "crop": crop_s},
        )
