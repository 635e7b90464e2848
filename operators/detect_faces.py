"""Face detection backends and face crops.

Two backends behind one interface, chosen by name from a registry:

- ``scrfd-500m`` / ``scrfd-2.5g``: insightface's SCRFD through its own model zoo
  (``insightface.model_zoo.get_model`` on a local ONNX file, so no model pack is ever
  downloaded), with insightface's own decoding and NMS (``SCRFD.detect``).
  Non-commercial terms.
- ``yunet``: OpenCV's ``FaceDetectorYN`` (Apache-2.0), the permissive alternative.

Cost levers (measured by ``benchmarks/bench_detect.py``). Before detection a frame is
shrunk by ``det_scale`` (INTER_AREA; for YuNet also to at most ``det_size`` on the long
side, in the same resize). Boxes and landmarks are mapped back to full-frame pixels, so
crops are always cut from the full-resolution frame.

- ``det_size`` sets the detector input. SCRFD fits the frame to ``det_size`` on its
  long side (up or down, as insightface does), so its cost is set by ``det_size`` and
  the frame's aspect ratio, never by the frame's resolution. insightface alone would
  letterbox every frame into a ``det_size`` square; here the input keeps the frame's
  aspect ratio, padded only to a multiple of 32 (640x384 for 16:9, not 640x640). Both
  SCRFD graphs take any such size (the output shapes annotated in the files, e.g.
  SCRFD-500M's [12800, 1], are those of 640x640 and are not enforced). YuNet runs at the
  frame's own size up to ``det_size``.
- ``det_scale`` (the DFDC winner detected at half size) lowers YuNet's cost for frames
  under ``det_size / det_scale`` on the long side. For SCRFD it changes no cost: the
  shrunk frame is fitted to ``det_size`` again, so ``det_size`` is its lever.

Batching: the API takes a list of frames, but frames run one by one. Both SCRFD files
declare input ``[1, 3, ?, ?]`` (ONNX Runtime refuses a batch of 2: "index: 0 Got: 2
Expected: 1") and insightface's ``SCRFD.detect``/``forward`` take one image. With the
batch axis rewritten to be dynamic the graphs do run batches (outputs interleaved per
anchor cell, identical to single runs), but on CPU a batch of 8 costs more per frame
than 8 single runs; ``benchmarks/bench_detect.py`` measures it. YuNet's file is fixed
at ``[1, 3, 640, 640]`` and OpenCV re-shapes it per frame size.

A backend is built on the driver (cheap, picklable: it holds only its config) and
``load()``-ed once on the worker.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import fsspec
import numpy as np

from pipelines.config import ConfigError, CropConfig, DetectorConfig
from schemas.records import Detection, DetectorInfo

if TYPE_CHECKING:
    import onnxruntime as ort

_DEVICES = ("auto", "cpu", "cuda")
_DEFAULT_CROP_SCALE = 1.3  # the FaceForensics++ convention, as ScanConfig.crop_scale
_YUNET_TOP_K = 5000  # candidates kept before NMS: OpenCV's default, ample for faces
_SCRFD_STRIDE = 32  # SCRFD's coarsest feature stride: input sides are multiples of it


def file_sha256(uri: str) -> str:
    """sha256 of a local or remote (fsspec URI) file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with fsspec.open(uri, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _missing(cfg: DetectorConfig) -> ConfigError:
    return ConfigError(
        f"detector model not found for --detector {cfg.name}: {cfg.model_path or '(no path)'}"
    )


def _model_exists(uri: str) -> bool:
    if not uri:
        return False
    fs, path = fsspec.core.url_to_fs(uri)
    return bool(fs.isfile(path))


def _local_model(cfg: DetectorConfig) -> str:
    """ONNX Runtime and OpenCV read local files: a remote model is cached locally once."""
    uri = cfg.model_path
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        if not path or not os.path.isfile(path):
            raise _missing(cfg)
        return path
    try:
        return str(fsspec.open_local(f"simplecache::{uri}"))
    except FileNotFoundError:
        raise _missing(cfg) from None


MODEL_MANIFEST = Path(__file__).resolve().parent / "models" / "manifest.json"


@functools.cache
def _manifest_sha256s() -> dict[str, tuple[str, ...]]:
    detectors = json.loads(MODEL_MANIFEST.read_text())["detectors"]
    return {name: tuple(entry["sha256"]) for name, entry in detectors.items()}


def verify_detector_model(cfg: DetectorConfig, path: str | None = None) -> str:
    """The model file's sha256, if it is the one expected (``cfg.model_sha256``, else the
    manifest's for ``cfg.name``); ConfigError otherwise, before any parser reads it.

    An ONNX file is code-like input: a swapped graph silently changes every result."""
    local = path or _local_model(cfg)
    actual = file_sha256(local)
    allowed: tuple[str, ...]
    if cfg.model_sha256:
        allowed, source = (cfg.model_sha256.lower(),), "--detector-sha256"
    else:
        allowed, source = _manifest_sha256s().get(cfg.name, ()), MODEL_MANIFEST.name
    if actual not in allowed:
        raise ConfigError(
            f"detector model {cfg.model_path} has sha256 {actual}, not the one {source}"
            f" lists for --detector {cfg.name}: refusing to load it"
        )
    return actual


def ort_providers(device: str) -> list[str]:
    """CUDA first when wanted and ONNX Runtime has it; CPU always last as the fallback."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ConfigError("--device cuda: ONNX Runtime has no CUDA provider on this machine")
    if device in ("auto", "cuda") and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def cpu_threads() -> int:
    """Cores this worker may use: OMP_NUM_THREADS when set (Ray sets it to the actor's
    num_cpus), else the process's CPU affinity, which respects cpusets."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ort_session_options() -> ort.SessionOptions:
    """Intra-op threads = this worker's cores, no spin-waiting between runs.

    Spinning is turned off because decode runs on the same cores between detector calls:
    measured here (2 cores, shared) SCRFD-500M took 126 ms/frame with 2 spinning threads
    and 23 ms without.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cpu_threads()
    so.inter_op_num_threads = 1  # the graphs are a single chain: no parallel branches
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class FaceDetectorBackend(abc.ABC):
    """Frames (BGR uint8, any size) in; per frame, faces in full-frame pixels out.

    Each frame's faces are clipped to the frame, faces whose shorter box side is under
    ``min_face_px`` are dropped, the ``max_faces`` largest are kept (crowds are not the
    use case; the largest faces are the ones a classifier can judge), and the result is
    sorted by score, best first.
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self._model: Any = None
        self._info: DetectorInfo | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A loaded session does not travel: the receiving worker calls load() again.
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    @property
    def info(self) -> DetectorInfo:
        """Name and sha256 of the model file, so every row says which weights found it."""
        if self._info is None:
            self._info = DetectorInfo(self.cfg.name, file_sha256(self.cfg.model_path))
        return self._info

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @abc.abstractmethod
    def load(self) -> None:
        """Create the inference session (once per worker)."""

    @abc.abstractmethod
    def _detect(self, image: np.ndarray) -> list[Detection]:
        """All detections of one image, in its own pixels, before filtering."""

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Faces per frame. Runs frame by frame: these ONNX graphs have batch size 1."""
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__}.load() was not called")
        return [
            self._finish(self._detect_scaled(img), img.shape[1], img.shape[0]) for img in images
        ]

    def input_scale(self, width: int, height: int) -> float:
        """Factor the frame is shrunk by before ``_detect`` (1.0: used as it is):
        ``det_scale``, and at most ``det_size`` on the long side. Never above 1: where a
        backend wants a larger input (SCRFD's fit to ``det_size``), it enlarges itself."""
        return min(self.cfg.det_scale, self.cfg.det_size / max(width, height))

    def _detect_scaled(self, image: np.ndarray) -> list[Detection]:
        """Detect on the frame shrunk by ``input_scale`` and map the faces back, so boxes
        and landmarks are in full-frame pixels and crops come from the full frame."""
        h, w = image.shape[:2]
        scale = self.input_scale(w, h)
        if scale >= 1.0:
            return self._detect(image)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # INTER_AREA averages the pixels a shrink drops: no aliasing on small faces.
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        sx, sy = w / size[0], h / size[1]  # exact back-mapping despite rounding
        return [_rescaled(d, sx, sy) for d in self._detect(small)]

    def _finish(self, dets: list[Detection], width: int, height: int) -> list[Detection]:
        kept: list[tuple[float, Detection]] = []
        for d in dets:
            x1, y1, x2, y2 = d.bbox
            x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
            y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
            if min(x2 - x1, y2 - y1) < self.cfg.min_face_px:
                continue
            kept.append(((x2 - x1) * (y2 - y1), Detection((x1, y1, x2, y2), d.landmarks, d.score)))
        kept.sort(key=lambda ad: ad[0], reverse=True)  # stable: ties keep detector order
        out = [d for _, d in kept[: self.cfg.max_faces]]
        out.sort(key=lambda d: d.score, reverse=True)
        return out


def _rescaled(d: Detection, sx: float, sy: float) -> Detection:
    x1, y1, x2, y2 = d.bbox
    pts = tuple(v * (sx if k % 2 == 0 else sy) for k, v in enumerate(d.landmarks))
    return Detection((x1 * sx, y1 * sy, x2 * sx, y2 * sy), pts, d.score)


def _stride_ceil(side: int) -> int:
    return max(_SCRFD_STRIDE, -(-side // _SCRFD_STRIDE) * _SCRFD_STRIDE)


class SCRFDDetector(FaceDetectorBackend):
    """insightface SCRFD from a local ONNX file via its model zoo (its decode and NMS).

    The frame is fitted to ``det_size`` on its long side, as insightface does (smaller
    frames are enlarged, which small faces need), but the input keeps the frame's aspect
    ratio, padded only to the next multiple of 32: a 16:9 frame runs at 640x384 rather
    than in a 640x640 square that is 44% zero padding, with the faces at the same scale.
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__(cfg)
        self.det_size = cfg.det_size

    def load(self) -> None:
        from insightface.model_zoo import get_model

        path = _local_model(self.cfg)
        self._info = DetectorInfo(self.cfg.name, verify_detector_model(self.cfg, path))
        options = ort_session_options()
        # The graphs' output shapes are annotated for 640x640 (SCRFD-500M's [12800, 1]);
        # at other sizes ONNX Runtime warns on every run although the outputs are right.
        options.log_severity_level = 3
        # One dynamic-shape session for every input size: insightface's alternative, a
        # static session per size, costs 10-25 MB each and is never released, and frame
        # sizes are the uploads' to choose (measured here: same speed either way).
        model = get_model(
            path,
            providers=ort_providers(self.cfg.device),
            sess_options=options,
            static_shape_sessions=False,
        )
        if model is None or getattr(model, "taskname", "") != "detection":
            raise ConfigError(f"{self.cfg.model_path} is not an insightface SCRFD detector")
        size = (self.det_size, self.det_size)
        # ctx_id 0 keeps the providers chosen above; -1 would force CPU.
        model.prepare(
            0,
            input_size=size,
            det_thresh=self.cfg.score_threshold,
            nms_thresh=self.cfg.nms_threshold,
        )
        self._model = model

    def input_scale(self, width: int, height: int) -> float:
        # det_scale only: insightface's own fit to det_size (cv2.resize, INTER_LINEAR)
        # does the rest, as it always did here; shrinking 1080p to 640x360 that way
        # costs 0.4 ms of CPU against 2.0 ms with INTER_AREA.
        return min(1.0, self.cfg.det_scale)

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) of the network input for a frame of this size: ``det_size`` on the long
        side, the short side in proportion, rounded up to the stride."""
        long, short = max(width, height), min(width, height)
        fitted = _stride_ceil(-(-self.det_size * short // long))
        return (self.det_size, fitted) if width >= height else (fitted, self.det_size)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        # insightface fits the frame into input_size and zero-pads the (< 32 px) rest.
        size = self.input_size(image.shape[1], image.shape[0])
        boxes, kps = self._model.detect(image, input_size=size)
        out = []
        for i, row in enumerate(boxes):
            x1, y1, x2, y2, score = (float(v) for v in row[:5])
            pts = tuple(float(p) for p in kps[i].reshape(-1)) if kps is not None else (0.0,) * 10
            out.append(Detection((x1, y1, x2, y2), pts, score))
        return out


class YuNetDetector(FaceDetectorBackend):
    """OpenCV's FaceDetectorYN: Apache-2.0 model, no insightface at run time.

    YuNet runs at the frame's own size, so frames whose long side exceeds ``det_size``
    are shrunk to it first (its cost grows with the pixel count; a 1080p frame costs ~9x
    a 640 one), in the same single resize as ``det_scale``. OpenCV DNN threads are a
    process-wide setting (``cv2.setNumThreads``), left to the process rather than
    changed from here.
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__(cfg)
        self._size: tuple[int, int] = (0, 0)

    def load(self) -> None:
        path = _local_model(self.cfg)
        self._info = DetectorInfo(self.cfg.name, verify_detector_model(self.cfg, path))
        has_cuda = cv2.cuda.getCudaEnabledDeviceCount() > 0
        if self.cfg.device == "cuda" and not has_cuda:
            raise ConfigError("--device cuda: this OpenCV build sees no CUDA device")
        args: tuple[Any, ...] = (
            path,
            "",
            (self.cfg.det_size, self.cfg.det_size),
            self.cfg.score_threshold,
            self.cfg.nms_threshold,
            _YUNET_TOP_K,
        )
        if self.cfg.device in ("auto", "cuda") and has_cuda:
            args += (cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA)
        # On CPU no backend/target is passed: OpenCV 5 warns about targets otherwise.
        self._model = cv2.FaceDetectorYN.create(*args)
        self._size = (self.cfg.det_size, self.cfg.det_size)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        size = (image.shape[1], image.shape[0])
        if size != self._size:
            self._model.setInputSize(size)
            self._size = size
        _, faces = self._model.detect(image)
        out = []
        for row in faces if faces is not None else []:
            x, y, bw, bh = (float(v) for v in row[:4])
            pts = tuple(float(v) for v in row[4:14])
            out.append(Detection((x, y, x + bw, y + bh), pts, float(row[14])))
        return out


DETECTOR_BACKENDS: dict[str, type[FaceDetectorBackend]] = {
    "scrfd-500m": SCRFDDetector,
    "scrfd-2.5g": SCRFDDetector,
    "yunet": YuNetDetector,
}


def build_detector(cfg: DetectorConfig) -> FaceDetectorBackend:
    """An unloaded backend for ``cfg``; bad settings fail here, on the driver, in one line."""
    try:
        cls = DETECTOR_BACKENDS[cfg.name]
    except KeyError:
        raise ConfigError(
            f"unknown --detector {cfg.name!r}: choose one of {', '.join(DETECTOR_BACKENDS)}"
        ) from None
    if cfg.device not in _DEVICES:
        raise ConfigError(f"unknown --device {cfg.device!r}: choose one of {', '.join(_DEVICES)}")
    if cls is SCRFDDetector and cfg.det_size % 32:
        raise ConfigError(f"--detector {cfg.name}: det_size must be a multiple of 32 (strides)")
    if not 0.0 < cfg.det_scale <= 1.0:
        raise ConfigError(f"--det-scale must be within (0, 1], got {cfg.det_scale:g}")
    if not _model_exists(cfg.model_path):
        raise _missing(cfg)
    return cls(cfg)


def crop_box(det: Detection, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer (left, top, right, bottom) of the square around ``det``, side = long box
    side x ``scale``, clipped to the frame (so it is no longer square at an edge)."""
    x1, y1, x2, y2 = det.bbox
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = min(max(round(cx - side / 2), 0), width - 1)
    top = min(max(round(cy - side / 2), 0), height - 1)
    right = max(min(round(cx + side / 2), width), left + 1)
    bottom = max(min(round(cy + side / 2), height), top + 1)
    return int(left), int(top), int(right), int(bottom)


def crop_face(image: np.ndarray, det: Detection, crop: CropConfig) -> np.ndarray:
    """The enlarged square crop resized to ``crop.size``; INTER_AREA when shrinking
    (no aliasing), INTER_LINEAR when enlarging. A crop clipped at a frame edge is
    stretched to the square rather than padded, so every pixel is image content."""
    # scale None (no checkpoint resolved it) falls back like ScanConfig.crop_scale does,
    # so the crops match the scale recorded in the shard names.
    scale = crop.scale if crop.scale is not None else _DEFAULT_CROP_SCALE
    left, top, right, bottom = crop_box(det, scale, image.shape[1], image.shape[0])
    patch = image[top:bottom, left:right]
    shrink = patch.shape[0] > crop.size or patch.shape[1] > crop.size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(patch, (crop.size, crop.size), interpolation=interp)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR image (what the face shards store)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()
