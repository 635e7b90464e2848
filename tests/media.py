"""Media the tests make themselves with PyAV: clips with known frames, faces pasted from
the shared photos, and broken files of every kind a scan must survive."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np


def write_video(
    path: Path,
    frames: list[np.ndarray] | None = None,
    *,
    n: int = 30,
    size: tuple[int, int] = (160, 120),
    fps: int = 25,
    codec: str = "libx264",
    rotation: int = 0,
    gop: int = 12,
    container_format: str | None = None,
) -> Path:
    """Write RGB ``frames`` (or ``n`` frames whose red channel encodes the index)."""
    w, h = size
    if frames is None:
        frames = []
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = (i * 8) % 256
            frames.append(img)
    h, w = frames[0].shape[:2]
    with keeps_scheduling(), av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.time_base = Fraction(1, fps)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def face_frames(
    face_rgb: np.ndarray, n: int = 20, size: tuple[int, int] = (640, 360), drift: int = 2
) -> list[np.ndarray]:
    """A face photo pasted on a grey background, drifting slowly to the right."""
    w, h = size
    fh, fw = face_rgb.shape[:2]
    frames = []
    for i in range(n):
        img = np.full((h, w, 3), 90, np.uint8)
        x = min(20 + i * drift, w - fw)
        y = (h - fh) // 2
        img[y : y + fh, x : x + fw] = face_rgb
        frames.append(img)
    return frames


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    rate = 16000
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        samples = (np.sin(np.arange(int(rate * seconds)) / 20) * 8000).astype(np.int16)
        step = 1024
        for i in range(0, len(samples) - step, step):
            frame = av.AudioFrame.from_ndarray(
                samples[None, i : i + step], format="s16", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_with_cover(path: Path, cover_rgb: np.ndarray) -> Path:
    """An MP4 of audio whose cover art (a picture with the ``attached_pic`` disposition,
    as music and podcast files carry) FFmpeg exposes as a one-frame video stream."""
    h, w = cover_rgb.shape[:2]
    with av.open(str(path), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=16000)
        cover = out.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = w, h, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(cover_rgb), format="rgb24")
        picture.pts = 0
        for packet in [*cover.encode(picture), *cover.encode()]:
            out.mux(packet)
        _mux_silence(out, audio)
    return path


def _mux_silence(out: Any, audio: Any) -> None:
    """One 1024-sample block of silence on a 16 kHz AAC stream, flushed."""
    silence = av.AudioFrame.from_ndarray(
        np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
    )
    silence.sample_rate, silence.pts = 16000, 0
    for packet in [*audio.encode(silence), *audio.encode()]:
        out.mux(packet)


def truncate(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


# --- hostile media: every kind of upload a scan must survive (tests/test_hostile_corpus.py)


def noise_frames(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Smooth random RGB frames (no face); the seed makes the bytes of every clip unique."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        img = np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]
        img = np.ascontiguousarray(np.roll(img, i * 2, axis=1))
        if img.shape[:2] != (h, w):  # 1x1, 2x2, odd sizes: kron gave fewer pixels
            img = np.resize(img, (h, w, 3))
        frames.append(img)
    return frames


def scheduling() -> tuple[int, int] | None:
    """This thread's scheduling policy and priority (None where the OS has no such call)."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority


def restore_scheduling(state: tuple[int, int] | None) -> bool:
    """Put this thread back on ``state`` (from ``scheduling()``); True when it had moved."""
    if state is None or scheduling() == state:
        return False
    policy, priority = state
    os.sched_setscheduler(0, policy, os.sched_param(priority))
    return True


@contextlib.contextmanager
def keeps_scheduling() -> Iterator[None]:
    """Give the calling thread back its scheduling policy when the block ends.

    SVT-AV1's encoder (``libsvtav1`` in PyAV's FFmpeg) moves the thread that opens it to
    SCHED_FIFO at priority 99 whenever it is allowed to, as root is. Every process that
    thread starts afterwards inherits the policy: the test servers, decode workers, Ray,
    promtool. Real-time processes of one priority are not time-sliced against each other,
    so on two cores a pair of them spinning can starve the rest for good; a CI run of the
    suite stalled so.
    """
    state = scheduling()
    try:
        yield
    finally:
        restore_scheduling(state)


