"""Limits before decode, and no nested file access: what a crafted header or playlist
cannot make the decoder do."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import pytest

import operators.decode_frames as decode_frames
from operators.decode_frames import FrameDecoder
from operators.errors import UnsupportedMedia, VideoError, VideoTooLarge
from pipelines.cli import build_parser, build_scan_config, main
from pipelines.config import LimitsConfig, SamplingConfig
from tests.conftest import REAL_VIDEOS
from tests.media import (
    concat_script,
    encode_clip,
    hls_playlist,
    noise_frames,
    set_gif_screen,
    set_mov_mjpeg_size,
    write_gif,
)

ROOT = Path(__file__).resolve().parent.parent


def decode(path: Path, policy: str = "uniform:4", **limits: object) -> int:
    decoder = FrameDecoder(SamplingConfig.parse(policy), LimitsConfig(**limits))  # type: ignore[arg-type]
    with decoder.open(str(path)) as video:
        return len(list(video.frames))


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    return encode_clip(tmp_path / "c.mp4", noise_frames(8, (64, 48)), audio_streams=3)


# --- limits from the header -----------------------------------------------------------


def test_too_many_streams_is_too_large(clip: Path):
    with pytest.raises(VideoTooLarge, match="4 streams exceeds the limit of 3"):
        decode(clip, max_streams=3)
    assert decode(clip, max_streams=4) == 4


def test_declared_duration_over_the_limit_is_too_large(clip: Path):
    with pytest.raises(VideoTooLarge, match="declared duration .* exceeds the limit"):
        decode(clip, max_duration_s=0.1)


def test_declared_frame_count_over_the_limit_is_too_large(clip: Path):
    with pytest.raises(VideoTooLarge, match="declared frame count 8 exceeds the limit of 5"):
        decode(clip, max_frames=5)


def test_a_stream_that_declares_no_count_is_capped_while_demuxed_or_decoded(tmp_path: Path):
    raw = encode_clip(tmp_path / "raw.h264", noise_frames(12, (64, 48)), container_format="h264")
    with pytest.raises(VideoTooLarge, match="(demuxed|decoded) frame count"):
        decode(raw, "uniform:4", max_frames=5)
    with pytest.raises(VideoTooLarge, match="frame count"):
        decode(raw, "fps:1000", max_frames=5)
    assert decode(raw, "fps:1000") == 12


def test_a_codec_outside_the_allow_list_is_unsupported(clip: Path):
    with pytest.raises(UnsupportedMedia, match="video codec h264 is not allowed"):
        decode(clip, allowed_codecs=("vp9", "av1"))


def test_the_cli_flags_set_every_limit(tiny_checkpoint: Path):
    args = build_parser().parse_args(
        ["scan", str(REAL_VIDEOS), "--model", str(tiny_checkpoint), "--max-pixels", "100"]
        + ["--max-duration", "60", "--max-frames", "900", "--max-streams", "3"]
        + ["--codecs", "h264,vp9", "--no-isolate", "--timeout", "9", "--max-bytes", "5"]
    )
    args.beam_args = []
    limits = build_scan_config(args).limits
    assert limits == LimitsConfig(
        max_bytes=5,
        timeout_s=9.0,
        max_pixels=100,
        max_duration_s=60.0,
        max_frames=900,
        max_streams=3,
        allowed_codecs=("h264", "vp9"),
        isolate=False,
        allow_prefixes=("file:///",),
    )


@pytest.mark.parametrize(
    "codecs, message",
    [
        ("h264,bogus", "'bogus' is not a codec FFmpeg can decode"),
        ("aac", "'aac' is not a video codec (audio)"),
        ("libdav1d", "'libdav1d' is a decoder of 'av1': give the codec id"),
    ],
)
def test_a_codec_list_the_header_check_could_never_match_is_one_line(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str], codecs: str, message: str
):
    # Unchecked, a typo made every video of the run an `unsupported` row, and exit 0.
    argv = ["scan", str(REAL_VIDEOS), "--model", str(tiny_checkpoint), "--codecs", codecs]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"dfscan: error: --codecs: {message}\n"


@pytest.mark.parametrize("timeout", ["1e300", "inf", "nan", "0", "-5"])
def test_a_per_video_timeout_no_wait_can_take_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], timeout: str
):
    # 1e300 used to pass, and the decode worker's wait died with an OverflowError.
    with pytest.raises(SystemExit) as exc:
        main(["scan", str(tmp_path), "--timeout", timeout])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        err == f"dfscan: error: argument --timeout: must be within [0.01, 604800], got {timeout}\n"
    )


# --- a giant declared frame size never allocates -------------------------------------

# Decode one file in a fresh interpreter and report its status and peak RSS (VmHWM: per
# address space, so unlike ru_maxrss it does not inherit pytest's peak across exec): the
# only honest way to see what FFmpeg allocated. A blinded run disables our own header
# checks, leaving only the decoder's ``max_pixels``.
_PROBE = textwrap.dedent(
    """
    import re, sys
    import operators.decode_frames as df
    from operators.errors import VideoError
    from pipelines.config import LimitsConfig, SamplingConfig
    path, max_pixels, blind = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    if blind:
        df.gif_screen_size = lambda head: None
        df.FrameDecoder._check_pixels = lambda self, size, what: None
    limits = LimitsConfig(max_pixels=max_pixels)
    decoder = df.FrameDecoder(SamplingConfig.parse("uniform:2"), limits)
    try:
        with decoder.open(path) as video:
            status = f"ok:{len(list(video.frames))}"
    except VideoError as err:
        status = err.status.value
    status_file = open("/proc/self/status").read()
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", status_file).group(1))
    print(status, peak_kb // 1024)
    """
)


def probe(path: Path, max_pixels: int, blind: bool = False) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(max_pixels), "1" if blind else "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    status, rss_mb = done.stdout.split()
    return status, int(rss_mb)


@pytest.fixture(scope="module")
def giants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("giants")
    gif = write_gif(d / "small.gif")
    mov = encode_clip(d / "small.mov", noise_frames(2, (32, 32)), codec="mjpeg", pix_fmt="yuvj420p")
    return {
        "mov16384": set_mov_mjpeg_size(mov, d / "h16384.mov", 16384, 16384),
        "gif16384": set_gif_screen(gif, d / "h16384.gif", 16384, 16384),
        "mov6000": set_mov_mjpeg_size(mov, d / "h6000.mov", 6000, 6000),
        "gif6000": set_gif_screen(gif, d / "h6000.gif", 6000, 6000),
        "small": gif,
    }


def test_a_16384_square_header_is_too_large_and_allocates_nothing(giants):
    _, baseline = probe(giants["small"], LimitsConfig.max_pixels)
    for name in ("mov16384", "gif16384"):
        status, rss = probe(giants[name], LimitsConfig.max_pixels)
        assert status == "too_large", name
        assert rss < baseline + 40, (name, rss, baseline)  # one such frame is 768 MB


def test_the_decoders_own_max_pixels_holds_when_the_header_declares_nothing(giants):
    """With our header checks blinded (a container that declares no size), the codec
    context's ``max_pixels`` still refuses the frame buffer: the video fails, no 100 MB
    canvas is ever allocated. The control run shows what an unguarded decode costs."""
    _, baseline = probe(giants["small"], LimitsConfig.max_pixels)
    for name in ("gif6000", "mov6000"):
        status, rss = probe(giants[name], 1920 * 1080, blind=True)
        assert status == "decode_error", name
        assert rss < baseline + 40, (name, rss, baseline)
    status, rss = probe(giants["gif6000"], 8192 * 8192, blind=True)  # the control
    assert status.startswith("ok") and rss > baseline + 200, (status, rss, baseline)


def test_header_size_checks_come_before_decoding(giants):
    with pytest.raises(VideoTooLarge, match="GIF screen 6000x6000"):
        decode(giants["gif6000"], max_pixels=1920 * 1080)
    with pytest.raises(VideoTooLarge, match="frame size 6000x6000"):
        decode(giants["mov6000"], max_pixels=1920 * 1080)


# --- playlists cannot make the decoder read other files ------------------------------


@pytest.fixture()
def playlists(tmp_path: Path) -> tuple[dict[str, Path], Path]:
    """Uploads that name other files, and those files: in ``_private`` beside them,
    a name FFmpeg's concat ``safe`` mode accepts (it refuses only absolute paths and
    ``..``) and that a scan never lists (``_`` names are skipped). On a shared upload
    folder the same trick would read another user's upload into this one's row."""
    uploads = tmp_path / "uploads"
    private = uploads / "_private"
    private.mkdir(parents=True)
    target = private / "target.mp4"
    target.write_bytes((REAL_VIDEOS / "hamilton_clip.mp4").read_bytes())
    seg = private / "seg.ts"  # an HLS segment as FFmpeg's hls demuxer expects one
    encode_clip(seg, noise_frames(4, (64, 48)), container_format="mpegts")
    files = {
        "hls.mp4": uploads / "hls.mp4",
        "hls.m3u8": uploads / "hls.m3u8",
        "concat.mp4": uploads / "concat.mp4",
    }
    files["hls.mp4"].write_text(hls_playlist(seg))
    files["hls.m3u8"].write_text(hls_playlist(seg).replace(str(seg), "_private/seg.ts"))
    files["concat.mp4"].write_text(concat_script(target, uploads))
    return files, private


def _reset_atimes(folder: Path) -> None:
    for f in folder.iterdir():
        os.utime(f, (0, f.stat().st_mtime))  # relatime updates atime when atime <= mtime


def _read_any(folder: Path) -> bool:
    return any(f.stat().st_atime != 0 for f in folder.iterdir())


def test_ffmpeg_defaults_would_follow_these_playlists(playlists):
    """The control: with FFmpeg's own defaults the same uploads read the private files
    (so the access-time probe below can see a read on this filesystem)."""
    files, private = playlists
    for name in ("concat.mp4", "hls.m3u8"):
        _reset_atimes(private)
        with av.open(str(files[name])) as container:
            assert container.format.name in ("concat", "hls")
            assert sum(1 for _ in container.decode(video=0)) > 0
        if not _read_any(private):
            pytest.skip("this filesystem does not record access times")


@pytest.mark.parametrize("name", ["hls.mp4", "hls.m3u8", "concat.mp4"])
def test_a_playlist_upload_is_unsupported_and_its_targets_are_never_read(playlists, name):
    files, private = playlists
    _reset_atimes(private)
    with pytest.raises(UnsupportedMedia):
        decode(files[name])
    assert not _read_any(private)


@pytest.mark.parametrize("name", ["hls.m3u8", "concat.mp4"])
def test_the_protocol_allow_list_holds_even_if_the_format_list_had_a_hole(
    playlists, name, monkeypatch: pytest.MonkeyPatch
):
    files, private = playlists
    holed = (*decode_frames.ALLOWED_DEMUXERS, "hls", "concat")
    monkeypatch.setattr(decode_frames, "ALLOWED_DEMUXERS", holed)
    _reset_atimes(private)
    with pytest.raises(VideoError):
        decode(files[name])
    assert not _read_any(private)
