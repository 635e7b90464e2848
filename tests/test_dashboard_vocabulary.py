"""The dashboard, the alert rules and their unit tests ask only for series a scan emits.

PromQL over a metric or label nobody emits is valid and returns nothing: a renamed
counter leaves a panel empty and an alert silent without any error. This reads every
expression in deploy/observability/ and checks its names against ScanMetrics' own
exposition, without servers (tests/test_observability.py runs them on real ones).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from operators.metrics import ScanMetrics
from pipelines.scan import SCAN_JOB
from schemas.records import VideoStatus

OBSERVABILITY = Path(__file__).resolve().parent.parent / "deploy" / "observability"
# Labels a series gains on its way to Prometheus: the push's grouping key and the
# gateway's empty instance.
GATEWAY_LABELS = {"job", "run_id", "instance"}
METRIC = re.compile(r"\bdfscan_[a-z_]+\b")
SELECTOR = re.compile(r"\b(dfscan_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def emitted() -> dict[str, set[str]]:
    """Every sample name a scan exposes, with its label names (one of each kind)."""
    m = ScanMetrics()
    m.observe_stage("score_faces", 0.1)
    m.observe_verdict("m1", 0.9, "FAKE")
    m.set_info(model_version="m1")
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target and variable, rule and unit-test series."""
    found: list[tuple[str, str]] = []
    board = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            if "expr" in t:
                found.append((f"panel {panel['title']!r}", t["expr"]))
    for var in board["templating"]["list"]:
        if isinstance(var.get("query"), dict):
            found.append((f"variable {var['name']}", var["query"]["query"]))
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    tests = yaml.safe_load((OBSERVABILITY / "alerts.test.yml").read_text())
    for i, test in enumerate(tests["tests"]):
        for series in test.get("input_series", []):
            found.append((f"alerts.test.yml test {i}", series["series"]))
    return found


EXPRESSIONS = expressions()


def problems(expr: str) -> list[str]:
    """What in ``expr`` names a metric, label, job or status no scan emits."""
    names = emitted()
    all_labels = set().union(*names.values()) | GATEWAY_LABELS
    found = []
    without_strings = re.sub(r'"[^"]*"', '""', expr)  # "dfscan_scan" is a job, not a metric
    found += [f"metric {n}" for n in sorted(set(METRIC.findall(without_strings)) - names.keys())]
    for metric, matchers in SELECTOR.findall(expr):
        for label, _, value in MATCHER.findall(matchers):
            if label not in names.get(metric, set()) | GATEWAY_LABELS:
                found.append(f"label {label} of {metric}")
            if label == "job" and "$" not in value and not re.fullmatch(value, SCAN_JOB):
                found.append(f"job {value} (scans push as {SCAN_JOB})")
            if label == "status" and not set(value.split("|")) <= {s.value for s in VideoStatus}:
                found.append(f"status {value}")
    for group in GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in all_labels:
                found.append(f"grouping label {label}")
    return found


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_every_queried_metric_and_label_is_emitted(where: str, expr: str) -> None:
    assert problems(expr) == [], where


def test_the_check_finds_a_renamed_metric_label_job_and_status() -> None:
    expr = (
        'sum by (job, runid) (dfscan_video_total{job="dfscan", status="decode_eror"})'
        ' / sum(dfscan_videos_total{stage="x"})'
    )
    assert problems(expr) == [
        "metric dfscan_video_total",
        "job dfscan (scans push as dfscan_scan)",
        "label status of dfscan_video_total",
        "status decode_eror",
        "label stage of dfscan_videos_total",
        "grouping label runid",
    ]
