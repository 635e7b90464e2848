"""The ``fuzz`` marker (until pyproject.toml lists it): ``pytest -m fuzz`` runs the fuzzing."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: time-bounded atheris run over decode and shards")
