"""Decode only the frames a sampling policy asks for, with PyAV.

Sparse by construction: ``uniform:N`` computes exact frame indices from the header and
stops decoding after the last one; from the packets' timestamps (demuxed, not decoded)
it jumps to the keyframe before a sample when that decodes less (``SeekPlan``) and has
the decoder drop the non-reference frames that are not sampled (``skip_frame=NONREF``,
set packet by packet: no other frame predicts from them, so every sampled frame keeps
its pixels); ``keyframes`` tells the decoder to skip every non-key frame
(``skip_frame=NONKEY``) so the others are never reconstructed; only sampled frames are
converted from YUV to BGR. Display rotation from the container's display matrix is
applied to the sampled frames, and non-square pixels are scaled square, so faces are
upright and in proportion for detection.

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
from fractions import Fraction
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

# Decoders whose ``skip_frame=NONREF`` drops only frames that no other frame predicts
# from, and that read the setting for each packet they are sent: FFmpeg's H.264 (slices
# with nal_ref_idc 0) and HEVC (sub-layer non-reference pictures; see
# ``nonref_skip_is_safe``). Other decoders are decoded whole: their NONREF is unverified.
_NONREF_SKIP_DECODERS = frozenset({"h264", "hevc"})
# Demuxers whose seek to a keyframe's pts lands on that keyframe (mp4's sample table,
# Matroska's cues). MPEG-TS seeks by timestamps read near a byte offset and lands past
# the keyframe (a B-frame clip lost 7 of 32 samples): it and the rest decode through.
_EXACT_SEEK_DEMUXERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
# Decode order differs from presentation order by the decoder's reorder depth (at most
# 16 frames in H.264 and HEVC); a packet further from its pts rank means timestamps
# that wrapped or lie, and an index built on them would pick the wrong frames.
_MAX_REORDER_FRAMES = 32


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
    shown: tuple[int, int] | None = None  # width, height of the sampled frames as shown
    seeks: int = 0  # jumps to a keyframe made by a SeekPlan
    seeks_missed: int = 0  # seeks that landed past their keyframe (then decoded through)
    packets: int = 0  # packets sent to the decoder
    nonref_skip: bool = False  # unsampled non-reference frames were dropped undecoded
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


def _is_cover_art(stream: Any) -> bool:
    return av.stream.Disposition.attached_pic in stream.disposition


def _rotation_of(frame: Any) -> int:
    return int(getattr(frame, "rotation", 0) or 0) % 360


def _square_pixel_size(
    width: int, height: int, sar: Fraction | None, max_pixels: int
) -> dict[str, int]:
    """The size a player shows an anamorphic frame at (stored width times the sample
    aspect ratio), as ``reformat`` arguments; none for square pixels, for a ratio no
    camera writes (beyond 1:4 and 4:1) and for a size over the pixel limit."""
    if not sar or sar == 1 or not Fraction(1, 4) <= sar <= 4:
        return {}
    shown = max(1, round(width * sar))
    return {"width": shown, "height": height} if shown * height <= max_pixels else {}


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation in multiples of 90 degrees."""
    k = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=k)) if k else image