def encode_clip(
    path: Path,
    frames: list[np.ndarray],
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fps: int = 25,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
    pts: list[int] | None = None,
    dts_order: bool = False,
    time_base: Fraction | None = None,
    audio_streams: int = 0,
    rotation: int = 0,
    gop: int | None = None,
    container_options: dict[str, str] | None = None,
    sample_aspect_ratio: Fraction | None = None,
) -> Path:
    """Encode RGB ``frames`` with any codec and pixel format PyAV's FFmpeg can write.

    ``pts`` overrides the presentation times (in ``time_base``, 1/fps by default); with
    ``dts_order`` the packets keep increasing decode times and carry ``pts`` as given,
    which is how a muxer lets decreasing presentation times into a file.
    ``audio_streams`` adds that many short silent AAC tracks (a "many streams" file).
    ``sample_aspect_ratio`` makes the pixels non-square (anamorphic video).
    """
    h, w = frames[0].shape[:2]
    tb = time_base or Fraction(1, fps)
    with (
        keeps_scheduling(),
        av.open(
            str(path), "w", format=container_format, container_options=container_options or {}
        ) as out,
    ):
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = w, h
        stream.pix_fmt = pix_fmt
        stream.time_base = tb
        if gop is not None:
            stream.codec_context.gop_size = gop
        if sample_aspect_ratio is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if rotation:
            stream.set_display_rotation(rotation)
        audio = [out.add_stream("aac", rate=16000) for _ in range(audio_streams)]
        packets: list[av.Packet] = []
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = pts[i] if pts is not None and not dts_order else i
            packets.extend(stream.encode(frame))
        packets.extend(stream.encode())
        for i, packet in enumerate(packets):
            if dts_order and pts is not None:
                packet.dts, packet.pts = i, max(i, pts[i])
            out.mux(packet)
        for a in audio:
            _mux_silence(out, a)
    return path


def write_gif(path: Path, n: int = 6, size: tuple[int, int] = (48, 32), seed: int = 0) -> Path:
    return encode_clip(
        path, noise_frames(n, size, seed), codec="gif", pix_fmt="rgb8", container_format="gif"
    )


def set_gif_screen(src: Path, dst: Path, width: int, height: int) -> Path:
    """The GIF with its logical screen (the canvas the decoder allocates) resized."""
    data = bytearray(src.read_bytes())
    data[6:10] = struct.pack("<HH", width, height)
    dst.write_bytes(bytes(data))
    return dst


def _find_box(data: bytes | bytearray, fourcc: bytes) -> int:
    pos = data.find(fourcc)
    if pos < 4:
        raise ValueError(f"no {fourcc!r} box")
    return pos


def set_mov_mjpeg_size(src: Path, dst: Path, width: int, height: int) -> Path:
    """An MJPEG .mov whose every header says ``width`` x ``height``: the track header, the
    sample description and each frame's JPEG SOF0 marker. The pixels stay tiny, so the
    file is a few KB while a decoder that trusts it allocates width*height*3 bytes."""
    data = bytearray(src.read_bytes())
    tkhd = _find_box(data, b"tkhd")
    if data[tkhd + 4] != 0:
        raise ValueError("tkhd version 1 not handled")
    data[tkhd + 80 : tkhd + 88] = struct.pack(">II", width << 16, height << 16)
    stsd = _find_box(data, b"stsd")
    data[stsd + 44 : stsd + 48] = struct.pack(">HH", width, height)
    pos = 0
    while (pos := data.find(b"\xff\xc0", pos)) != -1:  # SOF0: len, precision, h, w
        data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
        pos += 9
    dst.write_bytes(bytes(data))
    return dst


def drop_tracks(src: Path, dst: Path) -> Path:
    """An MP4 whose tracks are renamed to ``free`` boxes: a valid container, no streams."""
    data = src.read_bytes().replace(b"trak", b"free")
    dst.write_bytes(data)
    return dst


def corrupt_middle(src: Path, dst: Path, seed: int = 0, span: int = 2048) -> Path:
    """Random bytes over ``span`` bytes in the middle of the media data (mid-GOP)."""
    data = bytearray(src.read_bytes())
    start = data.find(b"mdat")
    start = start + 8 if start >= 0 else 0
    mid = start + (len(data) - start) // 2
    rng = np.random.default_rng(seed)
    data[mid : mid + span] = rng.integers(0, 256, min(span, len(data) - mid), np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def hls_playlist(target: Path) -> str:
    """An HLS media playlist whose one segment is ``target`` (absolute and relative)."""
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:2.0,\n{target}\n#EXTINF:2.0,\n{target.name}\n#EXT-X-ENDLIST\n"
    )


def concat_script(target: Path, relative_to: Path) -> str:
    """An ffconcat script naming ``target`` by a relative path (allowed in FFmpeg's
    ``safe`` mode, which refuses only absolute paths)."""
    return f"ffconcat version 1.0\nfile {os.path.relpath(target, relative_to)}\n"
