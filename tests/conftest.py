"""Fixtures: one per state of the world. Real videos and models come from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.config import shared_dir

SHARED = shared_dir()
REAL_VIDEOS = SHARED / "data" / "videos" / "real"
FACE_CROP_VIDEOS = SHARED / "data" / "videos" / "face_crops"
IMAGES = SHARED / "data" / "images"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        pytest.fail(f"shared models and data are missing at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def obama_rgb() -> np.ndarray:
    """A frontal face photo, 160 px tall, RGB."""
    img = cv2.imread(str(IMAGES / "obama.jpg"))
    assert img is not None
    h, w = img.shape[:2]
    img = cv2.resize(img, (int(w * 160 / h), 160))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init MobileNetV2 checkpoint: real code path, no training time."""
    from operators.models.checkpoints import CheckpointMeta, save_checkpoint
    from operators.models.scorers import build_network

    import torch

    torch.manual_seed(0)
    net = build_network("mobilenet_v2")
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    meta = CheckpointMeta(
        arch="mobilenet_v2", input_size=224, mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), crop_scale=1.3, training_data="none (random init, tests)",
        metrics={}, created_at=0.0, code_version="test",
    )
    save_checkpoint(net.state_dict(), meta, str(path))
    return path
