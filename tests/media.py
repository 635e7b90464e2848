"""Media the tests make themselves with PyAV: clips with known frames, faces pasted from
the shared photos, and broken files of every kind a scan must survive."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

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
    with av.open(str(path), "w", format=container_format) as out:
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


def truncate(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst
