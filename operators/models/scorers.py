"""Face classifiers behind one interface: ``load()`` once, then ``predict(batch)`` many times.

Each architecture is an ``ArchSpec`` in ``ARCHITECTURES`` (how to build it, its input size
and normalisation) and a ``Scorer`` subclass in ``SCORERS``; ``build_scorer`` picks the
class from the checkpoint's own ``meta.arch``, so adding an architecture is adding two
registry entries, never another ``if name == ...`` branch. Scorers take uint8 RGB NHWC
faces already at ``input_size`` and return one fake probability per face.

How the loaded network runs (eager, channels_last, ONNX Runtime, int8) is a separate
choice, the ``backend`` (``operators/models/backends.py``), so every architecture gets
every backend and the checkpoint loader stays one.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import fsspec
import numpy as np

from operators.models.backends import (
    BackendContext,
    ScoreBackend,
    backend_name,
    device_type,
    score_backend,
)
from operators.models.backends import (  # re-exported: training picks its threads here
    available_cpus as available_cpus,
)
from operators.models.checkpoints import (
    CheckpointFile,
    CheckpointMeta,
    LoadedCheckpoint,
    load_weights_only,
    model_version,
    read_checkpoint,
)
from pipelines.config import DEFAULT_SCORE_BACKEND, ConfigError

if TYPE_CHECKING:
    from torch import nn

    from operators.models.torch_backends import FaceLogitNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None)


def _imagenet_xception() -> nn.Module:
    import timm

    # legacy_xception is the Keras/Cadene Xception that FaceForensics++ fine-tuned.
    return timm.create_model("legacy_xception", pretrained=False, num_classes=1000)


def _imagenet_mobilenet_v2() -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v2(weights=None)


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture and what its inputs look like by default."""

    builder: Callable[[], nn.Module]  # the ImageNet-shaped network, random init
    head_attr: str  # attribute holding the classifier that is replaced by the 1-logit head
    features: int  # width of the pooled features the head sees
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dropout: float = 0.0  # default dropout on the pooled features


ARCHITECTURES: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(_imagenet_resnet18, "fc", 512, 224, IMAGENET_MEAN, IMAGENET_STD),
    # 299 and mean/std 0.5 are what FaceForensics++ used for its Xception baseline.
    "xception": ArchSpec(_imagenet_xception, "fc", 2048, 299, (0.5,) * 3, (0.5,) * 3),
    # 0.2 dropout is torchvision's own MobileNetV2 classifier setting.
    "mobilenet_v2": ArchSpec(
        _imagenet_mobilenet_v2, "classifier", 1280, 224, IMAGENET_MEAN, IMAGENET_STD, 0.2
    ),
}


def arch_spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}"
        ) from None


def _head(features: int, hidden: int, dropout: float) -> nn.Sequential:
    """Single-logit head; dropout acts on the pooled conv output, before any linear layer."""
    from torch import nn

    layers: list[nn.Module] = [nn.Dropout(dropout)]
    if hidden > 0:
        layers += [nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.BatchNorm1d(hidden)]
        layers += [nn.Dropout(dropout)]
        features = hidden
    layers.append(nn.Linear(features, 1))
    return nn.Sequential(*layers)


