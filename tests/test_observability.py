"""Observability against real servers: a scan pushes to Debian's Pushgateway while it
runs and at the end, Debian's Prometheus scrapes the gateway with the example config's
``honor_labels``, and the dashboard's own PromQL expressions, sent to Prometheus over
HTTP, give the numbers of the scan's summary. The alert rules pass ``promtool`` (syntax
and unit tests) and load and evaluate on the running server.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from operators.metrics import MetricsPusher, ScanMetrics
from pipelines.config import DetectorConfig, SamplingConfig, ScanConfig, ScorerConfig
from pipelines.scan import SCAN_JOB, ScanSummary, run_scan
from schemas.records import VideoStatus
from tests.conftest import REAL_VIDEOS

pytestmark = [pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yml"
ALERT_TESTS = OBSERVABILITY / "alerts.test.yml"
PROMETHEUS_EXAMPLE = OBSERVABILITY / "prometheus.yml"

# What Grafana puts in for the dashboard's variables: job "All" (its allValue), the
# default 24 h window, and a rate window that holds several 1 s scrapes.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".+", "$window": "86400"}
ERROR_STATUSES = ("decode_error", "unsupported", "timeout", "too_large")
RUN_ID = "obs-run-1"
# The labels of a scan's pushed series besides run_id: the gateway adds an empty instance.
BASE = (("instance", ""), ("job", SCAN_JOB))
FAILED_RUN_ID = "obs-run-failed"


def binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: apt-get install {package}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (OSError, ValueError):  # not listening yet, or a half-written answer
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Servers:
    pushgateway: str
    prometheus: str
    logs: Path


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_prometheus_config(pushgateway_target: str) -> dict[str, Any]:
    """The example prometheus.yml, pointed at the test's gateway, scraping every second."""
    cfg = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str(ALERTS)]
    cfg.pop("alerting", None)  # no Alertmanager here; /api/v1/alerts still lists alerts
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert job["honor_labels"] is True
    job["static_configs"] = [{"targets": [pushgateway_target]}]
    return cfg


