"""The score backends that run the checkpoint's network in PyTorch, and that network.

Kept apart from ``operators/models/backends.py`` so that choosing a backend, and running
the ONNX one from a cached graph, never imports torch; this module is imported when a
torch backend is chosen or a graph has to be exported.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from operators.models.backends import (
    BackendContext,
    NetworkFactory,
    ScoreBackend,
    available_cpus,
    check_cpu_only,
    device_type,
    quiet_deprecations,
)


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is an error."""
    kind = device_type(requested)
    return torch.device(requested if kind == "cuda" and requested != "auto" else kind)


def cpu_only_device(requested: str, backend: str) -> torch.device:
    """The CPU for backends without GPU kernels; ``auto`` falls back to it, ``cuda`` is refused."""
    check_cpu_only(requested, backend)
    return torch.device("cpu")


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


class TorchChannelsLastBackend(TorchEagerBackend):
    """Weights and input in channels_last: oneDNN's native layout, no reorder per conv."""

    name = "torch-cl"
    memory_format = torch.channels_last


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

        with quiet_deprecations():
            quantized: nn.Module = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        return quantized
