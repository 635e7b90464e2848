"""Face detection backends and face crops.

Two backends behind one interface, chosen by name from a registry:

- ``scrfd-500m`` / ``scrfd-2.5g``: insightface's SCRFD through its own model zoo
  (``insightface.model_zoo.get_model`` on a local ONNX file: no model-pack download),
  with insightface's own decoding and NMS (``SCRFD.detect``). Non-commercial terms.
- ``yunet``: OpenCV's ``FaceDetectorYN`` (Apache-2.0), the permissive alternative.

Batching: the API takes a list of frames so a batched backend can drop in, but neither
ONNX file here can run a batch: both graphs were exported with batch size 1 (SCRFD-500M
even with a fixed 640x640 input, its outputs being flattened to fixed lengths). Frames
therefore run one by one; a re-exported SCRFD with a dynamic batch axis would batch.
"""

from __future__ import annotations

import abc
import hashlib
from typing import Any

import cv2
import fsspec
import numpy as np

from pipelines.config import ConfigError, CropConfig, DetectorConfig
from schemas.records import Detection, DetectorInfo

# SCRFD-500M's graph has fixed output lengths (12800 anchors at stride 8 = 640x640).
_FIXED_INPUT = {"scrfd-500m": 640}


def file_sha256(uri: str) -> str:
    """sha256 of a (local or remote) file, streamed."""
    digest = hashlib.sha256()
    with fsspec.open(uri, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _local_model(uri: str) -> str:
    """ONNX Runtime and OpenCV need a local file: remote models are cached locally once."""
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        try:
            with open(path, "rb"):
                pass
        except OSError:
            raise ConfigError(f"detector model not found: {uri}") from None
        return path
    try:
        return str(fsspec.open_local(f"simplecache::{uri}"))
    except FileNotFoundError:
        raise ConfigError(f"detector model not found: {uri}") from None


def ort_providers(device: str) -> list[str]:
    """CUDA first when ONNX Runtime has it and it is wanted; CPU always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise ConfigError("--device cuda: ONNX Runtime has no CUDA provider on this machine")
    if device in ("auto", "cuda") and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class FaceDetectorBackend(abc.ABC):
    """Frames (BGR uint8) in, detections in full-frame pixels out, best first."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self._info: DetectorInfo | None = None

    @property
    def info(self) -> DetectorInfo:
        if self._info is None:
            self._info = DetectorInfo(self.cfg.name, file_sha256(self.cfg.model_path))
        return self._info

    @abc.abstractmethod
    def load(self) -> None:
        """Create the inference session (once per worker)."""

    @abc.abstractmethod
    def _detect(self, image: np.ndarray) -> list[Detection]:
        """All detections of one frame, unfiltered."""

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Detection]]:
        return [self._filter(self._detect(img)) for img in images]

    def _filter(self, dets: list[Detection]) -> list[Detection]:
        keep = [
            d
            for d in dets
            if min(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) >= self.cfg.min_face_px
        ]
        keep.sort(key=lambda d: d.score, reverse=True)
        return keep[: self.cfg.max_faces]


class SCRFDDetector(FaceDetectorBackend):
    """insightface SCRFD via its model zoo, on a local ONNX file."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__(cfg)
        self._model: Any = None
        self.det_size = _FIXED_INPUT.get(cfg.name, cfg.det_size)

    def load(self) -> None:
        from insightface.model_zoo import get_model

        path = _local_model(self.cfg.model_path)
        model = get_model(path, providers=ort_providers(self.cfg.device))
        if model is None or getattr(model, "taskname", "") != "detection":
            raise ConfigError(f"{self.cfg.model_path} is not an insightface detection model")
        model.prepare(
            ctx_id=0 if self.cfg.device != "cpu" else -1,
            input_size=(self.det_size, self.det_size),
            det_thresh=self.cfg.score_threshold,
            nms_thresh=self.cfg.nms_threshold,
        )
        self._model = model
        _ = self.info

    def _detect(self, image: np.ndarray) -> list[Detection]:
        if self._model is None:
            raise RuntimeError("SCRFDDetector.load() was not called")
        boxes, kps = self._model.detect(image, input_size=(self.det_size, self.det_size))
        out = []
        for i, row in enumerate(boxes):
            x1, y1, x2, y2, score = (float(v) for v in row[:5])
            pts = kps[i].reshape(-1).tolist() if kps is not None else [0.0] * 10
            out.append(Detection((x1, y1, x2, y2), tuple(float(p) for p in pts), score))
        return out


class YuNetDetector(FaceDetectorBackend):
    """OpenCV's FaceDetectorYN: Apache-2.0 model, no insightface dependency at run time."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__(cfg)
        self._model: Any = None
        self._size: tuple[int, int] = (0, 0)

    def load(self) -> None:
        path = _local_model(self.cfg.model_path)
        backend, target = cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU
        if self.cfg.device in ("auto", "cuda") and cv2.cuda.getCudaEnabledDeviceCount() > 0:
            backend, target = cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA
        elif self.cfg.device == "cuda":
            raise ConfigError("--device cuda: this OpenCV build has no CUDA device")
        self._model = cv2.FaceDetectorYN.create(
            path,
            "",
            (self.cfg.det_size, self.cfg.det_size),
            self.cfg.score_threshold,
            self.cfg.nms_threshold,
            5000,
            backend,
            target,
        )
        _ = self.info

    def _detect(self, image: np.ndarray) -> list[Detection]:
        if self._model is None:
            raise RuntimeError("YuNetDetector.load() was not called")
        h, w = image.shape[:2]
        # Detect on a frame whose long side is det_size; boxes are mapped back after.
        scale = min(1.0, self.cfg.det_size / max(h, w))
        small = (
            image
            if scale == 1.0
            else cv2.resize(
                image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
            )
        )
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self._model.setInputSize(size)
            self._size = size
        _, faces = self._model.detect(small)
        out = []
        for row in faces if faces is not None else []:
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            pts = tuple(float(v) / scale for v in row[4:14])
            out.append(Detection((x, y, x + bw, y + bh), pts, float(row[14])))
        return out


DETECTOR_BACKENDS: dict[str, type[FaceDetectorBackend]] = {
    "scrfd-500m": SCRFDDetector,
    "scrfd-2.5g": SCRFDDetector,
    "yunet": YuNetDetector,
}


def build_detector(cfg: DetectorConfig) -> FaceDetectorBackend:
    try:
        cls = DETECTOR_BACKENDS[cfg.name]
    except KeyError:
        raise ConfigError(
            f"unknown detector {cfg.name!r}: choose one of {', '.join(DETECTOR_BACKENDS)}"
        ) from None
    return cls(cfg)


def crop_box(det: Detection, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The square around a detection, enlarged by ``scale`` and clipped to the frame."""
    x1, y1, x2, y2 = det.bbox
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(round(max(0.0, cx - side / 2)))
    top = int(round(max(0.0, cy - side / 2)))
    right = int(round(min(float(width), cx + side / 2)))
    bottom = int(round(min(float(height), cy + side / 2)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_face(image: np.ndarray, det: Detection, crop: CropConfig) -> np.ndarray:
    """The enlarged square crop, resized to ``crop.size`` (INTER_AREA when shrinking)."""
    scale = crop.scale if crop.scale is not None else 1.3
    left, top, right, bottom = crop_box(det, scale, image.shape[1], image.shape[0])
    patch = image[top:bottom, left:right]
    shrink = patch.shape[0] > crop.size or patch.shape[1] > crop.size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(patch, (crop.size, crop.size), interpolation=interp)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
