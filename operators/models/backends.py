"""How a loaded classifier runs its forward passes: ``--score-backend``.

A checkpoint is always read into one PyTorch network (one loader, one set of weights);
a ``ScoreBackend`` then decides how that network is executed. Every backend takes the
same uint8 RGB NHWC faces and returns float32 logits, and the normalisation is part of
the module they all run (``FaceLogitNet``), so the exported ONNX graph holds it too and
no backend can preprocess differently from another. Backends are registered by name in
``SCORE_BACKENDS``; ``benchmarks/bench_scoring.py`` measures them against each other, and
``auto`` (the default) takes the one it kept for the device the worker actually has.

- ``torch``: eager PyTorch, NCHW. On CUDA: fp16 autocast, pinned host memory.
- ``torch-cl``: eager PyTorch with the network and its input in ``channels_last``, the
  layout oneDNN's CPU convolutions (and tensor cores) work in natively.
- ``onnx``: the network exported once per checkpoint (cached by its sha256) and run by
  ONNX Runtime, CUDA provider first when it has one; BatchNorm is folded into the convs.
- ``int8``: ``torch.ao`` dynamic quantisation. It quantises ``nn.Linear`` (and LSTM/GRU)
  only; in these conv nets that is the one-logit head, so every convolution still runs
  in float32 and the speed is the eager one. CPU only.

``onnx-int8`` (ONNX Runtime's ``quantize_dynamic``, which does reach the convolutions) is
kept as a measured candidate only, in ``CANDIDATE_BACKENDS``: it is not offered.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from pipelines.config import ConfigError

if TYPE_CHECKING:
    import onnxruntime as ort

# 17 is supported by every ONNX Runtime since 1.15 and has every op these nets use.
ONNX_OPSET = 17
# Bump when FaceLogitNet or the export settings change: cached graphs are then re-made.
EXPORT_REVISION = 1
CACHE_ENV = "DFSCAN_CACHE_DIR"


class FaceLogitNet(nn.Module):
    """uint8 RGB NHWC faces -> one logit per face, normalisation included.

    ``(x/255 - mean)/std`` is folded into one multiply-add that runs on the device (a
    uint8 batch is 4x smaller to copy than a float one) and is exported with the network.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.net = net
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)
        self.channels_last = False  # keep the NHWC input's layout instead of copying to NCHW

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        # Permuting NHWC memory gives an NCHW tensor with channels_last strides for free.
        x = faces.permute(0, 3, 1, 2).float()
        if not self.channels_last:
            x = x.contiguous()  # plain NCHW (a no-op in an exported graph)
        x = x * self.scale + self.shift
        out: torch.Tensor = self.net(x)
        return out.reshape(-1)


@dataclass(frozen=True)
class BackendContext:
    """What a backend needs besides the network: where to run and how to name its files."""

    device: str  # as requested: auto | cpu | cuda[:N]
    num_threads: int  # CPU threads; 0 = one per available core
    arch: str
    input_size: int
    sha256: str  # of the checkpoint file: the key of exported graphs
    cache_dir: str | None = None  # None: $DFSCAN_CACHE_DIR, else the user's cache folder


# Builds the checkpoint's network on demand (see ScoreBackend.__init__).
NetworkFactory = Callable[[], FaceLogitNet]


class ScoreBackend(abc.ABC):
    """Runs a ``FaceLogitNet`` on uint8 RGB NHWC faces; built once per worker in ``load()``."""

    name: ClassVar[str]
    uses_gpu: ClassVar[bool] = True  # False: CPU kernels only, so an engine needs no GPU for it

    @abc.abstractmethod
    def __init__(self, network: NetworkFactory, ctx: BackendContext) -> None:
        """``network()`` builds the torch network: called only by backends that need it
        (ONNX Runtime does not once its graph is cached, and then torchvision, 1.6 s of
        imports, is never loaded)."""

    @abc.abstractmethod
    def logits(self, faces: np.ndarray) -> np.ndarray:
        """C-contiguous uint8 (N, S, S, 3) with N >= 1 -> float32 logits, shape (N,)."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Where it runs, for logs and benchmark tables (``onnx[CPUExecutionProvider]``)."""


SCORE_BACKENDS: dict[str, type[ScoreBackend]] = {}

B = TypeVar("B", bound=type[ScoreBackend])


def register_backend(cls: B) -> B:
    SCORE_BACKENDS[cls.name] = cls
    return cls


AUTO = "auto"
# What ``auto`` runs, per device type. CPU: the fastest backend whose video-level AUC stays
# within 0.005 of eager torch (benchmarks/bench_scoring.py: onnx, ~4-8x eager on 2 cores).
# CUDA: eager torch, for fp16 autocast on tensor cores (the ONNX graph is float32).
AUTO_BACKENDS: dict[str, str] = {"cpu": "onnx", "cuda": "torch"}


