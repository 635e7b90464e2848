"""Scan metrics: one Prometheus vocabulary for every engine.

Each scan gets its own ``CollectorRegistry`` (never the process-global one), so two
scans in one process, or a test after a test, never add into each other's counters, and
a push to the Pushgateway carries this scan's series only. Names carry their unit
(``_seconds``, ``_bytes_``, ``_total``); per-stage time is one histogram with a
``stage`` label rather than a metric per stage.

Workers on Ray or Beam count into their own ``ScanMetrics`` and ship ``snapshot()``
(a plain, picklable dict) to the driver, which ``merge``s it, so the numbers the driver
exposes, pushes or writes as a textfile cover every worker.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
import uuid
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    push_to_gateway,
)

from schemas.records import VideoStatus

log = logging.getLogger(__name__)

# 1 ms (a cached face crop) .. 10 min (a long video decoded on a slow store): 1-2.5-5
# per decade up to 10 s, then half-minutes to minutes, so p50/p95 stay readable.
STAGE_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

# A push happens once, at the end of a scan: a missing gateway should cost a few
# seconds there, not prometheus_client's default 30.
PUSH_TIMEOUT_S = 3.0

VIDEOS = "dfscan_videos_total"
FRAMES_DECODED = "dfscan_frames_decoded_total"
FACES_DETECTED = "dfscan_faces_detected_total"
FACES_SCORED = "dfscan_faces_scored_total"
BYTES_READ = "dfscan_bytes_read_total"

Snapshot = dict[str, Any]  # {VIDEOS: {status: n}, FRAMES_DECODED: n, ...}


def _status_value(status: str | VideoStatus) -> str:
    """A known status or ValueError: an unknown label would be a new series forever."""
    return VideoStatus(status).value


class ScanMetrics:
    """Counters, stage timings and build info of one scan, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        # prometheus_client appends "_total" to counters; names are given without it.
        self._videos = Counter(
            VIDEOS.removesuffix("_total"), "Videos finished, by status.", ["status"], registry=reg
        )
        self._counters: dict[str, Counter] = {
            FRAMES_DECODED: Counter(
                FRAMES_DECODED.removesuffix("_total"), "Frames decoded.", registry=reg
            ),
            FACES_DETECTED: Counter(
                FACES_DETECTED.removesuffix("_total"), "Faces detected.", registry=reg
            ),
            FACES_SCORED: Counter(
                FACES_SCORED.removesuffix("_total"), "Faces scored by the model.", registry=reg
            ),
            BYTES_READ: Counter(
                BYTES_READ.removesuffix("_total"), "Bytes of video read.", registry=reg
            ),
        }
        self._stage_seconds = Histogram(
            "dfscan_stage_seconds",
            "Wall time per stage call.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self._run_start = Gauge(
            "dfscan_run_start_timestamp_seconds", "When this scan started.", registry=reg
        )
        self._last_success = Gauge(
            "dfscan_last_success_timestamp_seconds",
            "When this scan last finished successfully (0 until then).",
            registry=reg,
        )
        self._in_flight = Gauge(
            "dfscan_videos_in_flight", "Videos started and not yet finished.", registry=reg
        )
        self._build = Info("dfscan_build", "What code and models this scan runs.", registry=reg)
        self._build_labels: dict[str, str] = {}
        # Every status series exists from the start at 0, so rate() and alerts on, say,
        # decode errors see a zero rather than no data.
        for status in VideoStatus:
            self._videos.labels(status=status.value)
        self._run_start.set(time.time())

    # --- counting ---------------------------------------------------------------------

    def video_done(self, status: str | VideoStatus) -> None:
        self._videos.labels(status=_status_value(status)).inc()

    def add_frames(self, n: int) -> None:
        self._counters[FRAMES_DECODED].inc(n)

    def add_faces_detected(self, n: int) -> None:
        self._counters[FACES_DETECTED].inc(n)

    def add_faces_scored(self, n: int) -> None:
        self._counters[FACES_SCORED].inc(n)

    def add_bytes(self, n: int) -> None:
        self._counters[BYTES_READ].inc(n)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self._stage_seconds.labels(stage=stage).observe(seconds)

    def set_in_flight(self, n: int) -> None:
        self._in_flight.set(n)

    def set_info(self, **labels: str) -> None:
        """Add or replace build labels (model_version, detector, code_version, ...)."""
        self._build_labels.update({k: str(v) for k, v in labels.items()})
        self._build.info(self._build_labels)

    def mark_success(self) -> None:
        self._last_success.set(time.time())

    # --- moving counts between processes ----------------------------------------------

    def snapshot(self) -> Snapshot:
        """Current counter values as a plain dict: picklable, JSON-able, mergeable."""
        videos = {
            s.labels["status"]: int(s.value)
            for metric in self._videos.collect()
            for s in metric.samples
            if s.name == VIDEOS
        }
        snap: Snapshot = {VIDEOS: videos}
        for name, counter in self._counters.items():
            snap[name] = int(
                next(s.value for m in counter.collect() for s in m.samples if s.name == name)
            )
        return snap

    def merge(self, snapshot: Snapshot) -> None:
        """Add a worker's ``snapshot()`` into these counters."""
        for status, n in snapshot.get(VIDEOS, {}).items():
            if n:
                self._videos.labels(status=_status_value(status)).inc(n)
        for name, counter in self._counters.items():
            n = snapshot.get(name, 0)
            if n:
                counter.inc(n)

    # --- output -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def write_textfile(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        """Write the exposition to ``uri`` (any fsspec URL) via a temp name and a move.

        node-exporter's textfile collector reads ``*.prom`` files whenever it is
        scraped; writing to a name it ignores and renaming means it never reads half a
        file (on a local disk the rename is atomic).
        """
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if isinstance(fs, LocalFileSystem):  # object stores have no directories to make
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        data = self.exposition()
        with fs.open(tmp, "wb") as f:
            f.write(data)
        try:
            fs.mv(tmp, path)
        except OSError:
            fs.rm(tmp)
            raise

    def push(
        self,
        gateway_url: str,
        job: str,
        grouping_key: dict[str, str],
        timeout: float = PUSH_TIMEOUT_S,
    ) -> bool:
        """PUT this registry to a Pushgateway; False (one warning line) if that fails.

        Metrics are a side channel: a gateway that is down or misconfigured must not fail
        a scan whose results are already in the warehouse.
        """
        try:
            push_to_gateway(
                gateway_url,
                job=job,
                registry=self.registry,
                grouping_key=grouping_key,
                timeout=timeout,
            )
        # URLError/HTTPError/timeouts are OSError; a bad status line is HTTPException;
        # a malformed gateway URL (InvalidURL, unknown url type) is ValueError.
        except (OSError, http.client.HTTPException, ValueError) as err:
            log.warning("metrics push to %s failed: %s", gateway_url, err)
            return False
        return True
