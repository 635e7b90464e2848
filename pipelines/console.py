"""What a person sees: a progress bar while scanning (quiet when not a terminal), a
summary table at the end, and warehouse rows as a table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from operators.redact import redact
from pipelines.config import RescoreConfig, ScanConfig
from schemas.records import VideoScan


class ScanConsole:
    """Progress of a scan: videos done/total, faces so far, videos per second."""

    def __init__(self, enabled: bool = True) -> None:
        self.console = Console()
        self.enabled = enabled and self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]scan"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("videos · {task.fields[faces]} faces · {task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.enabled,
        )
        self.task: Any = None
        self.faces = 0

    def __enter__(self) -> ScanConsole:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_listed(self, total: int) -> None:
        self.task = self.progress.add_task("scan", total=total, faces=0, rate="")

    def on_row(self, row: VideoScan, total: int) -> None:
        if self.task is None:
            self.on_listed(total)
        self.faces += row.faces
        task = self.progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{(task.completed + 1) / elapsed:.2f} videos/s" if elapsed > 0 else ""
        self.progress.update(self.task, advance=1, faces=self.faces, rate=rate)

    def print_summary(self, summary: Any, cfg: ScanConfig | RescoreConfig) -> None:
        table = Table(title=f"dfscan run {summary.run_id}", show_header=True)
        table.add_column("status")
        table.add_column("videos", justify="right")
        for status, n in sorted(summary.counts.items()):
            table.add_row(status, str(n))
        table.add_row("[bold]total", f"[bold]{summary.videos}")
        self.console.print(table)
        rate = summary.videos / summary.seconds if summary.seconds else 0.0
        labels = ", ".join(f"{k} {v}" for k, v in sorted(summary.labels.items())) or "none"
        self.console.print(
            f"runner {summary.runner} · model {summary.model_version} · "
            f"{summary.frames} frames · {summary.faces} faces · labels: {labels} · "
            f"{summary.seconds:.1f} s ({rate:.2f} videos/s)"
        )
        skipped, duplicates = getattr(summary, "skipped", 0), getattr(summary, "duplicates", 0)
        if skipped or duplicates:
            self.console.print(
                f"skipped {skipped} already in the warehouse (--rescan to redo) · "
                f"{duplicates} more URIs of the same bytes as a listed one (recorded, not"
                " decoded again)"
            )
        listing = getattr(summary, "listing", None)
        if listing is not None and (listing.outside_window or listing.no_time or listing.no_uri):
            # What listing left out, so a filtered run does not read as an empty one.
            self.console.print(
                f"left out by the listing: {listing.outside_window} uploaded outside the window"
                f" · {listing.no_time} without an upload time"
                f" · {listing.no_uri} manifest entries without a URI"
            )
        # Text, not a markup string: a path with brackets is printed as it is.
        self.console.print(Text(f"warehouse {redact(cfg.warehouse_url)} · faces {cfg.faces_uri}"))


RESULT_COLUMNS = (
    "video_id",
    "uri",
    "status",
    "label",
    "fake_probability",
    "faces",
    "tracks",
    "frames_sampled",
    "model_version",
    "error",
)


def print_results(rows: list[dict[str, Any]], more: bool = False) -> None:
    """The rows as a table; ``more``: the warehouse holds more that match."""
    console = Console()
    table = Table(show_header=True, header_style="bold")
    for col in RESULT_COLUMNS:
        table.add_column(col, overflow="fold")
    for row in rows:
        values: list[Text] = []
        for col in RESULT_COLUMNS:
            v = row.get(col)
            if col == "video_id" and v:
                v = str(v)[:12]
            elif col == "fake_probability" and v is not None:
                v = f"{v:.3f}"
            # Text, not a markup string: a URI or error with "[/b]" in it is an upload's
            # name, shown as it is, never read as rich markup (or a MarkupError).
            values.append(Text("" if v is None else str(v)))
        table.add_row(*values)
    console.print(table)
    if more:
        console.print(f"{len(rows)} rows shown, newest first; more match (raise --limit)")
    else:
        console.print(f"{len(rows)} rows")