def score_backend(name: str, device: str = "cpu") -> type[ScoreBackend]:
    """The backend class for ``name``; ``auto`` is the measured choice for ``device``."""
    if name == AUTO:
        name = AUTO_BACKENDS[resolve_device(device).type]
    try:
        return SCORE_BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown --score-backend {name!r}: choose {AUTO} or one of {', '.join(SCORE_BACKENDS)}"
        ) from None


# ---------------------------------------------------------------- devices and threads
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


def cpu_only_device(requested: str, backend: str) -> torch.device:
    """The CPU for backends without GPU kernels; ``auto`` falls back to it, ``cuda`` is refused."""
    if requested.startswith("cuda"):
        raise ConfigError(
            f"--score-backend {backend} runs on CPU only: use --device cpu or another backend"
        )
    resolve_device(requested)  # an unknown device name is still an error
    return torch.device("cpu")


# ---------------------------------------------------------------- PyTorch
@register_backend
class TorchEagerBackend(ScoreBackend):
    """Eager PyTorch in NCHW: the reference every other backend is measured against."""

    name = "torch"
    memory_format: ClassVar[torch.memory_format] = torch.contiguous_format

    def __init__(self, network: NetworkFactory, ctx: BackendContext) -> None:
        model = network()
        device = self._pick_device(ctx)
        if device.type == "cpu":
            torch.set_num_threads(ctx.num_threads or available_cpus())
        else:
            # One input size for the whole run: let cuDNN pick its fastest kernels once.
            torch.backends.cudnn.benchmark = True
        model.channels_last = self.memory_format == torch.channels_last
        self._model = self._prepare(model.to(device).to(memory_format=self.memory_format).eval())
        self._device = device

    def _pick_device(self, ctx: BackendContext) -> torch.device:
        return resolve_device(ctx.device)

    def _prepare(self, model: nn.Module) -> nn.Module:
        return model

    @property
    def module(self) -> nn.Module:
        """The ``FaceLogitNet`` it runs (``.net`` is the classifier), on its device."""
        return self._model

    @property
    def description(self) -> str:
        return f"{self.name}[{self._device}]"

    def logits(self, faces: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(faces)
        with torch.inference_mode():
            if self._device.type == "cuda":
                # Pinned (page-locked) host memory lets the copy run as async DMA; fp16
                # autocast runs convs on tensor cores (fp16 over bf16: 3 more mantissa bits,
                # and T4-class GPUs have no bf16). Logits are tiny, so fp16 range is ample.
                x = x.pin_memory().to(self._device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self._model(x)
            else:
                out = self._model(x)
            return out.float().cpu().numpy().astype(np.float32, copy=False)


@register_backend
class TorchChannelsLastBackend(TorchEagerBackend):
    """Weights and input in channels_last: oneDNN's native layout, no reorder per conv."""

    name = "torch-cl"
    memory_format = torch.channels_last


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser logs advice to the root logger ("consider pre-processing",
    measured here: no more accurate, slower) and a warning for the uint8 input it leaves
    alone; neither is actionable for a scan."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """torch marks ``torch.ao.quantization`` and the TorchScript ONNX exporter deprecated
    (both still work in this torch); the warnings would repeat on every worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        yield


@register_backend
class TorchDynamicInt8Backend(TorchEagerBackend):
    """``quantize_dynamic`` on ``nn.Linear``: int8 weights, activations quantised per batch.

    Convolutions are not dynamically quantisable in PyTorch, so in these conv nets only
    the classifier head changes (MobileNetV2: one 1280->1 Linear); kept so the route can
    be measured, not because it can be fast here.
    """

    name = "int8"
    uses_gpu = False

    def _pick_device(self, ctx: BackendContext) -> torch.device:
        return cpu_only_device(ctx.device, self.name)

    def _prepare(self, model: nn.Module) -> nn.Module:
        from torch.ao.quantization import quantize_dynamic

        with _quiet_deprecations():
            quantized: nn.Module = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        return quantized


# ---------------------------------------------------------------- ONNX Runtime
def cache_dir(configured: str | None = None) -> Path:
    """Where exported graphs are kept: the argument, $DFSCAN_CACHE_DIR, else the user's
    cache folder; a temporary folder when that cannot be written (read-only home)."""
    base = configured or os.environ.get(CACHE_ENV)
    if base:
        path = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(xdg) / "dfscan"
    path = path / "onnx"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        if base:
            raise ConfigError(f"cache folder {path} cannot be created") from None
    fallback = Path(tempfile.gettempdir()) / f"dfscan-{os.getuid()}" / "onnx"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _write_atomically(path: Path, write: Any) -> None:
    """``write(tmp)`` then rename: workers racing to fill the cache never read half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(network: NetworkFactory, ctx: BackendContext) -> Path:
    """The checkpoint's graph (uint8 NHWC in, logits out, any batch size), exported once.

    Keyed by the checkpoint's sha256 (weights and metadata) and the export revision, so a
    new checkpoint or a changed export gets a new file and a cached one is reused as is.
    Uses the TorchScript exporter (``dynamo=False``): the torch.export-based one needs
    onnxscript, which this project does not otherwise use.
    """
    name = f"{ctx.arch}-{ctx.sha256}-{ctx.input_size}px-opset{ONNX_OPSET}-r{EXPORT_REVISION}"
    path = cache_dir(ctx.cache_dir) / f"{name}.onnx"
    if path.exists():
        return path
    model = network().to("cpu").to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros((2, ctx.input_size, ctx.input_size, 3), dtype=torch.uint8)

    def write(tmp: Path) -> None:
        with _quiet_deprecations(), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=["faces"],
                output_names=["logits"],
                dynamic_axes={"faces": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
            )

    _write_atomically(path, write)
    return path


def _session(path: Path, providers: list[Any], num_threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    from operators.detect_faces import ort_session_options

    options = ort_session_options()  # one thread per core, no spin-waiting (shares cores)
    if num_threads:
        options.intra_op_num_threads = num_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


@register_backend
class OnnxRuntimeBackend(ScoreBackend):
    """The exported graph in ONNX Runtime: CUDA provider first when it has one, else CPU."""

    name = "onnx"

    def __init__(self, network: NetworkFactory, ctx: BackendContext) -> None:
        path = self._model_path(export_onnx(network, ctx), ctx)
        self.model_path = path
        self._session = _session(path, self.providers(ctx), ctx.num_threads)

    @classmethod
    def providers(cls, ctx: BackendContext) -> list[Any]:
        """ONNX Runtime providers, best first: CUDA when wanted and present, CPU last."""
        import onnxruntime as ort

        kind, _, index = ctx.device.partition(":")
        if kind not in ("auto", "cpu", "cuda") or (index and not index.isdigit()):
            raise ConfigError(f"unknown device {ctx.device!r}: use auto, cpu or cuda")
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if kind == "cuda" and not has_cuda:
            raise ConfigError("--device cuda: ONNX Runtime has no CUDA provider on this machine")
        if kind != "cpu" and has_cuda:
            cuda = ("CUDAExecutionProvider", {"device_id": int(index or 0)})
            return [cuda, "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _model_path(self, fp32: Path, ctx: BackendContext) -> Path:
        return fp32

    @property
    def description(self) -> str:
        return f"{self.name}[{self._session.get_providers()[0]}]"

    def logits(self, faces: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(["logits"], {"faces": faces})
        return np.asarray(out, dtype=np.float32).reshape(-1)


class OnnxDynamicInt8Backend(OnnxRuntimeBackend):
    """ONNX Runtime dynamic quantisation of the exported graph, convolutions included.

    Weights are uint8 per output channel: ONNX Runtime's CPU ``ConvInteger`` takes uint8
    weights, and per-channel ranges keep depthwise convs (one filter per channel, very
    different scales) from collapsing to a few levels. Measured, not offered: see
    ``CANDIDATE_BACKENDS``.
    """

    name = "onnx-int8"
    uses_gpu = False

    @classmethod
    def providers(cls, ctx: BackendContext) -> list[Any]:
        cpu_only_device(ctx.device, cls.name)  # ConvInteger has CPU kernels only
        return ["CPUExecutionProvider"]

    def _model_path(self, fp32: Path, ctx: BackendContext) -> Path:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = fp32.with_name(fp32.stem + "-dynint8.onnx")
        if not path.exists():
            with _quiet_root_logger():
                _write_atomically(
                    path,
                    lambda tmp: quantize_dynamic(
                        fp32, tmp, per_channel=True, weight_type=QuantType.QUInt8
                    ),
                )
        return path


# Measured by benchmarks/bench_scoring.py but not offered as --score-backend: on the
# starter MobileNetV2, ORT's dynamic int8 kept AUC (-0.004) but moved single face scores
# by up to 0.79 and ran at a quarter of float32 ONNX's speed (activation ranges measured
# per batch around every depthwise conv). The int8 route that could pay here is static
# (calibrated) quantisation, which needs calibration data of its own.
CANDIDATE_BACKENDS: dict[str, type[ScoreBackend]] = {
    OnnxDynamicInt8Backend.name: OnnxDynamicInt8Backend,
}
