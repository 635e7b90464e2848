"""The fixed benchmark corpus: the shared real videos plus clips generated with PyAV.

Generated clips cover the layouts that decide decode and seek cost: 720p and 1080p,
H.264 and HEVC, 10-60 s, short (12) and long (250) GOPs, with one or two faces from the
shared photos drifting slowly over a textured background. They are made once into a
cache folder (never committed) and reused by every benchmark run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from pipelines.config import shared_dir

CACHE = Path(__file__).resolve().parent / ".corpus"


@dataclass(frozen=True)
class ClipSpec:
    name: str
    width: int
    height: int
    seconds: int
    codec: str  # libx264 | libx265
    gop: int
    faces: int

    @property
    def filename(self) -> str:
        return f"{self.name}.mp4"


CLIPS = (
    ClipSpec("h264_720p_10s_gop12_1face", 1280, 720, 10, "libx264", 12, 1),
    ClipSpec("h264_720p_30s_gop250_2faces", 1280, 720, 30, "libx264", 250, 2),
    ClipSpec("h264_1080p_20s_gop250_1face", 1920, 1080, 20, "libx264", 250, 1),
    ClipSpec("h264_1080p_60s_gop250_2faces", 1920, 1080, 60, "libx264", 250, 2),
    ClipSpec("hevc_720p_20s_gop250_2faces", 1280, 720, 20, "libx265", 250, 2),
    ClipSpec("hevc_1080p_10s_gop60_1face", 1920, 1080, 10, "libx265", 60, 1),
)
FPS = 25


def _faces(height: int, count: int) -> list[np.ndarray]:
    images = shared_dir() / "data" / "images"
    out = []
    for name in ("obama.jpg", "biden.jpg")[:count]:
        img = cv2.imread(str(images / name))
        h, w = img.shape[:2]
        side = height // 3
        out.append(cv2.cvtColor(cv2.resize(img, (int(w * side / h), side)), cv2.COLOR_BGR2RGB))
    return out


def make_clip(spec: ClipSpec, path: Path) -> Path:
    rng = np.random.default_rng(0)
    background = rng.integers(40, 200, (spec.height // 8, spec.width // 8, 3), dtype=np.uint8)
    background = cv2.resize(background, (spec.width, spec.height), interpolation=cv2.INTER_CUBIC)
    faces = _faces(spec.height, spec.faces)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream(spec.codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.codec_context.gop_size = spec.gop
        opts = {"preset": "ultrafast"}
        if spec.codec == "libx264":
            opts["x264-params"] = f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0"
        else:
            opts["x265-params"] = (
                f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:log-level=error"
            )
        stream.options = opts
        for i in range(spec.seconds * FPS):
            frame = background.copy()
            for k, face in enumerate(faces):
                fh, fw = face.shape[:2]
                x = int((spec.width // (len(faces) + 1)) * (k + 1) - fw // 2 + 40 * np.sin(i / 50))
                y = spec.height // 2 - fh // 2
                frame[y : y + fh, x : x + fw] = face
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


def build_corpus(with_real: bool = True, with_generated: bool = True) -> Path:
    """A folder of every corpus video (copies of the real ones, cached generated clips)."""
    folder = CACHE / ("all" if with_real and with_generated else "real" if with_real else "gen")
    folder.mkdir(parents=True, exist_ok=True)
    if with_generated:
        for spec in CLIPS:
            target = folder / spec.filename
            if not target.exists():
                make_clip(spec, target)
    if with_real:
        for video in sorted((shared_dir() / "data" / "videos" / "real").glob("*.mp4")):
            target = folder / video.name
            if not target.exists():
                shutil.copy(video, target)
    return folder


if __name__ == "__main__":
    print(build_corpus())
