"""Decode only the frames a sampling policy asks for, with PyAV.

Sparse by construction: ``uniform:N`` computes exact frame indices from the header and
stops decoding after the last one; ``keyframes`` tells the decoder to skip every
non-key frame (``skip_frame=NONKEY``) so the others are never reconstructed; only
sampled frames are converted from YUV to BGR. Display rotation from the container's
display matrix is applied to the sampled frames, so faces are upright for detection.

Failures are typed (see ``operators.errors``): a file that is not a media container
is ``unsupported``; a media container that FFmpeg cannot open or decode is
``decode_error``; a per-video wall-clock deadline gives ``timeout``.

Uploads are untrusted, so FFmpeg is fenced in before it reads a byte (``open_options``):
only the container formats of ``ALLOWED_DEMUXERS``, no protocol at all for nested opens
(playlists such as HLS or concat cannot make it read other files or URLs), no decoder
at all while probing, and ``max_pixels`` on the codec context so a crafted header
cannot make it allocate a giant frame. The header is then checked against
``LimitsConfig`` (pixels, duration, frames, streams, codec allow-list) before the first
frame is decoded: ``too_large`` or ``unsupported``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import math
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import av.error
import fsspec
import numpy as np
import puremagic

from operators.errors import DecodeError, UnsupportedMedia, VideoTimeout, VideoTooLarge
from pipelines.config import LimitsConfig, SamplingConfig
from schemas.records import Frame, VideoMeta

# Demuxers an upload may be opened with. Everything else (playlists such as HLS or
# concat that make FFmpeg open other files or URLs, image sequences, raw devices) is
# refused by FFmpeg itself through ``format_whitelist``.
ALLOWED_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "flv",
    "mpegts",
    "mpeg",
    "ogg",
    "asf",
    "gif",
    "h264",
    "hevc",
)
# How much of the file head is sniffed to tell "not media" from "broken media".
_SNIFF_BYTES = 8192
_INT_MAX = 2**31 - 1  # FFmpeg's `max_pixels` is a C int


# No decoder runs inside ``av.open``: FFmpeg's probe (avformat_find_stream_info) would
# otherwise decode frames of every stream, with any decoder, at the size the header
# declares, before a single limit is checked. The header still gives sizes, rates,
# durations and codecs; only the pixel format stays unknown until our own decode.
_NO_DECODER_AT_PROBE = "none"


def open_options(limits: LimitsConfig) -> dict[str, str]:
    """The options every upload is opened with: they fence FFmpeg in before it reads."""
    return {
        "format_whitelist": ",".join(ALLOWED_DEMUXERS),
        # No protocol for nested opens: an HLS/concat/dash playlist, or a mov external
        # reference, cannot read another file or URL. FFmpeg copies this list into the
        # contexts a demuxer opens for itself (a custom ``io_open`` would not be).
        "protocol_whitelist": "",
        "enable_drefs": "0",  # mov: never follow external data references (the default)
        "codec_whitelist": _NO_DECODER_AT_PROBE,
        "max_pixels": str(min(limits.max_pixels, _INT_MAX)),  # in case a probe decodes
    }


def gif_screen_size(head: bytes) -> tuple[int, int] | None:
    """A GIF's logical screen: FFmpeg's GIF demuxer does not export it, and the decoder
    allocates it whole on the first frame (65535x65535 x 4 bytes)."""
    if len(head) >= 10 and head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", head[6:10])
        return int(width), int(height)
    return None


@dataclass
class DecodeStats:
    """Mutable counters a decode fills in as it goes (read after the frames are used)."""

    frames_decoded: int = 0  # frames the decoder reconstructed, sampled or not
    frames_sampled: int = 0
    seconds: float = 0.0  # time spent inside the decoder, excluding the consumer's work
    rotation: int = 0  # display rotation found on the frames, degrees counter-clockwise
    seeks: int = 0  # jumps to a keyframe made by a SeekPlan
    notes: list[str] = field(default_factory=list)


def uniform_indices(frame_count: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from the first to the last frame."""
    if frame_count <= 0:
        return []
    picks = np.linspace(0, frame_count - 1, num=min(count, frame_count))
    return sorted({int(i) for i in np.round(picks)})


def _sniff_mime(head: bytes) -> str | None:
    try:
        return str(puremagic.from_string(head, mime=True)) or None
    except (puremagic.PureError, ValueError):
        return None


