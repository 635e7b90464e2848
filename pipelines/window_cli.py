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


def add_window_arguments(p: argparse.ArgumentParser, what: str = "uploaded") -> None:
    """``--since/--until`` on videos ``what`` (uploaded: scan; scanned: report)."""
    p.add_argument(
        "--since",
        type=_instant_text,
        metavar="DATE",
        help=f"only videos {what} at or after DATE: {DATE_HELP}",
    )
    p.add_argument(
        "--until",
        type=_instant_text,
        metavar="DATE",
        help=f"only videos {what} before DATE (same forms); last night: --since yesterday"
        " --until today",
    )


def resolve_window(
    since_text: str | None, until_text: str | None, now: dt.datetime | None = None
) -> TimeWindow | None:
    """The window of the two flags (None without either), on one reading of the clock."""
    now = now or dt.datetime.now(dt.timezone.utc)
    since = parse_instant(since_text, now) if since_text is not None else None
    until = parse_instant(until_text, now) if until_text is not None else None
    return None if since is None and until is None else TimeWindow(since, until)


def window_from_args(args: argparse.Namespace, now: dt.datetime | None = None) -> TimeWindow | None:
    """The window the flags give (None without either), checked against the input: a
    date-partitioned INPUT needs both ends, on UTC midnights."""
    from operators.list_videos import expand_date_template, is_date_template

    window = resolve_window(args.since, args.until, now)
    if is_date_template(args.input):
        expand_date_template(args.input, window)  # pure: fails here, before any model loads
    return window
