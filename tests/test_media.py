"""The clip writers the tests share (tests/media.py): what they must not leave behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.media import encode_clip, keeps_scheduling, noise_frames, scheduling

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getscheduler"), reason="Linux scheduling calls"
)


def test_an_av1_encode_leaves_the_thread_on_its_scheduling_policy(tmp_path: Path):
    """The corpus's AV1 clip comes from libsvtav1, which moves the thread that opens it to
    SCHED_FIFO 99 when it may (as root): every process the suite started after it would
    inherit that. The clip writers put the policy back."""
    before = scheduling()
    clip = encode_clip(
        tmp_path / "av1.mkv",
        noise_frames(4, (64, 64)),
        codec="libsvtav1",
        container_format="matroska",
    )
    assert clip.stat().st_size > 0
    assert scheduling() == before


def test_keeps_scheduling_puts_back_a_policy_changed_inside_it():
    before = scheduling()
    with keeps_scheduling():  # SCHED_BATCH needs no privilege, unlike what the encoder sets
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        assert scheduling()[0] == os.SCHED_BATCH
    assert scheduling() == before