def _classify_open_failure(head: bytes, err: Exception) -> Exception:
    """Not media at all -> unsupported; a media container FFmpeg cannot open -> decode_error."""
    if not head:
        return UnsupportedMedia("empty file")
    mime = _sniff_mime(head)
    if mime is None or not mime.startswith(("video/", "audio/", "application/vnd.rn")):
        kind = mime or "unrecognised bytes"
        return UnsupportedMedia(f"not a video container ({kind})")
    if isinstance(err, av.error.ArgumentError):
        # EINVAL at open is an allow-list saying no: a demuxer not in ALLOWED_DEMUXERS
        # or a nested open with no protocol allowed.
        return UnsupportedMedia(f"{mime}: container format or nested file access not allowed")
    return DecodeError(f"{mime} container could not be opened: {err}")


def _rotation_of(frame: Any) -> int:
    return int(getattr(frame, "rotation", 0) or 0) % 360


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation in multiples of 90 degrees."""
    k = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=k)) if k else image


class FrameDecoder:
    """Decodes the sampled frames of one video at a time.

    Constructed from small settings only; holds no open file between videos.
    ``threads`` is FFmpeg's decoder thread count (0 lets FFmpeg pick one per core).
    """

    def __init__(
        self,
        sampling: SamplingConfig,
        limits: LimitsConfig,
        threads: int = 0,
        storage_options: dict[str, Any] | None = None,
        seek: bool = True,
    ) -> None:
        self.sampling = sampling
        self.limits = limits
        self.threads = threads
        self.storage_options = dict(storage_options or {})
        self.seek = seek  # uniform sampling may jump to keyframes (see SeekPlan)

    @contextlib.contextmanager
    def _open(self, uri: str) -> Iterator[tuple[Any, bytes]]:
        with fsspec.open(uri, "rb", **self.storage_options) as fh:
            head = fh.read(_SNIFF_BYTES)
            if not head:
                raise UnsupportedMedia("empty file")
            self._check_pixels(gif_screen_size(head), "GIF screen")
            fh.seek(0)
            try:
                container = av.open(
                    fh,
                    mode="r",
                    options=open_options(self.limits),
                    metadata_errors="ignore",
                )
            except (av.error.FFmpegError, ValueError, EOFError, OSError) as err:
                raise _classify_open_failure(head, err) from None
            try:
                yield container, head
            finally:
                container.close()

    def _check_pixels(self, size: tuple[int, int] | None, what: str) -> None:
        if size is not None and size[0] * size[1] > self.limits.max_pixels:
            raise VideoTooLarge(
                f"{what} {size[0]}x{size[1]} exceeds the limit of"
                f" {self.limits.max_pixels} pixels per frame"
            )

    def _check_header(self, container: Any, stream: Any, meta: VideoMeta) -> None:
        """Limits from the header, before any frame is decoded."""
        lim = self.limits
        n_streams = len(container.streams)
        if n_streams > lim.max_streams:
            raise VideoTooLarge(f"{n_streams} streams exceeds the limit of {lim.max_streams}")
        codec = stream.codec_context.codec.canonical_name
        if codec not in lim.allowed_codecs:
            raise UnsupportedMedia(f"video codec {codec} is not allowed")
        self._check_pixels((meta.width, meta.height), "frame size")
        if meta.duration_s is not None and meta.duration_s > lim.max_duration_s:
            raise VideoTooLarge(
                f"declared duration {meta.duration_s:.0f} s exceeds the limit of"
                f" {lim.max_duration_s:.0f} s"
            )
        self._check_frames(meta.frame_count, "declared")

    def _check_frames(self, count: int | None, what: str) -> None:
        if count is not None and count > self.limits.max_frames:
            raise VideoTooLarge(
                f"{what} frame count {count} exceeds the limit of {self.limits.max_frames}"
            )

    def _probe(self, container: Any) -> tuple[Any, VideoMeta]:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise UnsupportedMedia(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.name:
            raise UnsupportedMedia("video stream has no decoder in this FFmpeg build")
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        fps = float(stream.average_rate) if stream.average_rate else None
        if fps is None and stream.guessed_rate:
            fps = float(stream.guessed_rate)
        duration: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        frames = int(stream.frames) if stream.frames else None
        if frames is None and duration and fps:
            frames = max(1, round(duration * fps))
        meta = VideoMeta(
            duration_s=duration,
            fps=fps,
            width=width,
            height=height,
            codec=str(ctx.name),
            frame_count=frames,
        )
        self._check_header(container, stream, meta)
        return stream, meta

    def _count_packets(self, container: Any, stream: Any) -> int:
        """Frame count by demuxing without decoding, for containers with no count.

        A damaged file ends the count where demuxing fails (decode then stops there too);
        the count is capped like a declared one, so a packet flood costs no decode."""
        n = 0
        try:
            for packet in container.demux(stream):
                n += bool(packet.size)
                if n > self.limits.max_frames:
                    break
        except (av.error.FFmpegError, ValueError):
            if n == 0:
                raise DecodeError("no packet could be demuxed") from None
        self._check_frames(n, "demuxed")
        return n

    @contextlib.contextmanager
    def open(self, uri: str, deadline: float | None = None) -> Iterator[DecodedVideo]:
        """Open ``uri`` and yield its header facts and a lazy iterator of sampled frames."""
        with self._open(uri) as (container, _head):
            stream, meta = self._probe(container)
            counted = self.sampling.policy == "uniform" and not meta.frame_count
            if counted:
                meta = _replace_count(meta, self._count_packets(container, stream))
            if not counted or _rewind(container):
                yield self._decoded(container, stream, meta, deadline)
                return
        # Raw streams (h264, hevc) cannot seek back after the count: open them again.
        with self._open(uri) as (container, _head):
            stream, _ = self._probe(container)
            yield self._decoded(container, stream, meta, deadline)

    def _decoded(
        self, container: Any, stream: Any, meta: VideoMeta, deadline: float | None
    ) -> DecodedVideo:
        stats = DecodeStats()
        plan = self._seek_plan(container, stream, meta)
        frames = self._iter_frames(container, stream, meta, stats, deadline, plan)
        return DecodedVideo(meta=meta, frames=frames, stats=stats)

    def _seek_plan(self, container: Any, stream: Any, meta: VideoMeta) -> SeekPlan | None:
        """Demux (no decode) the packets' timestamps and keyframe flags, then plan."""
        if not self.seek or self.sampling.policy != "uniform" or not meta.frame_count:
            return None
        if container.format.name in ("h264", "hevc"):
            return None  # raw elementary streams have no index to seek by
        targets = uniform_indices(meta.frame_count, self.sampling.count)
        packets: list[tuple[int, bool]] = []
        try:
            for packet in container.demux(stream):
                if packet.size:
                    if packet.pts is None:
                        packets = []  # no timestamps: no index to plan from
                        break
                    packets.append((int(packet.pts), bool(packet.is_keyframe)))
                if len(packets) > self.limits.max_frames:
                    break
        except (av.error.FFmpegError, ValueError):
            pass  # a damaged tail: plan over what demuxed; decode meets the damage later
        if not _rewind(container):
            raise DecodeError("the container cannot seek back after indexing")
        return plan_seeks(packets, targets)

    def _iter_frames(
        self,
        container: Any,
        stream: Any,
        meta: VideoMeta,
        stats: DecodeStats,
        deadline: float | None,
        plan: SeekPlan | None = None,
    ) -> Iterator[Frame]:
        ctx = stream.codec_context
        ctx.thread_type = "AUTO"
        ctx.thread_count = self.threads
        # The decoder's own cap: a frame whose size changes mid-stream, or a header that
        # declared nothing, still cannot make it allocate more than the limit.
        ctx.options = {**ctx.options, "max_pixels": str(min(self.limits.max_pixels, _INT_MAX))}
        policy = self.sampling.policy
        wanted: set[int] = set()
        last_wanted = -1
        if policy == "uniform":
            wanted = set(uniform_indices(meta.frame_count or 0, self.sampling.count))
            last_wanted = max(wanted, default=-1)
            if last_wanted < 0:
                return
        elif policy == "keyframes":
            ctx.skip_frame = "NONKEY"
        step = 1.0 / self.sampling.fps if policy == "fps" else 0.0
        next_t = 0.0
        fps = meta.fps or 25.0
        # Times are reported from the first frame: a stream may start at 0.85 s.
        start_s = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        decoded = 0
        rotation: int | None = None
        decoder = container.decode(stream)
        pending = sorted(wanted)
        seeks_left = dict(plan.seek_before) if plan is not None else {}
        last_index = -1
        while True:
            if pending and pending[0] in seeks_left:
                # Each planned seek happens at most once, and only forwards.
                key_index, key_pts = seeks_left.pop(pending[0])
                if key_index > last_index + 1:
                    container.seek(key_pts, stream=stream, backward=True, any_frame=False)
                    decoder = container.decode(stream)
                    stats.seeks += 1
                    last_index = key_index - 1
            if deadline is not None and time.monotonic() > deadline:
                raise VideoTimeout(
                    f"decode exceeded the per-video time limit after {stats.frames_decoded} frames"
                )
            t0 = time.perf_counter()
            try:
                frame = next(decoder)
            except StopIteration:
                stats.seconds += time.perf_counter() - t0
                break
            except (av.error.FFmpegError, ValueError) as err:
                stats.seconds += time.perf_counter() - t0
                if stats.frames_sampled == 0:
                    raise DecodeError(f"decoding failed at frame {decoded}: {err}") from None
                stats.notes.append(f"decoding stopped at frame {decoded}: {err}")
                break
            index = decoded
            if plan is not None and frame.pts is not None:
                index = plan.index_of_pts.get(int(frame.pts), index)
            decoded += 1
            stats.frames_decoded = decoded
            if decoded > self.limits.max_frames:
                self._check_frames(decoded, "decoded")  # the header under-declared
            pts_s = float(frame.time) - start_s if frame.time is not None else index / fps
            if policy == "keyframes":
                # Skipped frames never reach us: the index comes from the timestamp.
                index = round(pts_s * fps)
                take = True
            elif policy == "fps":
                take = pts_s + 1e-6 >= next_t
                if take:
                    next_t = (math.floor(pts_s / step + 1e-6) + 1) * step
            else:
                take = index in wanted
                last_index = index
                while pending and pending[0] <= index:
                    pending.pop(0)
            if not take:
                stats.seconds += time.perf_counter() - t0
                continue
            if rotation is None:
                rotation = stats.rotation = _rotation_of(frame)
            try:
                image = _rotate(frame.to_ndarray(format="bgr24"), rotation)
            except (av.error.FFmpegError, ValueError) as err:
                # swscale refuses some decoded frames (a crafted colour description:
                # ENOTSUP, found by fuzzing); like a decode failure, not a bug.
                stats.seconds += time.perf_counter() - t0
                if stats.frames_sampled == 0:
                    raise DecodeError(f"frame {index} could not be converted: {err}") from None
                stats.notes.append(f"conversion stopped at frame {index}: {err}")
                break
            stats.frames_sampled += 1
            stats.seconds += time.perf_counter() - t0
            yield Frame(index=index, pts_s=pts_s, image=image)
            if policy == "uniform" and index >= last_wanted:
                break  # everything after the last sampled frame is never decoded


