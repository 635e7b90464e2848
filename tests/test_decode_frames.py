"""Decoding: which frames come out, in which order, upright, and what each failure is."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import operators.decode_frames as decode_frames
from operators.decode_frames import (
    FrameDecoder,
    PacketIndex,
    nonref_skip_is_safe,
    plan_seeks,
    uniform_indices,
)
from operators.errors import DecodeError, UnsupportedMedia, VideoTimeout, VideoTooLarge
from pipelines.config import LimitsConfig, SamplingConfig
from schemas.records import Frame
from tests.conftest import IMAGES, REAL_VIDEOS
from tests.media import (
    encode_clip,
    noise_frames,
    truncate,
    write_audio_only,
    write_audio_with_cover,
    write_video,
)

HAMILTON = REAL_VIDEOS / "hamilton_clip.mp4"


def decode(uri: str | Path, policy: str = "uniform:32", **limits: float):
    decoder = FrameDecoder(SamplingConfig.parse(policy), LimitsConfig(**limits))  # type: ignore[arg-type]
    with decoder.open(str(uri)) as video:
        frames = list(video.frames)
    return video, frames


def decode_through(
    uri: str | Path, policy: str = "uniform:32", threads: int = 0
) -> tuple[list[Frame], decode_frames.DecodeStats]:
    """Every frame decoded in order, no seek, no skip: what the savings must reproduce."""
    decoder = FrameDecoder(
        SamplingConfig.parse(policy), LimitsConfig(), threads, seek=False, skip_nonref=False
    )
    with decoder.open(str(uri)) as video:
        return list(video.frames), video.stats


def assert_same_frames(a: list[Frame], b: list[Frame]) -> None:
    assert [f.index for f in a] == [f.index for f in b]
    assert [f.pts_s for f in a] == [f.pts_s for f in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))


def b_frame_clip(path: Path, codec: str, params: str = "", n: int = 150) -> Path:
    """A clip with B-frames (some of them non-reference) and distinct textured frames."""
    key = "x264-params" if codec == "libx264" else "x265-params"
    defaults = "bframes=3:b-pyramid=normal:keyint=50" if codec == "libx264" else "bframes=4"
    extra = ":log-level=error" if codec == "libx265" else ""
    options = {key: f"{defaults}{':' + params if params else ''}{extra}"}
    return encode_clip(path, noise_frames(n, (192, 144), seed=7), codec=codec, options=options)


def test_uniform_indices_spread_from_first_to_last_frame():
    assert uniform_indices(275, 32)[0] == 0
    assert uniform_indices(275, 32)[-1] == 274
    assert len(uniform_indices(275, 32)) == 32
    assert uniform_indices(10, 32) == list(range(10))  # never more than the video has
    assert uniform_indices(0, 32) == []


def test_uniform_sampling_returns_exact_indices_and_stops_after_the_last():
    decoder = FrameDecoder(
        SamplingConfig.parse("uniform:8"), LimitsConfig(), seek=False, skip_nonref=False
    )
    with decoder.open(str(HAMILTON)) as video:
        frames = list(video.frames)
    assert [f.index for f in frames] == uniform_indices(275, 8)
    assert video.meta.frame_count == 275
    assert video.stats.frames_sampled == 8
    # Decoding ended at the last sampled frame (index 274 is the last one here).
    assert video.stats.frames_decoded == 275


def test_uniform_sampling_stops_early_when_the_last_pick_is_early(tmp_path: Path):
    clip = write_video(tmp_path / "c.mp4", n=60)
    decoder = FrameDecoder(
        SamplingConfig.parse("uniform:3"), LimitsConfig(), seek=False, skip_nonref=False
    )
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
        decoder = FrameDecoder(
            SamplingConfig.parse("uniform:4"), LimitsConfig(), seek=seek, skip_nonref=False
        )
        with decoder.open(str(clip)) as video:
            results[seek] = (list(video.frames), video.stats)
    (through, s0), (seeked, s1) = results[False], results[True]
    assert [f.index for f in seeked] == [f.index for f in through] == [0, 80, 159, 239]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(through, seeked, strict=True))
    assert s1.seeks == 3 and s0.seeks == 0
    assert s1.frames_decoded < s0.frames_decoded == 240


def test_seek_plan_decodes_through_when_samples_are_denser_than_keyframes():
    long_gop = PacketIndex.build([(i, i % 250 == 0) for i in range(500)])
    assert long_gop is not None
    assert plan_seeks(long_gop, list(range(0, 250, 16))) is None  # no keyframe in between
    short_gop = PacketIndex.build([(i, i % 10 == 0) for i in range(500)])
    assert short_gop is not None
    sparse = plan_seeks(short_gop, [0, 250, 499])
    assert sparse is not None and sorted(sparse.seek_before) == [250, 499]
    assert sparse.frames_planned < sparse.frames_through == 500


def test_packet_index_ranks_frames_by_presentation_time():
    # Decode order I P B B (pts 0 3 1 2): the B-frames are frames 1 and 2.
    index = PacketIndex.build([(0, True), (3, False), (1, False), (2, False)])
    assert index is not None
    assert [index.index_of_pts[p] for p in (0, 3, 1, 2)] == [0, 3, 1, 2]
    assert index.keyframes == (0,)


def test_packet_index_refuses_timestamps_it_cannot_rank():
    assert PacketIndex.build([(0, True), (1, False), (1, False)]) is None  # duplicate
    assert PacketIndex.build([]) is None
    # MPEG-TS timestamps wrap at 2**33: after the wrap, ranks are not frame indices.
    wrapped = [((2**33 - 50 + i) % 2**33, i % 25 == 0) for i in range(100)]
    assert PacketIndex.build(wrapped) is None


@pytest.mark.parametrize(
    ("codec", "suffix"),
    [("libx264", "mp4"), ("libx264", "mkv"), ("libx265", "mp4")],
)
@pytest.mark.parametrize("threads", [1, 0])
def test_skipping_nonreference_frames_keeps_every_sampled_frame_identical(
    tmp_path: Path, codec: str, suffix: str, threads: int
):
    clip = b_frame_clip(tmp_path / f"b.{suffix}", codec)
    reference, through = decode_through(clip, threads=threads)
    for seek in (False, True):
        decoder = FrameDecoder(
            SamplingConfig.parse("uniform:32"), LimitsConfig(), threads, seek=seek
        )
        with decoder.open(str(clip)) as video:
            frames = list(video.frames)
        assert [f.index for f in frames] == uniform_indices(150, 32)
        assert_same_frames(frames, reference)
        assert video.stats.nonref_skip
        # The unsampled non-reference frames were never reconstructed.
        assert video.stats.frames_decoded < through.frames_decoded == 150


def test_without_an_index_nothing_is_skipped(tmp_path: Path):
    clip = b_frame_clip(tmp_path / "b.mp4", "libx264")
    decoder = FrameDecoder(
        SamplingConfig.parse("uniform:32"), LimitsConfig(), seek=False, skip_nonref=False
    )
    with decoder.open(str(clip)) as video:
        assert len(list(video.frames)) == 32
    assert not video.stats.nonref_skip and video.stats.frames_decoded == 150


def test_hevc_with_temporal_sublayers_is_decoded_whole(tmp_path: Path):
    # A sub-layer non-reference picture may be predicted from by a higher sub-layer.
    clip = b_frame_clip(tmp_path / "tl.mp4", "libx265", "temporal-layers=2")
    reference, _ = decode_through(clip)
    decoder = FrameDecoder(SamplingConfig.parse("uniform:32"), LimitsConfig(), seek=False)
    with decoder.open(str(clip)) as video:
        frames = list(video.frames)
    assert_same_frames(frames, reference)
    assert not video.stats.nonref_skip and video.stats.frames_decoded == 150


def test_nonref_skip_is_trusted_only_where_it_cannot_change_pixels():
    hvcc = bytearray(23)
    hvcc[0] = 1  # configurationVersion
    hvcc[21] = 1 << 3 | 3  # numTemporalLayers 1, lengthSizeMinusOne 3
    assert nonref_skip_is_safe("hevc", bytes(hvcc))
    hvcc[21] = 2 << 3 | 3
    assert not nonref_skip_is_safe("hevc", bytes(hvcc))
    assert not nonref_skip_is_safe("hevc", b"\x00\x00\x00\x01\x40\x01")  # Annex B
    assert not nonref_skip_is_safe("hevc", None)
    assert nonref_skip_is_safe("h264", None)
    assert not nonref_skip_is_safe("libdav1d", None)
    assert not nonref_skip_is_safe("vp9", None)


def test_mpegts_decodes_through_and_keeps_every_sample(tmp_path: Path):
    # MPEG-TS seeks land past the keyframe: seeking there lost samples.
    clip = b_frame_clip(tmp_path / "b.ts", "libx264", "keyint=40", n=200)
    reference, _ = decode_through(clip)
    video, frames = decode(clip)
    assert len(frames) == 32 and video.stats.seeks == 0
    assert_same_frames(frames, reference)
    assert video.stats.nonref_skip  # the index still tells samples from the rest


def test_a_seek_that_misses_its_keyframe_decodes_through_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    clip = b_frame_clip(tmp_path / "b.ts", "libx264", "keyint=40", n=200)
    reference, _ = decode_through(clip, "uniform:6")
    seekable = {*decode_frames._EXACT_SEEK_DEMUXERS, "mpegts"}
    monkeypatch.setattr(decode_frames, "_EXACT_SEEK_DEMUXERS", seekable)
    video, frames = decode(clip, "uniform:6")
    assert video.stats.seeks_missed == 1 and not video.stats.notes  # complete: no error
    assert_same_frames(frames, reference)


def test_matroska_samples_span_its_frames_not_its_header_duration(tmp_path: Path):
    # Timestamps start 1 s in (a cut or a recorder's clock): the segment duration counts
    # from 0, so duration x rate says 65 frames where the file holds 40.
    clip = encode_clip(
        tmp_path / "late_start.mkv",
        noise_frames(40, (64, 48)),
        pts=[25 + i for i in range(40)],
        container_format="matroska",
    )
    video, frames = decode(clip, "uniform:8")
    assert video.meta.frame_count == 40
    assert [f.index for f in frames] == uniform_indices(40, 8)
    reference, _ = decode_through(clip, "uniform:8")
    assert_same_frames(frames, reference)


def test_a_cut_upload_spreads_its_samples_over_the_frames_before_the_cut(tmp_path: Path):
    # moov first (as platforms store uploads), then cut at 30%: the header still
    # declares 100 frames, about 30 of which are in the file.
    whole = encode_clip(
        tmp_path / "whole.mp4",
        noise_frames(100, (160, 120)),
        gop=10,
        container_options={"movflags": "+faststart"},
    )
    cut = truncate(whole, tmp_path / "cut.mp4", whole.stat().st_size * 3 // 10)
    video, frames = decode(cut, "uniform:8")
    count = video.meta.frame_count or 0
    assert 20 < count < 40
    assert len(frames) >= 7  # the last packet may be cut through
    assert [f.index for f in frames] == uniform_indices(count, 8)[: len(frames)]


@pytest.mark.parametrize("policy", ["uniform:4", "fps:5", "keyframes"])
def test_times_count_from_the_first_frame_when_the_header_gives_no_start(
    tmp_path: Path, policy: str
):
    # H.264 in Matroska starting 1 s in: probed without a decoder (open_options),
    # FFmpeg reports no start time for it.
    clip = encode_clip(
        tmp_path / "late_start.mkv",
        noise_frames(20, (64, 48)),
        pts=[25 + i for i in range(20)],
        gop=5,
        container_format="matroska",
    )
    _, frames = decode(clip, policy)
    assert frames[0].index == 0 and frames[0].pts_s == 0.0
    assert [round(f.pts_s / 0.04) for f in frames] == [f.index for f in frames]


def test_a_webm_cut_before_its_cues_decodes_the_frames_before_the_cut(tmp_path: Path):
    # One long GOP starting 1 s in, cut at 30%: after indexing to the cut, the Matroska
    # demuxer refuses to seek back to the start (EPERM), so the file is opened again.
    whole = encode_clip(
        tmp_path / "whole.webm",
        noise_frames(150, (320, 180)),
        codec="libvpx-vp9",
        options={"deadline": "realtime", "cpu-used": "8"},
        pts=[25 + i for i in range(150)],
        gop=1000,
    )
    cut = truncate(whole, tmp_path / "cut.webm", whole.stat().st_size * 3 // 10)
    video, frames = decode(cut, "uniform:8")
    count = video.meta.frame_count or 0
    assert 10 < count < 100
    assert [f.index for f in frames] == uniform_indices(count, 8)
    assert frames[0].pts_s == 0.0


def test_audio_with_cover_art_is_unsupported_not_a_one_frame_video(
    tmp_path: Path, obama_rgb: np.ndarray
):
    # A song or podcast upload: its cover photo (a face) is not a frame of a video.
    audio = write_audio_with_cover(tmp_path / "song.m4a", obama_rgb[:, :160])
    with pytest.raises(UnsupportedMedia, match="no video stream"):
        decode(audio)


@pytest.mark.parametrize(("sar", "shown"), [(Fraction(2), (120, 160)), (Fraction(1, 2), (120, 40))])
def test_anamorphic_frames_are_shown_with_square_pixels(
    tmp_path: Path, sar: Fraction, shown: tuple[int, int]
):
    # 80x120 stored; a player shows it 160x120 (or 40x120): a 20x40 stored mark is a
    # 40x40 (10x40) square, and faces keep their proportions for the detector.
    img = np.zeros((120, 80, 3), np.uint8)
    img[40:80, 30:50] = 255
    clip = encode_clip(tmp_path / "anamorphic.mp4", [img] * 5, sample_aspect_ratio=sar)
    _, frames = decode(clip, "uniform:2")
    assert frames[0].image.shape[:2] == shown
    mark = frames[0].image[..., 0] > 128
    assert abs(int(mark.any(axis=0).sum()) - round(20 * sar)) <= 2
    assert abs(int(mark.any(axis=1).sum()) - 40) <= 2


@pytest.mark.parametrize(
    ("codec", "suffix"),
    [("libx264", "mp4"), ("libvpx-vp9", "webm"), ("libvpx", "webm"), ("gif", "gif")],
)
def test_keyframes_sampling_takes_only_keyframes_from_every_decoder(
    tmp_path: Path, codec: str, suffix: str
):
    # VP8, VP9 and GIF decoders ignore skip_frame=NONKEY and output every frame.
    pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
    clip = encode_clip(
        tmp_path / f"c.{suffix}", noise_frames(24, (64, 48)), codec=codec, pix_fmt=pix_fmt, gop=8
    )
    with av.open(str(clip)) as c:
        keys = sum(bool(p.is_keyframe) for p in c.demux(video=0) if p.size)
    _, frames = decode(clip, "keyframes")
    assert frames and len(frames) == keys < 24
    assert frames[0].index == 0


def test_keyframes_of_a_variable_rate_video_keep_their_frame_index(tmp_path: Path):
    # A phone's variable frame rate: 10 fps, then 50 fps, then 10 fps again.
    pts = [0, 100, 200, 300, 320, 340, 360, 380, 400, 420, 440, 460, 560, 660, 760, 860]
    clip = encode_clip(
        tmp_path / "vfr.mp4",
        noise_frames(16, (64, 48)),
        pts=pts,
        fps=1000,  # timestamps in milliseconds
        gop=4,
        options={"x264-params": "scenecut=0"},
    )
    _, frames = decode(clip, "keyframes")
    assert [f.index for f in frames] == [0, 4, 8, 12]
    assert [round(f.pts_s, 3) for f in frames] == [0.0, 0.32, 0.4, 0.56]
