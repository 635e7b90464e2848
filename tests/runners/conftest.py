"""Fixtures for the engine parity tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REAL_VIDEOS
from tests.runners.parity import PARITY_VIDEOS


@pytest.fixture(scope="module")
def parity_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real videos (one with two people) and a text file posing as a video."""
    d = tmp_path_factory.mktemp("parity_in")
    for name in PARITY_VIDEOS:
        shutil.copyfile(REAL_VIDEOS / name, d / name)
    (d / "bad.mp4").write_text("definitely not a video\n" * 20)
    return d