@dataclass
class DecodedVideo:
    meta: VideoMeta
    frames: Iterator[Frame]
    stats: DecodeStats


def _rewind(container: Any) -> bool:
    """Seek back to the start; False when the demuxer cannot (raw elementary streams)."""
    try:
        container.seek(0)
    except (av.error.FFmpegError, ValueError):
        return False
    return True


# A seek flushes the decoder and re-reads from a keyframe: about the cost of decoding a
# few frames (measured on the benchmark corpus), charged per seek in the plan.
_SEEK_COST_FRAMES = 3


@dataclass(frozen=True)
class SeekPlan:
    """Where to jump for ``uniform`` sampling: decode from the keyframe before a sample
    instead of through every frame in between, when the container's keyframe index
    says that decodes fewer frames. Built from demuxed packets, no decoding."""

    index_of_pts: dict[int, int]  # packet pts -> frame index in presentation order
    seek_before: dict[int, tuple[int, int]]  # sample index -> (keyframe index, keyframe pts)
    frames_through: int  # frames decoded without seeking
    frames_planned: int  # frames decoded (plus seek cost) with the plan


def plan_seeks(packets: list[tuple[int, bool]], targets: list[int]) -> SeekPlan | None:
    """The cheaper of decode-through and seek-per-sample, from (pts, is_keyframe) packets.

    None when seeking saves nothing (short GOPs spread thinner than the samples, or a
    stream without usable timestamps)."""
    pts_sorted = sorted({pts for pts, _ in packets})
    if len(pts_sorted) != len(packets) or not targets:
        return None  # duplicate or missing timestamps: indices from pts are unreliable
    key_pts = [pts for pts, key in packets if key]
    if key_pts != sorted(key_pts):
        return None  # keyframes out of order in the file: seeking by pts is not safe
    index_of = {pts: i for i, pts in enumerate(pts_sorted)}
    keys = sorted(index_of[pts] for pts in key_pts)
    if not keys or keys[0] != 0:
        return None
    seek_before: dict[int, tuple[int, int]] = {}
    cost, pos = 0, 0  # pos: index of the next frame the decoder would produce
    for t in targets:
        k = keys[bisect.bisect_right(keys, t) - 1]
        if k > pos and (t - k + 1 + _SEEK_COST_FRAMES) < (t - pos + 1):
            seek_before[t] = (k, pts_sorted[k])
            cost += _SEEK_COST_FRAMES + t - k + 1
        else:
            cost += t - pos + 1
        pos = t + 1
    through = targets[-1] + 1
    if not seek_before or cost >= through:
        return None
    return SeekPlan(index_of, seek_before, through, cost)


def _replace_count(meta: VideoMeta, count: int) -> VideoMeta:
    return dataclasses.replace(meta, frame_count=count)
