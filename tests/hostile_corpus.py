"""The hostile corpus: every kind of upload the scan must survive, made by the tests.

``build_corpus(folder, face_rgb)`` writes one file per kind and returns the status each
must end with. Every file has unique bytes (a seed per clip), so no two are deduplicated
into one row. Clips are small (<= 320x240, <= 12 frames) so one scan of the whole corpus
takes seconds per runner.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import IMAGES, REAL_VIDEOS
from tests.media import (
    concat_script,
    corrupt_middle,
    drop_tracks,
    encode_clip,
    hls_playlist,
    noise_frames,
    set_gif_screen,
    set_mov_mjpeg_size,
    truncate,
    write_audio_only,
    write_gif,
)

# Test-only fault hooks (operators/isolation.py): the isolated worker aborts or hangs on
# a URI containing these markers, standing in for a decoder crash or an infinite loop.
CRASH_MARK = "fault-abort"
SEGV_MARK = "fault-segv"
HANG_MARK = "fault-hang"
FAULTS_ENV = f"abort={CRASH_MARK},segv={SEGV_MARK},hang={HANG_MARK}"

SMALL = (96, 64)
FUZZ_CRASHES = Path(__file__).resolve().parent / "fuzz" / "crashes"


@dataclass(frozen=True)
class Kind:
    """One file of the corpus: its name, how it is made, the status it must end with."""

    name: str
    make: Callable[[Path], object]
    status: str


def _faces(face_rgb: np.ndarray, n: int = 8, size: tuple[int, int] = (320, 240)) -> list:
    """The face photo on grey, drifting right: SCRFD finds it in every frame."""
    w, h = size
    face = face_rgb
    if face.shape[0] > h - 20:
        scale = (h - 20) / face.shape[0]
        face = cv2.resize(face, (int(face.shape[1] * scale), h - 20))
    fh, fw = face.shape[:2]
    frames = []
    for i in range(n):
        img = np.full((h, w, 3), 90, np.uint8)
        x = min(10 + i * 3, w - fw)
        y = (h - fh) // 2
        img[y : y + fh, x : x + fw] = face
        frames.append(img)
    return frames


def _scaled_face_frames(face_rgb: np.ndarray, face_px: int, size: tuple[int, int], n: int = 6):
    """Frames whose face is ``face_px`` tall (tiny: below what a detector resolves; huge:
    larger than the frame, so the face is cut by every border)."""
    w, h = size
    scale = face_px / face_rgb.shape[0]
    face = cv2.resize(face_rgb, (max(1, int(face_rgb.shape[1] * scale)), face_px))
    frames = []
    for i in range(n):
        canvas = np.full((h, w, 3), 90, np.uint8)
        fh, fw = face.shape[:2]
        # Centre the face on the frame; a face larger than the frame is cropped by it.
        y0, x0 = (h - fh) // 2, (w - fw) // 2 + i
        src_y, src_x = max(0, -y0), max(0, -x0)
        dst_y, dst_x = max(0, y0), max(0, x0)
        hh, ww = min(h - dst_y, fh - src_y), min(w - dst_x, fw - src_x)
        canvas[dst_y : dst_y + hh, dst_x : dst_x + ww] = face[
            src_y : src_y + hh, src_x : src_x + ww
        ]
        frames.append(canvas)
    return frames


def _text(content: str) -> Callable[[Path], object]:
    return lambda p: p.write_text(content)


def _bytes(data: bytes) -> Callable[[Path], object]:
    return lambda p: p.write_bytes(data)


def _fuzz_finding(name: str) -> Callable[[Path], object]:
    """A saved fuzzing input as a file (its first byte only chose the harness target)."""
    return _bytes((FUZZ_CRASHES / name).read_bytes()[1:])


def _clip(seed: int, size: tuple[int, int] = SMALL, n: int = 8, **kw) -> Callable[[Path], object]:
    return lambda p: encode_clip(p, noise_frames(n, size, seed), **kw)


PRIVATE = "_private"  # beside the uploads, never listed (``_`` names are skipped)


def kinds(face_rgb: np.ndarray, folder: Path, work: Path) -> list[Kind]:
    """Every kind, in the order they are written into ``folder``. ``work`` holds the
    intermediate files; ``folder/_private`` the files the playlists point at, by names
    FFmpeg's own concat ``safe`` mode accepts."""
    rng = np.random.default_rng(7)
    good = encode_clip(work / "good.mp4", noise_frames(12, SMALL, 1), gop=4)
    faststart = encode_clip(
        work / "faststart.mp4",
        noise_frames(40, SMALL, 2),
        gop=4,
        container_options={"movflags": "+faststart"},
    )
    mjpeg_mov = encode_clip(
        work / "mjpeg.mov", noise_frames(3, (32, 32), 3), codec="mjpeg", pix_fmt="yuvj420p"
    )
    small_gif = write_gif(work / "small.gif", seed=4)
    private = folder / PRIVATE
    private.mkdir(parents=True, exist_ok=True)
    target = private / "target.mp4"
    shutil.copy(REAL_VIDEOS / "hamilton_clip.mp4", target)
    segment = encode_clip(private / "seg.ts", noise_frames(4, SMALL, 30), container_format="mpegts")
    faces = _faces(face_rgb)
    size_good = good.stat().st_size
    moov = good.read_bytes().rfind(b"moov")  # at the end: PyAV writes no faststart
    # (name, maker, expected status)
    return [
        # Not a video at all.
        Kind("zero.mp4", _bytes(b""), "unsupported"),
        Kind("random.mp4", _bytes(rng.integers(0, 256, 50_000, np.uint8).tobytes()), "unsupported"),
        Kind("text.mp4", _text("definitely not a video\n" * 40), "unsupported"),
        Kind("image.mp4", _bytes((IMAGES / "obama.jpg").read_bytes()), "unsupported"),
        Kind("audio_only.mp4", lambda p: write_audio_only(p), "unsupported"),
        Kind("no_streams.mp4", lambda p: drop_tracks(good, p), "unsupported"),
        # Playlists that would make FFmpeg read other files: refused, target never read.
        Kind("hls_playlist.mp4", _text(hls_playlist(segment) + "#mp4\n"), "unsupported"),
        Kind("hls_playlist.m3u8", _text(hls_playlist(segment) + "#m3u8\n"), "unsupported"),
        Kind(
            "concat_script.mp4",
            lambda p: p.write_text(concat_script(target, p.parent)),
            "unsupported",
        ),
        # A codec outside the allow-list (lossless FFV1 in Matroska).
        Kind("ffv1.mkv", _clip(5, codec="ffv1", container_format="matroska"), "unsupported"),
        # A raw H.264 elementary stream: no container, no frame count, no seeking back.
        Kind("raw_stream.h264", _clip(31, container_format="h264"), "no_face"),
        # Found by fuzzing: a frame that decodes but that swscale refuses to convert.
        Kind(
            "fuzz_unconvertible_frame.h264",
            _fuzz_finding("h264-unconvertible-frame"),
            "decode_error",
        ),
        # Truncated at several offsets: header only, half (index lost), inside the index,
        # and a faststart file cut mid-data (its first frames still decode).
        Kind("truncated_64.mp4", lambda p: truncate(good, p, 64), "decode_error"),
        Kind("truncated_half.mp4", lambda p: truncate(good, p, size_good // 2), "decode_error"),
        Kind(
            "truncated_in_moov.mp4",
            lambda p: truncate(good, p, (moov + size_good) // 2),
            "decode_error",
        ),
        Kind(
            "truncated_faststart.mp4",
            lambda p: truncate(faststart, p, faststart.stat().st_size * 6 // 10),
            "no_face",
        ),
        Kind("corrupt_mid_gop.mp4", lambda p: corrupt_middle(good, p, seed=1, span=600), "no_face"),
        # Sizes: 1x1, 2x2, odd, and headers that declare what a decoder would allocate.
        Kind("tiny_1x1.mp4", _clip(6, (1, 1), pix_fmt="yuv444p"), "no_face"),
        Kind("tiny_2x2.mp4", _clip(7, (2, 2)), "no_face"),
        Kind("odd_161x121.mp4", _clip(8, (161, 121), pix_fmt="yuv444p"), "no_face"),
        Kind(
            "huge_16384.mov", lambda p: set_mov_mjpeg_size(mjpeg_mov, p, 16384, 16384), "too_large"
        ),
        Kind(
            "huge_12000.mov", lambda p: set_mov_mjpeg_size(mjpeg_mov, p, 12000, 12000), "too_large"
        ),
        Kind("huge_screen.gif", lambda p: set_gif_screen(small_gif, p, 12000, 12000), "too_large"),
        # Time: a 10-day declared duration with 4 frames; 5 hours with 4 frames (under the
        # limit: the lying header costs nothing); decreasing timestamps; variable rate.
        Kind(
            "huge_duration.mkv",
            _clip(9, n=4, pts=[0, 1, 2, 10 * 86400 * 25], container_format="matroska"),
            "too_large",
        ),
        Kind(
            "long_duration_few_frames.mkv",
            _clip(10, n=4, pts=[0, 1, 2, 5 * 3600 * 25], container_format="matroska"),
            "no_face",
        ),
        Kind(
            "decreasing_pts.mkv",
            _clip(
                11,
                n=8,
                codec="mjpeg",
                pix_fmt="yuvj420p",
                pts=[0, 90, 2, 80, 4, 70, 6, 60],
                dts_order=True,
                container_format="matroska",
            ),
            "no_face",
        ),
        Kind(
            "vfr.mkv",
            lambda p: encode_clip(
                p,
                faces,
                pts=[0, 40, 45, 200, 210, 900, 905, 1500],
                time_base=Fraction(1, 1000),
                container_format="matroska",
            ),
            "scored",
        ),
        Kind("rotated_90.mp4", lambda p: encode_clip(p, faces, rotation=90), "scored"),
        # Pixel formats and scan types.
        Kind("tenbit.mp4", _clip(12, pix_fmt="yuv420p10le"), "no_face"),
        Kind("yuv444.mp4", _clip(13, pix_fmt="yuv444p"), "no_face"),
        Kind("interlaced.mp4", _clip(14, options={"x264-params": "interlaced=1"}), "no_face"),
        Kind(
            "interlaced_mpeg2.mpg",
            _clip(
                15, codec="mpeg2video", container_format="mpeg", options={"flags": "+ildct+ilme"}
            ),
            "no_face",
        ),
        # Many streams: over the limit of 16 (40 audio tracks), and under it (3).
        Kind(
            "many_streams.mkv",
            _clip(16, n=4, audio_streams=40, container_format="matroska"),
            "too_large",
        ),
        Kind(
            "three_audio_tracks.mkv",
            _clip(17, n=4, audio_streams=3, container_format="matroska"),
            "no_face",
        ),
        # Codecs and containers, with a face in each.
        Kind(
            "av1.mkv",
            lambda p: encode_clip(p, faces, codec="libsvtav1", container_format="matroska"),
            "scored",
        ),
        Kind(
            "hevc.mp4",
            lambda p: encode_clip(
                p, faces, codec="libx265", options={"x265-params": "log-level=error"}
            ),
            "scored",
        ),
        Kind("vp9.webm", lambda p: encode_clip(p, faces, codec="libvpx-vp9"), "scored"),
        Kind("vp8.webm", lambda p: encode_clip(p, faces, codec="libvpx"), "scored"),
        Kind("mpeg4_part2.avi", lambda p: encode_clip(p, faces, codec="mpeg4"), "scored"),
        Kind(
            "mjpeg.avi",
            lambda p: encode_clip(p, faces, codec="mjpeg", pix_fmt="yuvj420p"),
            "scored",
        ),
        Kind("animated.gif", lambda p: write_gif(p, seed=18), "no_face"),
        # Faces a detector cannot use: 10 px tall, and larger than the frame.
        Kind(
            "tiny_faces.mp4",
            lambda p: encode_clip(p, _scaled_face_frames(face_rgb, 10, (320, 240))),
            "no_face",
        ),
        Kind(
            "huge_faces.mp4",
            lambda p: encode_clip(p, _scaled_face_frames(face_rgb, 900, (320, 240))),
            "no_face",
        ),
        # Names: spaces, unicode, a newline, dots, a leading dash, shell syntax.
        Kind("with space.mp4", _clip(19), "no_face"),
        Kind("ünïcødé 视频.mp4", _clip(20), "no_face"),
        Kind("new\nline.mp4", _clip(21), "no_face"),
        Kind("dots..in..name.mp4", _clip(22), "no_face"),
        Kind("-leading-dash.mp4", _clip(23), "no_face"),
        Kind("$(touch PWNED); `id`.mp4", _clip(24), "no_face"),
        # Decoder crashes and hangs, simulated in the isolated worker (test-only hook).
        Kind(f"{CRASH_MARK}.mp4", _clip(25), "decode_error"),
        Kind(f"{SEGV_MARK}.mp4", _clip(26), "decode_error"),
        Kind(f"{HANG_MARK}.mp4", _clip(27), "timeout"),
        # A plain face video, so the corpus proves the good path too.
        Kind("face.mp4", lambda p: encode_clip(p, faces), "scored"),
    ]


def build_corpus(folder: Path, face_rgb: np.ndarray, work: Path) -> dict[str, str]:
    """Write every kind into ``folder``; returns file name -> expected status."""
    folder.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    for kind in kinds(face_rgb, folder, work):
        kind.make(folder / kind.name)
        assert (folder / kind.name).exists(), kind.name
        expected[kind.name] = kind.status
    return expected