class FrameDecoder:
    """Decodes the sampled frames of one video at a time.

    Constructed from small settings only; holds no open file between videos.
    ``threads`` is FFmpeg's decoder thread count (0 lets FFmpeg pick one per core).
    ``seek`` and ``skip_nonref`` switch the two ``uniform`` savings (keyframe seeks,
    undecoded non-reference frames); the sampled frames are the same either way.
    """

    def __init__(
        self,
        sampling: SamplingConfig,
        limits: LimitsConfig,
        threads: int = 0,
        storage_options: dict[str, Any] | None = None,
        seek: bool = True,
        skip_nonref: bool = True,
    ) -> None:
        self.sampling = sampling
        self.limits = limits
        self.threads = threads
        self.storage_options = dict(storage_options or {})
        self.seek = seek  # uniform sampling may jump to keyframes (see SeekPlan)
        self.skip_nonref = skip_nonref  # uniform: unsampled non-reference frames not decoded

    @contextlib.contextmanager
    def _open(self, uri: str) -> Iterator[tuple[Any, bytes]]:
        with contextlib.ExitStack() as stack:
            try:
                fh = stack.enter_context(fsspec.open(uri, "rb", **self.storage_options))
                head = fh.read(_SNIFF_BYTES)
            except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
                # Listed, then gone or unreadable (a manifest naming a deleted upload):
                # the video's row says so; hashing gave it an id from its URI.
                raise DecodeError(f"the file cannot be read: {type(err).__name__}") from None
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
        # Cover art (music, podcasts) is a one-picture "video" stream: not a video.
        videos = [s for s in container.streams.video if not _is_cover_art(s)]
        if not videos:
            kinds = sorted({"cover art" if _is_cover_art(s) else s.type for s in container.streams})
            raise UnsupportedMedia(f"no video stream (streams: {', '.join(kinds or ['none'])})")
        stream = videos[0]
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
        with contextlib.ExitStack() as stack:
            container, _head = stack.enter_context(self._open(uri))
            stream, meta = self._probe(container)
            start_s = _start_seconds(stream)
            if self.sampling.policy == "uniform" and not meta.frame_count:
                meta = _replace_count(meta, self._count_packets(container, stream))
                container, stream = self._rewound(stack, uri, container, stream)
            index = None
            if self._wants_index(container, stream, meta):
                index = self._packet_index(container, stream)
                container, stream = self._rewound(stack, uri, container, stream)
            if index is not None:
                # The frames the file holds, not what its header says: a duration-based
                # estimate (Matroska, WebM), an edit list's hidden frames or a cut upload
                # would put samples past the last frame, where they are never found.
                meta = _replace_count(meta, len(index.pts))
            stats = DecodeStats()
            frames = self._iter_frames(container, stream, meta, stats, deadline, start_s, index)
            yield DecodedVideo(meta=meta, frames=frames, stats=stats)

    def _rewound(
        self, stack: contextlib.ExitStack, uri: str, container: Any, stream: Any
    ) -> tuple[Any, Any]:
        """The container back at its first packet after a demuxing pass: sought, or opened
        again where the demuxer cannot seek back (raw h264/hevc streams; a WebM upload
        cut mid-cluster, whose Matroska demuxer refuses every seek after its EOF)."""
        if _rewind(container):
            return container, stream
        stack.close()
        container, _head = stack.enter_context(self._open(uri))
        stream, _ = self._probe(container)
        return container, stream

    def _wants_index(self, container: Any, stream: Any, meta: VideoMeta) -> bool:
        if self.sampling.policy != "uniform" or not meta.frame_count:
            return False
        if not (self.seek or self.skip_nonref) and stream.frames:
            return False  # the container counted its frames; no saving asks for an index
        # Raw elementary streams have no timestamps to index by.
        return container.format.name not in ("h264", "hevc")

    def _packet_index(self, container: Any, stream: Any) -> PacketIndex | None:
        """Demux (no decode) the packets' timestamps and keyframe flags for ``uniform``.

        Costs a read of the file's packets (about 1% of decoding them, measured on the
        benchmark corpus) and pays for seeks and for skipping non-reference frames."""
        packets: list[tuple[int, bool]] = []
        try:
            for packet in container.demux(stream):
                if not packet.size or packet.is_discard:
                    continue  # flush packets; frames an edit list hides are never output
                if packet.pts is None:
                    packets = []  # no timestamps: no index to plan from
                    break
                packets.append((int(packet.pts), bool(packet.is_keyframe)))
                if len(packets) > self.limits.max_frames:
                    break
        except (av.error.FFmpegError, ValueError):
            pass  # a damaged tail: index what demuxed; decode meets the damage later
        return PacketIndex.build(packets)

    def _iter_frames(
        self,
        container: Any,
        stream: Any,
        meta: VideoMeta,
        stats: DecodeStats,
        deadline: float | None,
        start_s: float | None,
        index: PacketIndex | None = None,
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
        plan = None
        if index is not None and self.seek and container.format.name in _EXACT_SEEK_DEMUXERS:
            plan = plan_seeks(index, sorted(wanted))
        # Which packets are sampled frames is known before they are sent (their pts), so
        # the decoder is told per packet: NONREF for the others, DEFAULT for the samples.
        skip_nonref = (
            index is not None
            and self.skip_nonref
            and nonref_skip_is_safe(ctx.codec.name, ctx.extradata)
        )
        stats.nonref_skip = skip_nonref
        wanted_pts = {index.pts[i] for i in wanted if i < len(index.pts)} if index else set()
        step = 1.0 / self.sampling.fps if policy == "fps" else 0.0
        next_t = 0.0
        fps = meta.fps or 25.0
        decoded = 0
        rotation: int | None = None
        packets = container.demux(stream)
        ready: list[Any] = []  # frames the last packet gave, in output order
        pending = sorted(wanted)
        seeks_left = dict(plan.seek_before) if plan is not None else {}
        last_index = -1
        taken_upto = -1  # highest frame index yielded: never yield one twice
        landing: int | None = None  # the keyframe index a seek must land on (or before)
        sent_pts: list[int] = []  # keyframes: the timestamps of the frames sent, ascending
        while True:
            if pending and pending[0] in seeks_left:
                # Each planned seek happens at most once, and only forwards.
                key_index, key_pts = seeks_left.pop(pending[0])
                if key_index > last_index + 1:
                    container.seek(key_pts, stream=stream, backward=True, any_frame=False)
                    packets = container.demux(stream)  # the seek flushed the decoder
                    ready = []
                    stats.seeks += 1
                    last_index = key_index - 1
                    landing = key_index
            if deadline is not None and time.monotonic() > deadline:
                raise VideoTimeout(
                    f"decode exceeded the per-video time limit after {stats.frames_decoded} frames"
                )
            t0 = time.perf_counter()
            try:
                while not ready:
                    packet = next(packets)
                    if landing is not None and packet.size and index is not None:
                        if not _landed(packet, index, landing):
                            # Past the keyframe: samples before it would be lost. Decode
                            # through from the start instead (never seen in mp4/mkv).
                            stats.seeks_missed += 1
                            seeks_left.clear()
                            if not _rewind(container):
                                raise DecodeError("the container cannot seek back") from None
                            packets = container.demux(stream)
                            landing = None
                            continue
                        landing = None
                    if skip_nonref:
                        sampled = packet.pts is None or packet.pts in wanted_pts
                        ctx.skip_frame = "DEFAULT" if sampled else "NONREF"
                    stats.packets += bool(packet.size)
                    # A frame an edit list hides (is_discard) is never shown: not ranked.
                    displayed = packet.size and not packet.is_discard and packet.pts is not None
                    if policy == "keyframes" and displayed:
                        bisect.insort(sent_pts, int(packet.pts))
                    ready = ctx.decode(packet)
                    ready.reverse()  # popped from the end: output order
                frame = ready.pop()
            except StopIteration:
                stats.seconds += time.perf_counter() - t0
                break
            except (av.error.FFmpegError, ValueError) as err:
                stats.seconds += time.perf_counter() - t0
                if stats.frames_sampled == 0:
                    raise DecodeError(f"decoding failed at frame {decoded}: {err}") from None
                stats.notes.append(f"decoding stopped at frame {decoded}: {err}")
                break
            frame_index = decoded
            if index is not None and frame.pts is not None:
                frame_index = index.index_of_pts.get(int(frame.pts), frame_index)
            decoded += 1
            stats.frames_decoded = decoded
            if decoded > self.limits.max_frames:
                self._check_frames(decoded, "decoded")  # the header under-declared
            pts_s = frame_index / fps
            if frame.time is not None:
                if start_s is None:
                    start_s = float(frame.time)  # frame 0 comes out first, seeks or not
                pts_s = float(frame.time) - start_s
            if policy == "keyframes":
                # Skipped frames never reach us, but their packets did: a key frame's
                # index is its rank among them (variable frame rates: not time x rate).
                frame_index = round(pts_s * fps)
                if frame.pts is not None and sent_pts:
                    frame_index = bisect.bisect_left(sent_pts, int(frame.pts))
                # Some decoders (VP9, GIF) ignore NONKEY and output every frame.
                take = bool(frame.key_frame)
            elif policy == "fps":
                take = pts_s + 1e-6 >= next_t
                if take:
                    next_t = (math.floor(pts_s / step + 1e-6) + 1) * step
            else:
                take = frame_index in wanted and frame_index > taken_upto
                last_index = frame_index
                while pending and pending[0] <= frame_index:
                    pending.pop(0)
            if not take:
                stats.seconds += time.perf_counter() - t0
                continue
            if rotation is None:
                rotation = stats.rotation = _rotation_of(frame)
            sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
            shown = _square_pixel_size(frame.width, frame.height, sar, self.limits.max_pixels)
            try:
                image = _rotate(frame.to_ndarray(format="bgr24", **shown), rotation)
            except (av.error.FFmpegError, ValueError) as err:
                # swscale refuses some decoded frames (a crafted colour description:
                # ENOTSUP, found by fuzzing); like a decode failure, not a bug.
                stats.seconds += time.perf_counter() - t0
                if stats.frames_sampled == 0:
                    raise DecodeError(
                        f"frame {frame_index} could not be converted: {err}"
                    ) from None
                stats.notes.append(f"conversion stopped at frame {frame_index}: {err}")
                break
            stats.frames_sampled += 1
            stats.shown = stats.shown or (image.shape[1], image.shape[0])
            stats.seconds += time.perf_counter() - t0
            taken_upto = max(taken_upto, frame_index)
            yield Frame(index=frame_index, pts_s=pts_s, image=image)
            if policy == "uniform" and frame_index >= last_wanted:
                break  # everything after the last sampled frame is never decoded


@dataclass
class DecodedVideo:
    meta: VideoMeta
    frames: Iterator[Frame]
    stats: DecodeStats


def _landed(packet: Any, index: PacketIndex, key_index: int) -> bool:
    """A seek's first packet is a keyframe at or before the one planned."""
    at = index.index_of_pts.get(packet.pts) if packet.pts is not None else None
    return bool(packet.is_keyframe) and at is not None and at <= key_index


def _start_seconds(stream: Any) -> float | None:
    """Where the stream starts, so times count from the first frame (a stream may start
    at 0.85 s). Read right after opening: once Matroska has been demuxed to the end (a
    count, an index), it reports a different start. None when the header does not say
    (H.264 in Matroska, probed without a decoder): the first decoded frame says."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


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


def nonref_skip_is_safe(decoder: str, extradata: bytes | None) -> bool:
    """Whether ``skip_frame=NONREF`` leaves every other frame's pixels as they are.

    H.264: a slice with nal_ref_idc 0 is never used for prediction. HEVC: FFmpeg drops
    *sub-layer* non-reference pictures, which pictures of a higher temporal sub-layer
    may still predict from; safe only when the stream has one temporal layer, as its
    hvcC record (mp4, mkv) says. Without that record (Annex B extradata) it is unknown."""
    if decoder not in _NONREF_SKIP_DECODERS:
        return False
    if decoder == "hevc":
        return _hvcc_temporal_layers(extradata) == 1
    return True


def _hvcc_temporal_layers(extradata: bytes | None) -> int | None:
    """numTemporalLayers of an ISO/IEC 14496-15 hvcC record (0: unknown), or None."""
    if not extradata or len(extradata) < 23 or extradata[0] != 1:
        return None  # not an hvcC record (Annex B parameter sets, or none)
    return (extradata[21] >> 3) & 0x07


@dataclass(frozen=True)
class PacketIndex:
    """The video's frames in presentation order, from demuxed packets (no decoding):
    each packet's frame index is the rank of its pts, and the keyframes are where a
    seek can land."""

    pts: tuple[int, ...]  # ascending: position = frame index
    index_of_pts: dict[int, int]
    keyframes: tuple[int, ...]  # frame indices, ascending
    keyframes_in_order: bool  # keyframe timestamps ascend in file order (safe to seek)

    @classmethod
    def build(cls, packets: list[tuple[int, bool]]) -> PacketIndex | None:
        """From (pts, is_keyframe) in file order; None without one pts per packet."""
        pts_sorted = tuple(sorted({pts for pts, _ in packets}))
        if not packets or len(pts_sorted) != len(packets):
            return None  # duplicate or missing timestamps: indices from pts are unreliable
        index_of = {pts: i for i, pts in enumerate(pts_sorted)}
        if any(
            abs(index_of[pts] - pos) > _MAX_REORDER_FRAMES for pos, (pts, _) in enumerate(packets)
        ):
            return None  # timestamps that wrapped or jump: ranks are not frame indices
        key_pts = [pts for pts, key in packets if key]
        return cls(
            pts=pts_sorted,
            index_of_pts=index_of,
            keyframes=tuple(sorted(index_of[pts] for pts in key_pts)),
            keyframes_in_order=key_pts == sorted(key_pts),
        )


# A seek flushes the decoder and re-reads from a keyframe: about the cost of decoding a
# few frames (measured on the benchmark corpus), charged per seek in the plan.
_SEEK_COST_FRAMES = 3


@dataclass(frozen=True)
class SeekPlan:
    """Where to jump for ``uniform`` sampling: decode from the keyframe before a sample
    instead of through every frame in between, when the container's keyframe index
    says that decodes fewer frames. Built from demuxed packets, no decoding."""

    seek_before: dict[int, tuple[int, int]]  # sample index -> (keyframe index, keyframe pts)
    frames_through: int  # frames decoded without seeking
    frames_planned: int  # frames decoded (plus seek cost) with the plan


def plan_seeks(index: PacketIndex, targets: list[int]) -> SeekPlan | None:
    """The cheaper of decode-through and seek-per-sample, from the packet index.

    None when seeking saves nothing (short GOPs spread thinner than the samples, or a
    stream whose keyframes cannot be sought by pts)."""
    keys = index.keyframes
    if not targets or not index.keyframes_in_order or not keys or keys[0] != 0:
        return None  # keyframes out of order in the file: seeking by pts is not safe
    seek_before: dict[int, tuple[int, int]] = {}
    cost, pos = 0, 0  # pos: index of the next frame the decoder would produce
    for t in targets:
        k = keys[bisect.bisect_right(keys, t) - 1]
        if k > pos and (t - k + 1 + _SEEK_COST_FRAMES) < (t - pos + 1):
            seek_before[t] = (k, index.pts[k])
            cost += _SEEK_COST_FRAMES + t - k + 1
        else:
            cost += t - pos + 1
        pos = t + 1
    through = targets[-1] + 1
    if not seek_before or cost >= through:
        return None
    return SeekPlan(seek_before, through, cost)


def _replace_count(meta: VideoMeta, count: int) -> VideoMeta:
    return dataclasses.replace(meta, frame_count=count)
