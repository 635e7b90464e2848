"""``dfscan scan`` flags for what an upload may cost and where inputs may come from.

Kept apart from ``cli.py`` so the limits have one home: every flag maps to one field of
``LimitsConfig`` and its default is that field's default.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from pipelines.config import ConfigError, LimitsConfig


def _positive(kind: type) -> Any:
    """argparse type: a finite number > 0 (shared by every CLI module).

    ``float`` parses "nan" and "inf"; neither is a usable count, size or duration, and
    nan slips past ``<= 0``, so both are refused here rather than deep in the arithmetic.
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value

    return parse


def _within(kind: type, low: float, high: float) -> Any:
    """argparse type: a number within [low, high] (shared by every CLI module)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within [{low:g}, {high:g}], got {text}")
        return value

    return parse


_fraction = _within(float, 0.0, 1.0)


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    d = LimitsConfig
    p.add_argument(
        "--max-pixels",
        type=_positive(int),
        default=d.max_pixels,
        help=f"pixels per frame, from the header (default {d.max_pixels})",
    )
    p.add_argument(
        "--max-duration",
        type=_positive(float),
        default=d.max_duration_s,
        help=f"declared seconds per video (default {d.max_duration_s:g})",
    )
    p.add_argument(
        "--max-frames",
        type=_positive(int),
        default=d.max_frames,
        help=f"declared or decoded frames per video (default {d.max_frames})",
    )
    p.add_argument(
        "--max-streams",
        type=_positive(int),
        default=d.max_streams,
        help=f"streams per container (default {d.max_streams})",
    )
    p.add_argument(
        "--codecs",
        default=",".join(d.allowed_codecs),
        help="video codecs allowed, FFmpeg codec names, comma-separated",
    )
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="decode in the worker's own process (faster start; a decoder crash ends the run)",
    )
    p.add_argument(
        "--decode-workers",
        type=_positive(int),
        default=None,
        metavar="N",
        help="decode+detect worker processes (default: one per core on the local runner,"
        " one per actor on Ray and Beam)",
    )
    p.add_argument(
        "--allow-prefix",
        action="append",
        default=None,
        metavar="URI",
        help="read inputs only under this prefix (repeatable; file:/// = any local file;"
        " default: any local file + the input's own prefix, or a manifest's bucket)",
    )


def check_codecs(names: tuple[str, ...]) -> None:
    """Each name must be a video codec id FFmpeg decodes, as the header check compares
    them: a typo would otherwise turn every video of a run into an ``unsupported`` row."""
    from av.codec import Codec

    for name in names:
        try:
            codec = Codec(name, "r")
        except ValueError:  # PyAV's UnknownCodecError
            raise ConfigError(f"--codecs: {name!r} is not a codec FFmpeg can decode") from None
        if codec.type != "video":
            raise ConfigError(f"--codecs: {name!r} is not a video codec ({codec.type})")
        if codec.canonical_name != name:
            raise ConfigError(
                f"--codecs: {name!r} is a decoder of {codec.canonical_name!r}: give the codec id"
            )


def limits_from_args(args: argparse.Namespace) -> LimitsConfig:
    from operators.list_videos import is_date_template, is_manifest, template_root
    from operators.uri_policy import UriPolicy, default_prefixes

    codecs = tuple(c.strip() for c in args.codecs.split(",") if c.strip())
    if not codecs:
        raise ConfigError("--codecs needs at least one codec name")
    check_codecs(codecs)
    manifest = is_manifest(args.input)
    # A date-partitioned input's own prefix is the folder above its {date} field; each
    # day's prefix is checked against the policy when it is listed.
    template = is_date_template(args.input)
    prefixes = tuple(args.allow_prefix or default_prefixes(template_root(args.input), manifest))
    policy = UriPolicy.build(prefixes)
    if not manifest and not template and (why := policy.refusal(args.input)) is not None:
        raise ConfigError(f"input {args.input} is not allowed: {why}")
    if args.no_isolate and (args.decode_workers or 1) > 1:
        raise ConfigError("--decode-workers needs isolation: drop --no-isolate or ask for 1")
    return LimitsConfig(
        max_bytes=args.max_bytes,
        timeout_s=args.timeout,
        max_pixels=args.max_pixels,
        max_duration_s=args.max_duration,
        max_frames=args.max_frames,
        max_streams=args.max_streams,
        allowed_codecs=codecs,
        isolate=not args.no_isolate,
        decode_workers=args.decode_workers or 0,
        allow_prefixes=policy.prefixes,
    )
