"""``dfscan scan --since/--until``: the time window of an incremental scan.

Kept apart from ``cli.py`` (like ``limits_cli.py``) so the window has one home. argparse
only checks that each value parses; both are resolved against one reading of the clock
in ``window_from_args``, so a run started at midnight cannot get ``yesterday`` from one
day and ``today`` from the next.
"""

from __future__ import annotations

import argparse
import datetime as dt

from pipelines.config import ConfigError, TimeWindow, parse_instant

DATE_HELP = "2026-11-21 (a UTC day), 2026-11-21T06:00:00Z, today or yesterday (UTC)"


def _instant_text(text: str) -> str:
    """argparse type: a value ``parse_instant`` accepts, kept as written until resolved."""
    try:
        parse_instant(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_window_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since",
        type=_instant_text,
        metavar="DATE",
        help=f"only videos uploaded at or after DATE: {DATE_HELP}",
    )
    p.add_argument(
        "--until",
        type=_instant_text,
        metavar="DATE",
        help="only videos uploaded before DATE (same forms); nightly: --since yesterday"
        " --until today",
    )


def window_from_args(args: argparse.Namespace, now: dt.datetime | None = None) -> TimeWindow | None:
    """The window the flags give (None without either), checked against the input: a
    date-partitioned INPUT needs both ends, on UTC midnights."""
    from operators.list_videos import expand_date_template, is_date_template

    now = now or dt.datetime.now(dt.timezone.utc)
    since = parse_instant(args.since, now) if args.since is not None else None
    until = parse_instant(args.until, now) if args.until is not None else None
    window = None if since is None and until is None else TimeWindow(since, until)
    if is_date_template(args.input):
        expand_date_template(args.input, window)  # pure: fails here, before any model loads
    return window
