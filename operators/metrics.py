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

import functools
import http.client
import logging
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from types import TracebackType
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
from prometheus_client.exposition import basic_auth_handler, default_handler

from operators.redact import redact
from schemas.records import VideoStatus

log = logging.getLogger(__name__)

# 1 ms (a cached face crop) .. 10 min (a long video decoded on a slow store): 1-2.5-5
# per decade up to 10 s, then half-minutes to minutes, so p50/p95 stay readable.
STAGE_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

# Buckets of fake_probability: tenths, as the warehouse's score_histogram view, so the
# dashboard's histogram and the SQL one line up.
SCORE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# A push that hangs blocks the next tick and the end of the scan: a missing gateway
# should cost a few seconds, not prometheus_client's default 30.
PUSH_TIMEOUT_S = 3.0
# Pushing faster than Prometheus scrapes the gateway (15 s by default) only adds load.
DEFAULT_PUSH_INTERVAL_S = 15.0

VIDEOS = "dfscan_videos_total"
FRAMES_DECODED = "dfscan_frames_decoded_total"
FACES_DETECTED = "dfscan_faces_detected_total"
FACES_SCORED = "dfscan_faces_scored_total"
BYTES_READ = "dfscan_bytes_read_total"
VERDICTS = "dfscan_verdicts_total"
FAKE_PROBABILITY = "dfscan_fake_probability"

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
        # A failure newer than the job's last success is what the JobFailed alert fires
        # on, so it clears by itself when the next run succeeds.
        self._last_failure = Gauge(
            "dfscan_last_failure_timestamp_seconds",
            "When this scan ended with an error (0 unless it did).",
            registry=reg,
        )
        self._backlog = Gauge(
            "dfscan_videos_backlog",
            "Videos this run still has to finish (listed, not skipped, not yet done).",
            registry=reg,
        )
        # Per video, on the driver from the row itself, so every engine counts the same.
        # model_version is a label (few values) so fake rate and drift split by model.
        self._verdicts = Counter(
            VERDICTS.removesuffix("_total"),
            "Scored videos by verdict (FAKE/REAL) and model version.",
            ["model_version", "label"],
            registry=reg,
        )
        self._fake_probability = Histogram(
            FAKE_PROBABILITY,
            "Per-video fake_probability of scored videos.",
            ["model_version"],
            buckets=SCORE_BUCKETS,
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

    def set_backlog(self, n: int) -> None:
        self._backlog.set(n)

    def observe_verdict(self, model_version: str, probability: float, label: str) -> None:
        """One scored video: its verdict and where its probability falls."""
        self._verdicts.labels(model_version=model_version, label=label).inc()
        self._fake_probability.labels(model_version=model_version).observe(probability)

    def set_info(self, **labels: str) -> None:
        """Add or replace build labels (model_version, detector, code_version, ...)."""
        self._build_labels.update({k: str(v) for k, v in labels.items()})
        self._build.info(self._build_labels)

    @property
    def info(self) -> dict[str, str]:
        """The build labels set so far (a copy)."""
        return dict(self._build_labels)

    def mark_success(self) -> None:
        self._last_success.set(time.time())

    def mark_failure(self) -> None:
        self._last_failure.set(time.time())

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

    def try_push(
        self,
        gateway_url: str,
        job: str,
        grouping_key: dict[str, str],
        timeout: float = PUSH_TIMEOUT_S,
    ) -> str | None:
        """PUT this registry to a Pushgateway; None, or why it failed (never raises for
        an unreachable or misconfigured gateway)."""
        try:
            url, handler = _gateway_auth(gateway_url)
            push_to_gateway(
                url,
                job=job,
                registry=self.registry,
                grouping_key=grouping_key,
                timeout=timeout,
                handler=handler,
            )
        # URLError/HTTPError/timeouts are OSError; a bad status line is HTTPException;
        # a malformed gateway URL (InvalidURL, unknown url type) is ValueError.
        except (OSError, http.client.HTTPException, ValueError) as err:
            return str(err) or type(err).__name__
        return None

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
        error = self.try_push(gateway_url, job, grouping_key, timeout)
        if error is not None:
            log.warning("metrics push to %s failed: %s", redact(gateway_url), redact(error))
            return False
        return True


def _gateway_auth(gateway_url: str) -> tuple[str, Callable[..., Callable[[], None]]]:
    """The gateway URL without its ``user:password@``, and a handler that sends them as
    HTTP basic auth. urllib takes userinfo left in the URL for part of the host name, so
    a gateway behind basic auth was never reached."""
    parts = urllib.parse.urlsplit(gateway_url)
    if parts.username is None:
        return gateway_url, default_handler
    host = parts.netloc.rpartition("@")[2]
    username = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), functools.partial(
        basic_auth_handler, username=username, password=password
    )


class MetricsPusher:
    """Pushes a scan's registry every ``interval_s`` from a daemon thread, and once
    more on ``stop()``.

    A nightly scan runs for hours: pushed only at the end, the dashboard would stay
    blank, ``rate()`` would have nothing to work on, and a killed run would leave no
    trace. Every push is a PUT of the whole registry under one grouping key (job and
    run id), so each replaces the last. A failed push is logged once per outage (not
    every tick) and the next tick tries again; it never raises into the scan.
    """

    def __init__(
        self,
        metrics: ScanMetrics,
        gateway_url: str,
        job: str,
        grouping_key: dict[str, str],
        interval_s: float = DEFAULT_PUSH_INTERVAL_S,
        timeout: float = PUSH_TIMEOUT_S,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"push interval must be > 0 seconds, got {interval_s}")
        self.metrics = metrics
        self.gateway_url = gateway_url
        self.job = job
        self.grouping_key = dict(grouping_key)
        self.interval_s = interval_s
        self.timeout = timeout
        self.pushes = 0  # successful pushes so far
        self.failures = 0
        self._failing = False
        self._lock = threading.Lock()  # the final push never overlaps a tick's
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsPusher:
        """Push once now (the run shows up at once), then every ``interval_s``."""
        if self._thread is not None:
            raise RuntimeError("MetricsPusher already started")
        self.push_now()
        self._thread = threading.Thread(target=self._loop, name="dfscan-metrics-push", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.push_now()

    def push_now(self) -> bool:
        """One push; True if the gateway took it."""
        with self._lock:
            error = self.metrics.try_push(
                self.gateway_url, self.job, self.grouping_key, self.timeout
            )
            if error is None:
                if self._failing:
                    log.info("metrics push to %s works again", redact(self.gateway_url))
                self._failing = False
                self.pushes += 1
                return True
            self.failures += 1
            if not self._failing:
                log.warning(
                    "metrics push to %s failed: %s", redact(self.gateway_url), redact(error)
                )
            self._failing = True
            return False

    def stop(self, final_push: bool = True) -> bool:
        """Stop the ticks and push the final values; True if that last push worked."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1.0)
            self._thread = None
        return self.push_now() if final_push else not self._failing

    def __enter__(self) -> MetricsPusher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
