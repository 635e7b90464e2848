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

This module does not import torch: the torch backends and ``FaceLogitNet`` live in
``operators/models/torch_backends.py``, imported when one of them is chosen or a graph is
exported, so a CPU worker running a cached ONNX graph never loads torch.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from operators.models.checkpoints import CACHE_ENV as CACHE_ENV
from operators.models.checkpoints import cache_dir, write_atomically
from pipelines.config import ConfigError

if TYPE_CHECKING:
    import onnxruntime as ort

    from operators.models.torch_backends import FaceLogitNet

# 17 is supported by every ONNX Runtime since 1.15 and has every op these nets use.
ONNX_OPSET = 17
# Bump when FaceLogitNet or the export settings change: cached graphs are then re-made.
EXPORT_REVISION = 1


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
NetworkFactory = Callable[[], "FaceLogitNet"]


class ScoreBackend(abc.ABC):
    """Runs a ``FaceLogitNet`` on uint8 RGB NHWC faces; built once per worker in ``load()``."""

    name: ClassVar[str]
    uses_gpu: ClassVar[bool] = True  # False: CPU kernels only, so an engine needs no GPU for it

    @abc.abstractmethod
    def __init__(self, network: NetworkFactory, ctx: BackendContext) -> None:
        """``network()`` builds the torch network: called only by backends that need it
        (ONNX Runtime does not once its graph is cached, and then torch is never loaded)."""

    @abc.abstractmethod
    def logits(self, faces: np.ndarray) -> np.ndarray:
        """C-contiguous uint8 (N, S, S, 3) with N >= 1 -> float32 logits, shape (N,)."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Where it runs, for logs and benchmark tables (``onnx[CPUExecutionProvider]``)."""


# name -> "module:class". A backend's module is imported only when that backend is used,
# so naming or checking one (on a driver, in --help) loads no torch.
_TORCH = "operators.models.torch_backends"
SCORE_BACKENDS: dict[str, str] = {
    "torch": f"{_TORCH}:TorchEagerBackend",
    "torch-cl": f"{_TORCH}:TorchChannelsLastBackend",
    "onnx": f"{__name__}:OnnxRuntimeBackend",
    "int8": f"{_TORCH}:TorchDynamicInt8Backend",
}

AUTO = "auto"
# What ``auto`` runs, per device type. CPU: the fastest backend whose video-level AUC stays
# within 0.005 of eager torch (benchmarks/bench_scoring.py: onnx, ~4-8x eager on 2 cores).
# CUDA: eager torch, for fp16 autocast on tensor cores (the ONNX graph is float32).
AUTO_BACKENDS: dict[str, str] = {"cpu": "onnx", "cuda": "torch"}


def backend_name(name: str, device: str = "cpu") -> str:
    """The registered name ``name`` stands for (``auto``: the measured choice for
    ``device``); an unknown name is a one-line ConfigError."""
    if name == AUTO:
        name = AUTO_BACKENDS[device_type(device)]
    if name not in SCORE_BACKENDS:
        raise ConfigError(
            f"unknown --score-backend {name!r}: choose {AUTO} or one of {', '.join(SCORE_BACKENDS)}"
        )
    return name


def score_backend(name: str, device: str = "cpu") -> type[ScoreBackend]:
    """The backend class for ``name``; ``auto`` is the measured choice for ``device``."""
    return load_backend(SCORE_BACKENDS[backend_name(name, device)])


def load_backend(where: str) -> type[ScoreBackend]:
    """The class a registry entry (``"module:class"``) names, importing its module."""
    module, _, attr = where.partition(":")
    cls: type[ScoreBackend] = getattr(importlib.import_module(module), attr)
    return cls


# ---------------------------------------------------------------- devices and threads
# Device nodes a GPU driver creates: NVIDIA's, WSL2's GPU paravirtualisation, AMD's ROCm
# (whose PyTorch also answers to torch.cuda). On Linux without any of them CUDA cannot be
# available, and saying so needs no torch import (1.5 s, and 0.65 s more at exit).
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, asked only where a GPU driver is present (or torch
    is loaded already, when asking costs nothing)."""
    if (
        "torch" not in sys.modules
        and sys.platform.startswith("linux")
        and not any(os.path.exists(node) for node in GPU_DEVICE_NODES)
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


def device_type(requested: str) -> str:
    """``cpu`` or ``cuda`` for ``--device``: ``auto`` picks CUDA when present; asking for
    CUDA on a machine without it, or for an unknown device, is a one-line ConfigError."""
    kind, _, index = requested.partition(":")
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if kind == "cuda" and (requested == "cuda" or index.isdigit()):
        if not cuda_available():
            raise ConfigError(f"device {requested!r} requested but CUDA is not available here")
        return "cuda"
    raise ConfigError(f"unknown device {requested!r}: use auto, cpu or cuda")


def available_cpus() -> int:
    """Cores this process may run on (cgroup/affinity aware), not the host's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_cpu_only(requested: str, backend: str) -> None:
    """Backends without GPU kernels: ``auto`` falls back to the CPU, ``cuda`` is refused."""
    if requested.startswith("cuda"):
        raise ConfigError(
            f"--score-backend {backend} runs on CPU only: use --device cpu or another backend"
        )
    device_type(requested)  # an unknown device name is still an error


# ---------------------------------------------------------------- warnings
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
def quiet_deprecations() -> Iterator[None]:
    """torch marks ``torch.ao.quantization`` and the TorchScript ONNX exporter deprecated
    (both still work in this torch); the warnings would repeat on every worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        yield


# ---------------------------------------------------------------- ONNX Runtime
def export_onnx(network: NetworkFactory, ctx: BackendContext) -> Path:
    """The checkpoint's graph (uint8 NHWC in, logits out, any batch size), exported once.

    Keyed by the checkpoint's sha256 (weights and metadata) and the export revision, so a
    new checkpoint or a changed export gets a new file and a cached one is reused as is.
    Uses the TorchScript exporter (``dynamo=False``): the torch.export-based one needs
    onnxscript, which this project does not otherwise use.
    """
    name = f"{ctx.arch}-{ctx.sha256}-{ctx.input_size}px-opset{ONNX_OPSET}-r{EXPORT_REVISION}"
    path = cache_dir(ctx.cache_dir, "onnx") / f"{name}.onnx"
    if path.exists():
        return path
    import torch

    model = network().to("cpu").to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros((2, ctx.input_size, ctx.input_size, 3), dtype=torch.uint8)

    def write(tmp: Path) -> None:
        with quiet_deprecations(), torch.no_grad():
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

    write_atomically(path, write)
    return path


def _session(path: Path, providers: list[Any], num_threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    from operators.detect_faces import ort_session_options

    options = ort_session_options()  # one thread per core, no spin-waiting (shares cores)
    if num_threads:
        options.intra_op_num_threads = num_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


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
        check_cpu_only(ctx.device, cls.name)  # ConvInteger has CPU kernels only
        return ["CPUExecutionProvider"]

    def _model_path(self, fp32: Path, ctx: BackendContext) -> Path:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = fp32.with_name(fp32.stem + "-dynint8.onnx")
        if not path.exists():
            with _quiet_root_logger():
                write_atomically(
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
CANDIDATE_BACKENDS: dict[str, str] = {
    OnnxDynamicInt8Backend.name: f"{__name__}:OnnxDynamicInt8Backend",
}
