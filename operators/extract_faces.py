"""Decode + detect + crop + track for one video at a time: the CPU stage of a scan.

Fused into one operator because frames are the largest thing in the pipeline: a batch
of sampled frames is decoded, run through the detector, cropped and dropped before the
next batch is decoded, so no engine ever ships or buffers raw frames. What leaves this
stage is a few JPEG crops per frame.

Per-video isolation lives here, so every engine gets it: with ``limits.isolate`` (the
default) the decode and detection of each video run in a child process
(``operators.isolation.DecodeWorker``) that loads the detector once and is replaced when
a decoder crashes it or a video hangs it; the video gets ``decode_error`` or ``timeout``
and the scan goes on.

``workers`` such processes make one extractor serve that many videos at once
(``resources.threads``): on the local runner they are how decode+detect fills every core.
The cores are split between them (``OMP_NUM_THREADS`` for ONNX Runtime, FFmpeg's thread
count), since one single-threaded decoder and detector per core wastes less on thread
hand-offs than two cores' worth of threads inside each of two processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from operators.base import Operator, Resources
from operators.decode_frames import FrameDecoder
from operators.errors import (
    DecodeError,
    UnsupportedMedia,
    VideoError,
    VideoTimeout,
    VideoTooLarge,
)
from operators.uri_policy import UriPolicy
from pipelines.config import CropConfig, DetectorConfig, LimitsConfig, SamplingConfig
from schemas.records import DetectorInfo, FaceCrop, Frame, VideoFaces, VideoRef, VideoStatus

# BGR frames in flight per video: 8 frames of 1080p (50 MB). Above 1080p the batch
# shrinks to fit (4K: 2 frames, 8K: 1), so the resolution limit is not a memory limit.
_FRAME_BYTES_IN_FLIGHT = 8 * 1920 * 1080 * 3


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
        workers: int = 1,
    ) -> None:
        self.sampling = sampling
        self.detector_cfg = detector
        self.crop = crop
        self.limits = limits
        self.storage_options = dict(storage_options or {})
        self.decode_threads = decode_threads
        # 8 frames in flight: at 1080p that is 50 MB of BGR (fewer above, see
        # _FRAME_BYTES_IN_FLIGHT), the bound on frame memory.
        self.frames_per_batch = frames_per_batch
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        # Worker processes need isolation; in-process, one detector serves one call.
        self.workers = workers if limits.isolate else 1
        self._detector: Any = None
        self._decoder: FrameDecoder | None = None
        # operators.isolation.DecodeWorker, when isolated: all of them, and the idle ones.
        self._pool: list[Any] = []
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._info: DetectorInfo | None = None
        self._policy = UriPolicy.build(limits.allow_prefixes)

    @property
    def resources(self) -> Resources:
        # One video per call: videos differ 100x in cost, so finer units balance better.
        return Resources(cpus=1.0, batch_size=1, threads=self.workers)

    def setup(self) -> None:
        from operators.detect_faces import build_detector, cpu_threads, verify_detector_model

        if self.limits.isolate:
            from operators.isolation import KILL_GRACE_S, DecodeWorker

            # Refuse a tampered model here, in one line, before a worker is started.
            verify_detector_model(self.detector_cfg)
            share = max(1, cpu_threads() // self.workers)
            # One worker keeps the process's own thread settings (Ray's OMP_NUM_THREADS).
            env = {"OMP_NUM_THREADS": str(share)} if self.workers > 1 else {}
            inner = self.in_process(decode_threads=share if self.workers > 1 else None)
            limit_s = self.limits.timeout_s + KILL_GRACE_S
            self._pool = [DecodeWorker(inner, limit_s, env) for _ in range(self.workers)]
            try:  # started side by side: each spends ~1 s importing and loading the model
                with ThreadPoolExecutor(self.workers) as ex:
                    infos = list(ex.map(DecodeWorker.start, self._pool))
            except BaseException:
                self.teardown()
                raise
            for worker in self._pool:
                self._idle.put(worker)
            self._info = infos[0]
            return
        self._detector = build_detector(self.detector_cfg)
        self._detector.load()
        self._info = self._detector.info
        self._decoder = FrameDecoder(
            self.sampling, self.limits, self.decode_threads, self.storage_options
        )

    def in_process(self, decode_threads: int | None = None) -> FaceExtractor:
        """This extractor's settings with isolation off: what a decode worker runs."""
        return FaceExtractor(
            self.sampling,
            self.detector_cfg,
            self.crop,
            dataclasses.replace(self.limits, isolate=False),
            self.storage_options,
            self.decode_threads or decode_threads or 0,
            self.frames_per_batch,
        )

    @property
    def detector_info(self) -> DetectorInfo:
        if self._info is None:
            raise RuntimeError("FaceExtractor.setup() was not called")
        return self._info

    @property
    def workers_started(self) -> int:
        """Decode workers started so far: ``workers``, plus one per crash or hang (0
        in-process)."""
        return sum(worker.started for worker in self._pool)

    def teardown(self) -> None:
        # Each close waits for its worker to exit: close them side by side, wait once.
        with ThreadPoolExecutor(max(1, len(self._pool))) as closing:
            list(closing.map(lambda worker: worker.close(), self._pool))
        self._pool = []
        self._idle = queue.SimpleQueue()
        self._detector = None
        self._decoder = None

    def __getstate__(self) -> dict[str, Any]:
        # Engines pickle operators before setup(); a live worker never travels.
        state = dict(self.__dict__)
        state.update(_pool=[], _idle=None, _detector=None, _decoder=None, _info=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _idle=queue.SimpleQueue())

    def process_batch(self, items: list[VideoRef]) -> list[VideoFaces]:
        return [self.extract(ref) for ref in items]

    def extract(self, ref: VideoRef) -> VideoFaces:
        base = VideoFaces(
            ref=ref,
            status=VideoStatus.NO_FACE,
            detector=self.detector_info,
            sampling=str(self.sampling),
        )
        try:
            if (refused := self._policy.refusal(ref.uri)) is not None:
                raise UnsupportedMedia(refused)
            if ref.size_bytes > self.limits.max_bytes:
                raise VideoTooLarge(
                    f"{ref.size_bytes} bytes exceeds the limit of {self.limits.max_bytes}"
                )
            if self._pool:
                worker = self._idle.get()  # one per calling thread: resources.threads
                try:
                    return worker.extract(ref)
                finally:
                    self._idle.put(worker)
            return self._extract(ref, base)
        except VideoError as err:
            return dataclasses.replace(base, status=err.status, error=str(err))

    def _extract(self, ref: VideoRef, base: VideoFaces) -> VideoFaces:
        from operators.detect_faces import crop_face, encode_jpeg
        from operators.track_faces import IouTracker

        if self._detector is None or self._decoder is None:
            raise RuntimeError("FaceExtractor.setup() was not called")
        deadline = time.monotonic() + self.limits.timeout_s
        tracker = IouTracker()
        faces: list[FaceCrop] = []
        frames_with_face = 0
        detect_s = crop_s = 0.0
        with self._decoder.open(ref.uri, deadline) as video:
            frame_bytes = max(1, video.meta.width * video.meta.height * 3)
            batch = max(1, min(self.frames_per_batch, _FRAME_BYTES_IN_FLIGHT // frame_bytes))
            for chunk in _chunks(video.frames, batch):
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
            if stats.shown is not None:  # rotated, square pixels: the frame boxes are in
                meta = dataclasses.replace(meta, width=stats.shown[0], height=stats.shown[1])
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