def _load_pretrained(net: nn.Module, path: str, storage_options: dict[str, Any] | None) -> None:
    """Load an ImageNet state dict (path or fsspec URI) into the ImageNet-shaped network."""
    fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
    try:
        with fs.open(p, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"pretrained weights not found: {path}") from None
    obj = load_weights_only(
        data, f"pretrained weights {path} cannot be read: not a torch state dict"
    )
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint that wraps its weights
    if not isinstance(obj, dict):
        raise ConfigError(f"pretrained weights are not a state dict: {path}")
    try:
        net.load_state_dict(obj, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(
            f"pretrained weights do not fit this architecture: {path}: {first}"
        ) from None


def build_network(
    arch: str,
    pretrained_path: str | None = None,
    *,
    hidden: int = 0,
    dropout: float | None = None,
    storage_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build ``arch`` with a single-logit head, optionally starting from ImageNet weights.

    Weights are loaded into the ImageNet-shaped network first (strictly, so a wrong file
    fails loudly) and the 1000-class classifier is replaced afterwards.
    """
    spec = arch_spec(arch)
    if hidden < 0:
        raise ConfigError(f"head hidden width must be >= 0, got {hidden}")
    p = spec.dropout if dropout is None else dropout
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    net = spec.builder()
    if pretrained_path:
        _load_pretrained(net, pretrained_path, storage_options)
    setattr(net, spec.head_attr, _head(spec.features, hidden, p))
    return net


# Faces per forward pass when none is asked for. CPU: larger passes gained nothing in
# benchmarks/bench_scoring.py (ONNX, 160 px: 719 / 650 / 575 faces/s at 32 / 64 / 128).
# CUDA: 256+ is what it takes to fill a GPU with 224 px crops; one 8-video operator batch
# (~256 faces) is then one pass.
CPU_BATCH_SIZE = 64
CUDA_BATCH_SIZE = 256


def default_batch_size(device: str) -> int:
    """The batch size for ``device`` as the driver sees it (``auto``: CUDA if present)."""
    return CUDA_BATCH_SIZE if device_type(device) == "cuda" else CPU_BATCH_SIZE


class Scorer(abc.ABC):
    """A face classifier. The constructor keeps only small settings so it pickles cheaply."""

    arch: ClassVar[str]

    def __init__(
        self,
        checkpoint_uri: str,
        device: str = "auto",
        num_threads: int = 0,
        storage_options: dict[str, Any] | None = None,
        *,
        backend: str = DEFAULT_SCORE_BACKEND,
        cache_dir: str | None = None,
    ) -> None:
        if num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {num_threads}")
        backend_name(backend)  # an unknown name fails here, on the driver
        self.checkpoint_uri = checkpoint_uri
        self.device = device
        self.num_threads = num_threads
        self.storage_options = dict(storage_options or {})
        self.backend = backend
        self.cache_dir = cache_dir  # exported graphs (onnx backends); None: the default
        self._meta: CheckpointMeta | None = None
        self._sha256: str | None = None

    @abc.abstractmethod
    def load(self, checkpoint: LoadedCheckpoint | CheckpointFile | None = None) -> None:
        """Read the checkpoint (unless given one already read) and make the model ready."""

    @abc.abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 RGB NHWC at ``input_size`` -> float32 fake probabilities, shape (N,)."""

    @property
    @abc.abstractmethod
    def runtime(self) -> ScoreBackend:
        """The backend running the network (its ``description`` says where)."""

    @property
    def loaded(self) -> bool:
        return self._meta is not None

    @property
    def meta(self) -> CheckpointMeta:
        if self._meta is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        return self._meta

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        return self._sha256

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    @property
    def model_version(self) -> str:
        return model_version(self.meta, self.sha256)


class TorchScorer(Scorer):
    """The shared PyTorch loader; subclasses only declare their ``arch``, the backend runs it."""

    def __init__(
        self,
        checkpoint_uri: str,
        device: str = "auto",
        num_threads: int = 0,
        storage_options: dict[str, Any] | None = None,
        *,
        backend: str = DEFAULT_SCORE_BACKEND,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            checkpoint_uri,
            device,
            num_threads,
            storage_options,
            backend=backend,
            cache_dir=cache_dir,
        )
        self._runtime: ScoreBackend | None = None

    def load(self, checkpoint: LoadedCheckpoint | CheckpointFile | None = None) -> None:
        backend_cls = score_backend(self.backend, self.device)  # auto: decided on the worker
        file = checkpoint
        if file is None:
            file = read_checkpoint(self.checkpoint_uri, self.storage_options, self.cache_dir)
        meta = file.meta  # from the cache when these bytes were read before: no torch
        if meta.arch != self.arch:
            raise ConfigError(
                f"checkpoint {self.checkpoint_uri} is {meta.arch!r}, not {self.arch!r}"
            )
        if not meta.temperature > 0:
            raise ConfigError(f"checkpoint temperature must be > 0, got {meta.temperature}")
        try:
            hidden = int(meta.extra.get("head_hidden", "0"))
        except ValueError:
            raise ConfigError(
                f"checkpoint extra.head_hidden is not an integer: {meta.extra}"
            ) from None
        arch, uri = self.arch, self.checkpoint_uri

        def network() -> FaceLogitNet:
            from operators.models.torch_backends import FaceLogitNet

            loaded = file.load() if isinstance(file, CheckpointFile) else file
            net = build_network(arch, hidden=hidden)
            try:
                net.load_state_dict(loaded.state_dict, strict=True)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0]
                raise ConfigError(f"checkpoint {uri} weights do not fit: {first}") from None
            return FaceLogitNet(net.eval(), meta.mean, meta.std)

        ctx = BackendContext(
            device=self.device,
            num_threads=self.num_threads,
            arch=meta.arch,
            input_size=meta.input_size,
            sha256=file.sha256,
            cache_dir=self.cache_dir,
        )
        self._runtime = backend_cls(network, ctx)
        self._meta, self._sha256 = meta, file.sha256

    @property
    def runtime(self) -> ScoreBackend:
        if self._runtime is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        return self._runtime

    def predict(self, batch: np.ndarray) -> np.ndarray:
        z = self.predict_logits(batch).astype(np.float64) / self.meta.temperature
        # sigmoid(z) = exp(-log(1 + exp(-z))): no overflow at any logit.
        return np.exp(-np.logaddexp(0.0, -z)).astype(np.float32)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw float32 logits before temperature: what calibration fits the temperature on
        (probabilities saturate at 1.0 in float32 long before logits stop growing)."""
        runtime = self.runtime
        size = self.input_size
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(
                f"expected uint8 (N, {size}, {size}, 3), got {batch.dtype} {batch.shape}"
            )
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float32)
        return runtime.logits(np.ascontiguousarray(batch))


SCORERS: dict[str, type[Scorer]] = {}

S = TypeVar("S", bound=type[Scorer])


def register_scorer(cls: S) -> S:
    """Class decorator: make ``cls`` the scorer for checkpoints whose meta.arch is its arch."""
    if cls.arch not in ARCHITECTURES:
        raise ValueError(f"{cls.__name__}.arch {cls.arch!r} has no ArchSpec")
    SCORERS[cls.arch] = cls
    return cls


@register_scorer
class ResNet18Scorer(TorchScorer):
    arch = "resnet18"


@register_scorer
class XceptionScorer(TorchScorer):
    arch = "xception"


@register_scorer
class MobileNetV2Scorer(TorchScorer):
    arch = "mobilenet_v2"


def scorer_class(arch: str) -> type[Scorer]:
    try:
        return SCORERS[arch]
    except KeyError:
        raise ConfigError(
            f"no scorer for architecture {arch!r}: known are {', '.join(SCORERS)}"
        ) from None


def read_meta(
    checkpoint_uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[CheckpointMeta, str]:
    """Meta and sha256 of a checkpoint, e.g. so the driver can size crops before a scan."""
    file = read_checkpoint(checkpoint_uri, storage_options)
    return file.meta, file.sha256


def build_scorer(
    checkpoint_uri: str,
    device: str = "auto",
    num_threads: int = 0,
    storage_options: dict[str, Any] | None = None,
    *,
    load: bool = True,
    backend: str = DEFAULT_SCORE_BACKEND,
    cache_dir: str | None = None,
) -> Scorer:
    """The scorer for this checkpoint's architecture, loaded (one read of the file) by default."""
    backend_name(backend)  # a wrong name fails before the checkpoint is read
    file = read_checkpoint(checkpoint_uri, storage_options, cache_dir)
    scorer = scorer_class(file.meta.arch)(
        checkpoint_uri,
        device,
        num_threads,
        storage_options,
        backend=backend,
        cache_dir=cache_dir,
    )
    if load:
        scorer.load(file)
    return scorer
