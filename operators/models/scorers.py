"""Face classifiers behind one interface: ``load()`` once, then ``predict(batch)`` many times.

Each architecture is an ``ArchSpec`` in ``ARCHITECTURES`` (how to build it, its input size
and normalisation) and a ``Scorer`` subclass in ``SCORERS``; ``build_scorer`` picks the
class from the checkpoint's own ``meta.arch``, so adding an architecture is adding two
registry entries, never another ``if name == ...`` branch. Scorers take uint8 RGB NHWC
faces already at ``input_size`` and return one fake probability per face.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import fsspec
import numpy as np
import torch
from torch import nn

from operators.models.checkpoints import (
    CheckpointMeta,
    LoadedCheckpoint,
    load_checkpoint,
    load_weights_only,
    model_version,
)
from pipelines.config import ConfigError

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
    obj = load_weights_only(data, f"pretrained weights are not a torch state dict: {path}")
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


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but CUDA is not available here")
        return torch.device(requested)
    raise ConfigError(f"unknown device {requested!r}: use auto, cpu or cuda")


def available_cpus() -> int:
    """Cores this process may run on (cgroup/affinity aware), not the host's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class Scorer(abc.ABC):
    """A face classifier. The constructor keeps only small settings so it pickles cheaply."""

    arch: ClassVar[str]

    def __init__(
        self,
        checkpoint_uri: str,
        device: str = "auto",
        num_threads: int = 0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {num_threads}")
        self.checkpoint_uri = checkpoint_uri
        self.device = device
        self.num_threads = num_threads
        self.storage_options = dict(storage_options or {})
        self._meta: CheckpointMeta | None = None
        self._sha256: str | None = None

    @abc.abstractmethod
    def load(self, checkpoint: LoadedCheckpoint | None = None) -> None:
        """Read the checkpoint (unless given one already read) and make the model ready."""

    @abc.abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 RGB NHWC at ``input_size`` -> float32 fake probabilities, shape (N,)."""

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
    """The shared PyTorch implementation; subclasses only declare their ``arch``."""

    def __init__(
        self,
        checkpoint_uri: str,
        device: str = "auto",
        num_threads: int = 0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(checkpoint_uri, device, num_threads, storage_options)
        self._net: nn.Module | None = None
        self._device: torch.device | None = None
        self._scale: torch.Tensor | None = None
        self._shift: torch.Tensor | None = None

    def load(self, checkpoint: LoadedCheckpoint | None = None) -> None:
        device = resolve_device(self.device)
        ckpt = checkpoint or load_checkpoint(self.checkpoint_uri, self.storage_options)
        meta = ckpt.meta
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
        net = build_network(self.arch, hidden=hidden)
        try:
            net.load_state_dict(ckpt.state_dict, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(
                f"checkpoint {self.checkpoint_uri} weights do not fit: {first}"
            ) from None
        if device.type == "cpu":
            torch.set_num_threads(self.num_threads or available_cpus())
        net = net.to(device).eval()
        # (x/255 - mean)/std folded into one multiply-add, done on the device.
        std = torch.tensor(meta.std, dtype=torch.float32)
        mean = torch.tensor(meta.mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
        self._shift = (-mean / std).view(1, 3, 1, 1).to(device)
        self._net, self._device = net, device
        self._meta, self._sha256 = meta, ckpt.sha256

    def predict(self, batch: np.ndarray) -> np.ndarray:
        logits = self.predict_logits(batch)
        probs = torch.sigmoid(torch.from_numpy(logits) / self.meta.temperature)
        return probs.numpy().astype(np.float32, copy=False)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw float32 logits before temperature: what calibration fits the temperature on
        (probabilities saturate at 1.0 in float32 long before logits stop growing)."""
        net, device = self._net, self._device
        if net is None or device is None or self._scale is None or self._shift is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        size = self.input_size
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(
                f"expected uint8 (N, {size}, {size}, 3), got {batch.dtype} {batch.shape}"
            )
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(batch))
        cuda = device.type == "cuda"
        with torch.inference_mode():
            if cuda:
                x = x.pin_memory().to(device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().mul_(self._scale).add_(self._shift)
            x = x.contiguous(memory_format=torch.channels_last)
            amp: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if cuda:
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                amp = torch.autocast("cuda", dtype=dtype)
            with amp:
                logits = net(x)
            return logits.float().reshape(-1).cpu().numpy().astype(np.float32, copy=False)


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
    ckpt = load_checkpoint(checkpoint_uri, storage_options)
    return ckpt.meta, ckpt.sha256


def build_scorer(
    checkpoint_uri: str,
    device: str = "auto",
    num_threads: int = 0,
    storage_options: dict[str, Any] | None = None,
    *,
    load: bool = True,
) -> Scorer:
    """The scorer for this checkpoint's architecture, loaded (one read of the file) by default."""
    ckpt = load_checkpoint(checkpoint_uri, storage_options)
    scorer = scorer_class(ckpt.meta.arch)(checkpoint_uri, device, num_threads, storage_options)
    if load:
        scorer.load(ckpt)
    return scorer
