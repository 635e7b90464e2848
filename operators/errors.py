"""Expected per-video failures. Each maps to a typed status on the video's row.

Anything that is not one of these is a bug and propagates.
"""

from __future__ import annotations

from schemas.records import VideoStatus


class VideoError(Exception):
    """A video that cannot be scanned for a reason that belongs in its row."""

    status: VideoStatus = VideoStatus.DECODE_ERROR


class DecodeError(VideoError):
    status = VideoStatus.DECODE_ERROR


class UnsupportedMedia(VideoError):
    """Not a video container, or no decodable video stream (audio-only, image, text)."""

    status = VideoStatus.UNSUPPORTED


class VideoTooLarge(VideoError):
    status = VideoStatus.TOO_LARGE


class VideoTimeout(VideoError):
    status = VideoStatus.TIMEOUT