test_prometheus_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """Debian's prometheus-pushgateway and prometheus on free loopback ports, with
    data in a temporary directory; both stopped at the end."""
    pushgateway_bin = binary("prometheus-pushgateway", "prometheus-pushgateway")
    prometheus_bin = binary("prometheus", "prometheus")
    root = Path(tempfile.mkdtemp(prefix="dfscan-prom-"))
    pg_addr = f"127.0.0.1:{free_port()}"
    prom_addr = f"127.0.0.1:{free_port()}"
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump(test_prometheus_config(pg_addr)))
    procs = [
        _start(
            [
                pushgateway_bin,
                f"--web.listen-address={pg_addr}",
                f"--persistence.file={root / 'pushgateway.data'}",
                "--log.level=warn",
            ],
            root / "pushgateway.log",
        ),
        _start(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address={prom_addr}",
                "--log.level=warn",
            ],
            root / "prometheus.log",
        ),
    ]
    try:
        for addr, proc in ((pg_addr, procs[0]), (prom_addr, procs[1])):

            def ready(addr: str = addr, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    logs = "\n".join(p.read_text() for p in root.glob("*.log"))
                    pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{logs}")
                return http_get(f"http://{addr}/-/ready") is not None

            wait_for(f"{proc.args[0]} on {addr}", ready)
        found = Servers(f"http://{pg_addr}", f"http://{prom_addr}", root)
        # Ready is not scraping: the scrape manager picks up targets on a 5 s tick.
        wait_for(
            "Prometheus to scrape the Pushgateway",
            lambda: vector(prom_query(found, 'up{job="pushgateway"} == 1')),
        )
        yield found
    finally:
        for proc in procs:
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def prom_query(servers: Servers, expr: str, at: float | None = None) -> dict[str, Any]:
    """Prometheus's answer to an instant query, status and all (errors included)."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    url = f"{servers.prometheus}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        return dict(json.loads(http_get(url)))
    except urllib.error.HTTPError as err:  # 400/422: a bad expression, with a JSON body
        return dict(json.loads(err.read()))


def vector(answer: dict[str, Any]) -> list[tuple[dict[str, str], float]]:
    assert answer["status"] == "success", answer
    assert answer["data"]["resultType"] == "vector", answer
    return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]


def gateway_samples(servers: Servers, run_id: str) -> dict[tuple[str, tuple], float]:
    """The Pushgateway's exposition for one run's group: {(name, labels): value}."""
    text = http_get(f"{servers.pushgateway}/metrics").decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("run_id") == run_id:
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "run_id"))
                out[(s.name, labels)] = s.value
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile on (upper bound, cumulative count) pairs sorted by
    bound, +Inf last: linear interpolation within the bucket that holds the rank."""
    rank = q * buckets[-1][1]
    b = next((i for i, (_, n) in enumerate(buckets[:-1]) if n >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, count = 0.0, buckets[b][1]
    if b > 0:
        start, count, rank = buckets[b - 1][0], count - buckets[b - 1][1], rank - buckets[b - 1][1]
    return start + (buckets[b][0] - start) * (rank / count)


def stage_buckets(metrics: ScanMetrics) -> dict[str, list[tuple[float, float]]]:
    """The scan's own stage histogram, per stage, as the registry holds it."""
    out: dict[str, list[tuple[float, float]]] = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "dfscan_stage_seconds_bucket":
                out.setdefault(s.labels["stage"], []).append((float(s.labels["le"]), s.value))
    return {stage: sorted(b) for stage, b in out.items()}


# ---------------------------------------------------------------- the dashboard
def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every panel of the dashboard JSON."""
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t) for p in board["panels"] for t in p.get("targets", [])]


def promql(target: dict[str, Any]) -> str:
    """A target's expression with the dashboard variables filled in as Grafana does."""
    expr = str(target["expr"])
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown dashboard variable in {target['expr']}"
    return expr


def panel_exprs(title: str) -> list[str]:
    found = [promql(t) for p, t in dashboard_targets() if p == title and "expr" in t]
    assert found, f"no PromQL panel titled {title!r} in {DASHBOARD.name}"
    return found


def test_dashboard_covers_what_operators_watch() -> None:
    titles = {p for p, _ in dashboard_targets()}
    assert {
        "Throughput",
        "Videos by status",
        "Error rate",
        "Stage latency p50 / p95",
        "Faces per video",
        "Score histogram",
        "Fake rate by model version",
        "Time since last success",
    } <= titles
    quantiles = " ".join(panel_exprs("Stage latency p50 / p95"))
    assert "histogram_quantile(0.5," in quantiles and "histogram_quantile(0.95," in quantiles


# ---------------------------------------------------------------- the scan
@dataclass
class PushedScan:
    summary: ScanSummary
    out: Path
    started: float
    finished: float
    during: dict[tuple[str, tuple], float] = field(default_factory=dict)  # mid-run push


def _scan_config(
    videos: Path, out: Path, checkpoint: Path, gateway: str, run_id: str
) -> ScanConfig:
    return ScanConfig(
        input_uri=str(videos),
        out_uri=str(out),
        warehouse_url=f"duckdb://{out}/scans.duckdb",
        run_id=run_id,
        sampling=SamplingConfig.parse("uniform:8"),
        detector=DetectorConfig.build("scrfd-500m"),
        scorer=ScorerConfig(checkpoint=str(checkpoint)),
        pushgateway=gateway,
        push_interval_s=0.3,  # several pushes within a scan of a few seconds
        progress=False,
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real videos and a text file named like a video."""
    d = tmp_path_factory.mktemp("obs_videos")
    for name in ("talking_head_d0.mp4", "hamilton_clip.mp4"):
        shutil.copy(REAL_VIDEOS / name, d / name)
    (d / "broken.mp4").write_text("this is a text file, not a video\n" * 40)
    return d


@pytest.fixture(scope="module")
def pushed_scan(
    servers: Servers, videos: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> PushedScan:
    """The scan, with what the gateway held while it ran, once Prometheus has scraped
    its final push."""
    out = tmp_path_factory.mktemp("obs_out")
    during: dict[tuple[str, tuple], float] = {}

    def on_row(row: Any, total: int) -> None:
        # The first finished video is counted before on_row runs: a periodic push
        # must bring it to the gateway while the scan is still going.
        if during:
            return

        def pushed() -> dict[tuple[str, tuple], float] | None:
            got = gateway_samples(servers, RUN_ID)
            done = sum(v for (n, _), v in got.items() if n == "dfscan_videos_total")
            return got if done >= 1 else None

        during.update(wait_for("a push during the scan", pushed, timeout=10))
        # And Prometheus scraped that partial count, so rate() sees the run's counters grow.
        wait_for(
            "a mid-run sample in Prometheus",
            lambda: vector(
                prom_query(servers, f'sum(dfscan_videos_total{{run_id="{RUN_ID}"}}) > 0')
            ),
            timeout=10,
        )

    started = time.time()
    summary = run_scan(
        _scan_config(videos, out, tiny_checkpoint, servers.pushgateway, RUN_ID), on_row=on_row
    )
    finished = time.time()
    wait_for(
        "Prometheus to scrape the final push",
        lambda: vector(
            prom_query(servers, f'dfscan_last_success_timestamp_seconds{{run_id="{RUN_ID}"}} > 0')
        ),
    )
    return PushedScan(summary, out, started, finished, during)


def test_the_scan_has_the_expected_outcome(pushed_scan: PushedScan) -> None:
    s = pushed_scan.summary
    assert dict(s.counts) == {"scored": 2, "unsupported": 1}
    assert s.videos == 3 and s.faces > 0


def test_a_push_reached_the_gateway_while_the_scan_ran(pushed_scan: PushedScan) -> None:
    during = pushed_scan.during
    assert during[("dfscan_last_success_timestamp_seconds", BASE)] == 0  # not finished yet
    done = sum(v for (n, _), v in during.items() if n == "dfscan_videos_total")
    assert 1 <= done < pushed_scan.summary.videos
    assert during[("dfscan_run_start_timestamp_seconds", BASE)] >= pushed_scan.started - 1


def test_final_push_holds_the_summary_and_build_info(
    servers: Servers, pushed_scan: PushedScan
) -> None:
    got = gateway_samples(servers, RUN_ID)
    s = pushed_scan.summary
    for status in VideoStatus:
        key = (
            "dfscan_videos_total",
            (("instance", ""), ("job", SCAN_JOB), ("status", status.value)),
        )
        assert got[key] == s.counts.get(status.value, 0), status
    (info,) = [dict(labels) for (name, labels) in got if name == "dfscan_build_info"]
    assert info["model_version"] == s.model_version
    assert info["detector"] == "scrfd-500m" and len(info["detector_sha256"]) == 64
    assert info["model_arch"] == "mobilenet_v2" and info["runner"] == "local"
    last = got[("dfscan_last_success_timestamp_seconds", BASE)]
    assert pushed_scan.started <= last <= pushed_scan.finished
    assert got[("dfscan_videos_backlog", BASE)] == 0


def test_dashboard_expressions_give_the_scan_summary(
    servers: Servers, pushed_scan: PushedScan
) -> None:
    s = pushed_scan.summary
    now = time.time()

    def one(title: str, index: int = 0) -> float:
        (value,) = [v for _, v in vector(prom_query(servers, panel_exprs(title)[index], now))]
        return value

    by_status = {
        m["status"]: v
        for m, v in vector(prom_query(servers, panel_exprs("Videos by status")[0], now))
    }
    assert by_status == {st.value: float(s.counts.get(st.value, 0)) for st in VideoStatus}
    # Faces scored: every face of a scored video; the text file has none.
    assert [one("Totals", i) for i in range(4)] == [s.videos, s.faces, s.faces, s.frames]
    errors = sum(s.counts.get(st, 0) for st in ERROR_STATUSES)
    assert one("Error rate") == pytest.approx(errors / s.videos)  # 1 of 3: the text file
    assert one("Faces per video") == pytest.approx(s.faces / s.videos)
    histogram = {
        m["le"]: v for m, v in vector(prom_query(servers, panel_exprs("Score histogram")[0], now))
    }
    assert histogram["+Inf"] == s.counts["scored"] == 2
    fake_rate = vector(prom_query(servers, panel_exprs("Fake rate by model version")[0], now))
    assert fake_rate == [
        ({"model_version": s.model_version}, s.labels["FAKE"] / s.counts["scored"])
    ]
    mean = one("Mean fake probability by model version")
    assert 0.0 <= mean <= 1.0
    assert s.metrics is not None
    own = stage_buckets(s.metrics)
    for index, q in ((0, 0.5), (1, 0.95)):
        got = {
            m["stage"]: v
            for m, v in vector(
                prom_query(servers, panel_exprs("Stage latency p50 / p95")[index], now)
            )
        }
        assert got.keys() == own.keys() and "score_faces" in got
        for stage, buckets in own.items():
            assert got[stage] == pytest.approx(histogram_quantile(q, buckets)), (q, stage)
    age = one("Time since last success")
    assert 0 <= age <= now - pushed_scan.started + 1


def test_every_dashboard_expression_is_valid_promql(
    servers: Servers, pushed_scan: PushedScan
) -> None:
    """Prometheus itself parses and runs each expression (status success, no warnings);
    rate() windows are over the pushes made during the scan."""
    now = time.time()
    bad = {}
    for title, target in dashboard_targets():
        if "expr" not in target:
            continue
        answer = prom_query(servers, promql(target), now)
        if answer["status"] != "success" or answer.get("warnings"):
            bad[f"{title} {target['refId']}"] = answer
    assert not bad
    ((_, videos_per_s),) = vector(prom_query(servers, panel_exprs("Throughput")[0], now))
    assert videos_per_s > 0  # the scrapes during the run saw the counters grow


def test_sql_panels_run_on_the_warehouse_views(pushed_scan: PushedScan) -> None:
    """The panels on the warehouse's SQL views (written for Grafana's PostgreSQL source)
    run as they are on DuckDB too, and count the scan's videos."""
    sql_targets = [(p, t) for p, t in dashboard_targets() if "rawSql" in t]
    assert {p for p, _ in sql_targets} == {
        "Score histogram (warehouse)",
        "Daily fake rate (warehouse)",
    }
    con = duckdb.connect(str(pushed_scan.out / "scans.duckdb"), read_only=True)
    try:
        results = {p: con.execute(t["rawSql"]).fetchall() for p, t in sql_targets}
    finally:
        con.close()
    histogram = results["Score histogram (warehouse)"]
    assert len(histogram) == 10 and sum(r[2] for r in histogram) == 2
    ((_, model, rate),) = results["Daily fake rate (warehouse)"]
    s = pushed_scan.summary
    assert model == s.model_version and rate == pytest.approx(s.labels["FAKE"] / 2)


# ---------------------------------------------------------------- alert rules
def test_promtool_accepts_the_rules_and_the_example_config() -> None:
    promtool = binary("promtool", "prometheus")
    for args in (["check", "rules", str(ALERTS)], ["check", "config", str(PROMETHEUS_EXAMPLE)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_alert_rule_unit_tests_pass() -> None:
    """alerts.test.yml: each alert fires on the series that should page, not on the rest."""
    promtool = binary("promtool", "prometheus")
    done = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_rules_evaluate_without_errors_on_the_server(
    servers: Servers, pushed_scan: PushedScan
) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = json.loads(http_get(f"{servers.prometheus}/api/v1/rules"))["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    time.sleep(1.5)  # one more 1 s evaluation round, now over the scan's final series
    rules = wait_for("every rule to be evaluated", evaluated)
    assert len(rules) == 6
    assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}
    alerts = json.loads(http_get(f"{servers.prometheus}/api/v1/alerts"))["data"]["alerts"]
    assert "DfscanJobFailed" not in {a["labels"]["alertname"] for a in alerts}


def test_a_failed_scan_pushes_its_failure_and_the_alert_expression_sees_it(
    servers: Servers, pushed_scan: PushedScan, videos: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # Last of the scan tests: its run adds to the dashboard's sums (hash timings, zeros).
    def boom(n: int) -> None:
        raise RuntimeError("the scan broke after listing")

    with pytest.raises(RuntimeError, match="broke after listing"):
        run_scan(
            _scan_config(videos, tmp_path, tiny_checkpoint, servers.pushgateway, FAILED_RUN_ID),
            on_listed=boom,
        )
    got = gateway_samples(servers, FAILED_RUN_ID)
    assert got[("dfscan_last_failure_timestamp_seconds", BASE)] > pushed_scan.finished
    assert got[("dfscan_last_success_timestamp_seconds", BASE)] == 0
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == "DfscanJobFailed"]
    firing = wait_for(
        "the failed run in Prometheus",
        lambda: vector(prom_query(servers, rule["expr"])),
    )
    assert [m for m, _ in firing] == [{"job": SCAN_JOB}]


# ---------------------------------------------------------------- the pusher itself
def test_pusher_pushes_every_interval_and_once_more_at_stop(servers: Servers) -> None:
    metrics = ScanMetrics()
    frames = ("dfscan_frames_decoded_total", (("instance", ""), ("job", "dfscan_test")))
    pusher = MetricsPusher(metrics, servers.pushgateway, "dfscan_test", {"run_id": "tick"}, 0.2)
    with pusher:
        assert gateway_samples(servers, "tick")[frames] == 0  # start() pushes at once
        metrics.add_frames(7)
        wait_for(
            "a periodic push of the new count",
            lambda: gateway_samples(servers, "tick").get(frames) == 7,
            timeout=5,
        )
        metrics.add_frames(1)
    assert gateway_samples(servers, "tick")[frames] == 8  # the push at stop()
    assert pusher.pushes >= 3 and pusher.failures == 0


def test_pusher_to_a_dead_gateway_warns_once_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    pusher = MetricsPusher(ScanMetrics(), url, "dfscan_test", {"run_id": "dead"}, 0.05)
    with caplog.at_level(logging.WARNING, logger="operators.metrics"):
        pusher.start()
        time.sleep(0.3)
        assert pusher.stop() is False
    assert pusher.pushes == 0 and pusher.failures >= 3
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and url in warnings[0].getMessage()


# bcrypt (cost 4: fast) of PUSH_PASSWORD, as the gateway's web config wants it.
PUSH_USER, PUSH_PASSWORD = "dfscan", "dfscan-push-secret"
PUSH_PASSWORD_BCRYPT = "$2b$04$uaFuFMTXXxfYbe4D1tfUJuxzfvDXURtD1Ahno.ORstTOtoB079EQS"


@pytest.fixture
def auth_gateway(tmp_path: Path) -> Iterator[str]:
    """A Pushgateway behind HTTP basic auth (its own web config), as behind a proxy."""
    pushgateway_bin = binary("prometheus-pushgateway", "prometheus-pushgateway")
    addr = f"127.0.0.1:{free_port()}"
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {PUSH_USER: PUSH_PASSWORD_BCRYPT}}))
    proc = _start(
        [pushgateway_bin, f"--web.listen-address={addr}", f"--web.config.file={web}"],
        tmp_path / "pushgateway.log",
    )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail((tmp_path / "pushgateway.log").read_text())
            try:
                http_get(f"http://{addr}/-/ready")
            except urllib.error.HTTPError as err:
                return err.code == 401  # up, and asking for the password
            return False

        wait_for(f"pushgateway on {addr}", ready)
        yield addr
    finally:
        _stop(proc)


def test_a_gateway_url_with_user_and_password_pushes_with_basic_auth(auth_gateway: str) -> None:
    metrics = ScanMetrics()
    metrics.video_done("scored")
    url = f"http://{PUSH_USER}:{PUSH_PASSWORD}@{auth_gateway}"
    assert metrics.try_push(url, SCAN_JOB, {"run_id": "auth"}) is None
    request = urllib.request.Request(f"http://{auth_gateway}/metrics")
    token = base64.b64encode(f"{PUSH_USER}:{PUSH_PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as resp:
        text = resp.read().decode()
    assert (
        'dfscan_videos_total{instance="",job="dfscan_scan",run_id="auth",status="scored"} 1' in text
    )
    # Without the password the gateway refuses it: the push says why, never raises.
    error = metrics.try_push(f"http://{auth_gateway}", SCAN_JOB, {"run_id": "auth"})
    assert error is not None and "401" in error
