"""`dfscan plan`: arithmetic from measured costs, and docs/capacity.md is its output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.config import ConfigError
from pipelines.plan import DEFAULT_COSTS, MeasuredCosts, load_costs, plan, render

ROOT = Path(__file__).resolve().parent.parent
# The two plans docs/capacity.md shows, each rendered by `dfscan plan --markdown`.
DOC_PLANS = [
    dict(videos_per_day=1_000_000, mean_duration=30.0, gpu_type="t4", cores_per_node=16),
    dict(videos_per_day=1_000_000, mean_duration=30.0, gpu_type=None, cores_per_node=16),
]


def costs(**kw: float) -> MeasuredCosts:
    base = dict(
        decode_s_per_video_s=0.03,
        detect_s_per_frame=0.02,
        faces_per_frame=1.5,
        score_s_per_face=0.01,
        source="test",
    )
    base.update(kw)
    return MeasuredCosts(**base)  # type: ignore[arg-type]


def test_cpu_only_plan_adds_scoring_to_the_cpu_cost():
    lines = dict(plan(costs(), 86_400, 10.0, None, 16))
    # per video: decode 0.3 + detect 0.64 + score 0.01 x 48 faces = 1.42 core-s
    assert lines["CPU per day"].startswith("1.420 core-s x 86,400")
    assert lines["CPU cores needed"].endswith("= 2.0 cores")  # 1.42 / 0.7 headroom
    assert lines["CPU nodes (16 cores)"].endswith("= 1")


def test_gpu_plan_moves_scoring_off_the_cpus_and_names_the_published_figure():
    lines = dict(plan(costs(), 1_000_000, 30.0, "t4", 16))
    assert "score per video (CPU)" not in lines
    assert "published, t4" in lines["GPU scorers"]
    assert lines["bottleneck"].startswith("decode")


def test_missing_costs_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="make bench"):
        load_costs(tmp_path / "none.json")


def test_capacity_doc_is_the_plans_output_for_the_committed_measurements():
    data = json.loads(DEFAULT_COSTS.read_text())
    assert data["cores"] >= 1 and data["scans"]
    measured = load_costs(DEFAULT_COSTS)
    doc = (ROOT / "docs" / "capacity.md").read_text()
    for kw in DOC_PLANS:
        args = argparse.Namespace(markdown=True, **kw)
        lines = plan(
            measured,
            kw["videos_per_day"],
            kw["mean_duration"],
            kw["gpu_type"],
            kw["cores_per_node"],
        )
        rendered = render(args, lines, measured).replace(
            str(DEFAULT_COSTS), "benchmarks/results/throughput.json"
        )
        assert rendered in doc


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``dfscan plan ARGV``'s stderr, after asserting it is one line and exit 2."""
    code: int | str | None
    try:
        code = main(["plan", *argv])
    except SystemExit as exc:  # argparse's own usage errors exit from parse_args
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("dfscan: error: ") and err.count("\n") == 1, err
    return err


def _bench_json(**floors: object) -> str:
    """A throughput.json as `make bench` writes it, with ``floors`` overridden (None: left out)."""
    scan = dict(runner="local", frames="uniform:32", decode_s=10.0, faces=90, frames_n=64)
    merged = {**dict(detector_s_per_frame=0.02, scorer_s_per_face=0.005), **floors}
    kept = {k: v for k, v in merged.items() if v is not None}
    return json.dumps(dict(video_seconds=300.0, scans=[scan], floors=kept))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "is not valid JSON: Expecting property name"),
        ("{}", 'has no "scans" list'),
        ("[1, 2]", 'has no "scans" list'),
        (_bench_json(detector_s_per_frame=float("nan")), "floors.detector_s_per_frame must be"),
        (_bench_json(scorer_s_per_face="fast"), "floors.scorer_s_per_face must be a finite"),
        (_bench_json(scorer_s_per_face=None), "lacks floors.scorer_s_per_face"),
    ],
    ids=["malformed", "empty object", "not an object", "nan cost", "string cost", "missing cost"],
)  # fmt: skip
def test_a_bad_costs_file_is_one_line_naming_the_file(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    costs_file = tmp_path / "throughput.json"
    costs_file.write_text(text)
    argv = ["--videos-per-day", "1000", "--mean-duration", "30", "--costs", str(costs_file)]
    err = _cli_error(argv, capsys)
    assert f"dfscan: error: {costs_file}" in err and expected in err


def test_a_good_costs_file_still_plans(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    costs_file = tmp_path / "throughput.json"
    costs_file.write_text(_bench_json())
    argv = ["--videos-per-day", "1000", "--mean-duration", "30", "--costs", str(costs_file)]
    assert main(["plan", *argv]) == 0
    assert "CPU nodes (16 cores)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--mean-duration", "nan"),
        ("--mean-duration", "inf"),
        ("--mean-duration", "-inf"),
        ("--mean-duration", "0"),
        ("--videos-per-day", "0"),
        ("--videos-per-day", "-5"),
        ("--cores-per-node", "0"),
    ],
)
def test_a_non_finite_or_non_positive_flag_is_an_argparse_error(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
):
    argv = {"--videos-per-day": "1000", "--mean-duration": "30", flag: value}
    err = _cli_error([f"{k}={v}" for k, v in argv.items()], capsys)
    assert err == f"dfscan: error: argument {flag}: must be a finite number > 0, got {value}\n"


def test_flags_too_large_for_a_float_are_one_line(capsys: pytest.CaptureFixture[str]):
    err = _cli_error(["--videos-per-day", "1" + "0" * 400, "--mean-duration", "1e308"], capsys)
    assert "too large to plan for" in err
