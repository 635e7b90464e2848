"""Decoding: which frames come out, in which order, upright, and what each failure is."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from operators.decode_frames import FrameDecoder, uniform_indices
from operators.errors import DecodeError, UnsupportedMedia, VideoTimeout, VideoTooLarge
from pipelines.config import LimitsConfig, SamplingConfig
from tests.conftest import IMAGES, REAL_VIDEOS
from tests.media import truncate, write_audio_only, write_video

HAMILTON = REAL_VIDEOS / "hamilton_clip.mp4"


def decode(uri: str | Path, policy: str = "uniform:32", **limits: float):
    decoder = FrameDecoder(SamplingConfig.parse(policy), LimitsConfig(**limits))  # type: ignore[arg-type]
    with decoder.open(str(uri)) as video:
        frames = list(video.frames)
    return video, frames


def test_uniform_indices_spread_from_first_to_last_frame():
    assert uniform_indices(275, 32)[0] == 0
    assert uniform_indices(275, 32)[-1] == 274
    assert len(uniform_indices(275, 32)) == 32
    assert uniform_indices(10, 32) == list(range(10))  # never more than the video has
    assert uniform_indices(0, 32) == []


def test_uniform_sampling_returns_exact_indices_and_stops_after_the_last():
    decoder = FrameDecoder(SamplingConfig.parse("uniform:8"), LimitsConfig(), seek=False)
    with decoder.open(str(HAMILTON)) as video:
        frames = list(video.frames)
    assert [f.index for f in frames] == uniform_indices(275, 8)
    assert video.meta.frame_count == 275
    assert video.stats.frames_sampled == 8
    # Decoding ended at the last sampled frame (index 274 is the last one here).
    assert video.stats.frames_decoded == 275


def test_uniform_sampling_stops_early_when_the_last_pick_is_early(tmp_path: Path):
    clip = write_video(tmp_path / "c.mp4", n=60)
    decoder = FrameDecoder(SamplingConfig.parse("uniform:3"), LimitsConfig(), seek=False)
    with decoder.open(str(clip)) as video:
        frames = list(video.frames)
    assert [f.index for f in frames] == [0, 30, 59]
    assert video.stats.frames_decoded == 60


def test_frames_carry_index_and_presentation_time(tmp_path: Path):
    clip = write_video(tmp_path / "c.mp4", n=50, fps=25)
    _, frames = decode(clip, "uniform:5")
    assert [f.index for f in frames] == [0, 12, 24, 37, 49]
    assert [round(f.pts_s, 3) for f in frames] == [0.0, 0.48, 0.96, 1.48, 1.96]
    # The red channel encodes the index: the right frames were converted.
    reds = [int(np.median(f.image[..., 2])) for f in frames]  # BGR: red is channel 2
    assert all(abs(r - (i * 8) % 256) <= 3 for r, i in zip(reds, [0, 12, 24, 37, 49], strict=True))


def test_fps_sampling_takes_one_frame_per_interval(tmp_path: Path):
    clip = write_video(tmp_path / "c.mp4", n=100, fps=25)  # 4 s
    _, frames = decode(clip, "fps:2")
    assert [f.index for f in frames] == [0, 13, 25, 38, 50, 63, 75, 88]


def test_keyframes_decodes_only_keyframes(tmp_path: Path):
    clip = write_video(tmp_path / "c.mp4", n=60, gop=12)
    with av.open(str(clip)) as c:  # the keyframes as the container marks them
        keys = [
            round(float(p.pts * p.time_base) * 25)
            for p in c.demux(video=0)
            if p.is_keyframe and p.pts is not None
        ]
    video, frames = decode(clip, "keyframes")
    assert [f.index for f in frames] == sorted(keys)
    assert {0, 12, 24} <= set(keys) and len(keys) < 10
    assert video.stats.frames_decoded == len(keys)  # the others were never reconstructed


def test_rotation_metadata_turns_frames_upright(tmp_path: Path):
    img = np.zeros((120, 160, 3), np.uint8)
    img[:20, :20] = 255  # a white mark in the top-left corner as stored
    clip = write_video(tmp_path / "rot.mp4", [img] * 5, rotation=90)
    video, frames = decode(clip, "uniform:2")
    assert video.stats.rotation == 90
    assert frames[0].image.shape == (160, 120, 3)
    # 90 degrees counter-clockwise: the stored top-left corner is now bottom-left.
    assert frames[0].image[-10, 10].mean() > 200
    assert frames[0].image[10, 10].mean() < 50


def test_empty_file_is_unsupported(tmp_path: Path):
    (tmp_path / "e.mp4").write_bytes(b"")
    with pytest.raises(UnsupportedMedia, match="empty"):
        decode(tmp_path / "e.mp4")


def test_text_named_mp4_is_unsupported(tmp_path: Path):
    (tmp_path / "t.mp4").write_text("this is not a video\n" * 50)
    with pytest.raises(UnsupportedMedia, match="not a video container"):
        decode(tmp_path / "t.mp4")


def test_image_named_mp4_is_unsupported(tmp_path: Path):
    (tmp_path / "i.mp4").write_bytes((IMAGES / "obama.jpg").read_bytes())
    with pytest.raises(UnsupportedMedia, match="image/jpeg"):
        decode(tmp_path / "i.mp4")


def test_audio_only_is_unsupported(tmp_path: Path):
    with pytest.raises(UnsupportedMedia, match="no video stream"):
        decode(write_audio_only(tmp_path / "a.mp4"))


def test_truncated_mp4_is_a_decode_error(tmp_path: Path):
    with pytest.raises(DecodeError, match="video/mp4"):
        decode(truncate(HAMILTON, tmp_path / "t.mp4", 200_000))


def test_huge_declared_frame_size_is_too_large_before_decoding():
    with pytest.raises(VideoTooLarge, match="640x360"):
        decode(HAMILTON, max_pixels=100_000)


def test_deadline_in_the_past_times_out():
    decoder = FrameDecoder(SamplingConfig.parse("uniform:32"), LimitsConfig())
    with pytest.raises(VideoTimeout), decoder.open(str(HAMILTON), deadline=0.0) as video:
        list(video.frames)


def test_seeking_to_keyframes_gives_the_same_frames_and_decodes_fewer(tmp_path: Path):
    clip = write_video(tmp_path / "long_gop.mp4", n=240, gop=24)
    results = {}
    for seek in (False, True):
        decoder = FrameDecoder(SamplingConfig.parse("uniform:4"), LimitsConfig(), seek=seek)
        with decoder.open(str(clip)) as video:
            results[seek] = (list(video.frames), video.stats)
    (through, s0), (seeked, s1) = results[False], results[True]
    assert [f.index for f in seeked] == [f.index for f in through] == [0, 80, 159, 239]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(through, seeked, strict=True))
    assert s1.seeks == 3 and s0.seeks == 0
    assert s1.frames_decoded < s0.frames_decoded == 240


def test_seek_plan_decodes_through_when_samples_are_denser_than_keyframes():
    from operators.decode_frames import plan_seeks

    packets = [(i, i % 250 == 0) for i in range(500)]
    assert plan_seeks(packets, list(range(0, 250, 16))) is None  # no keyframe in between
    sparse = plan_seeks([(i, i % 10 == 0) for i in range(500)], [0, 250, 499])
    assert sparse is not None and sorted(sparse.seek_before) == [250, 499]
    assert sparse.frames_planned < sparse.frames_through == 500
