"""`dfscan results`: the warehouse rows as a person or a script reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators.write_warehouse import DuckDBWarehouse
from pipelines.cli import main
from pipelines.config import ScanConfig
from pipelines.console import ScanConsole
from pipelines.scan import ScanSummary
from schemas.records import VideoStatus
from tests.test_write_warehouse import make_scan

# File names are an uploader's choice; brackets are what rich would read as markup.
HOSTILE_URIS = ("file:///up/x[/b]/clip.mp4", "file:///up/[red]evil.mp4")


@pytest.fixture
def hostile_warehouse(tmp_path: Path) -> str:
    url = f"duckdb://{tmp_path}/scans.duckdb"
    with DuckDBWarehouse(url) as wh:
        wh.ensure_schema()
        wh.upsert_scans(
            [
                make_scan(video_id="a", uri=HOSTILE_URIS[0]),
                make_scan(
                    video_id="b",
                    uri=HOSTILE_URIS[1],
                    status=VideoStatus.UNSUPPORTED,
                    error="not a video: [/i] [bold]",
                    fake_probability=None,
                    label=None,
                ),
            ]
        )
    return url


def test_results_table_shows_bracketed_names_as_they_are(
    hostile_warehouse: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per row: names are not folded
    assert main(["results", "--warehouse", hostile_warehouse]) == 0
    out = capsys.readouterr().out
    for uri in HOSTILE_URIS:
        assert uri in out
    assert "not a video: [/i] [bold]" in out
    assert "2 rows" in out


def test_scan_summary_prints_a_bracketed_out_path_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    out = tmp_path / "x[/b]"
    cfg = ScanConfig(
        input_uri=str(tmp_path),
        out_uri=str(out),
        warehouse_url=f"duckdb://{out}/scans.duckdb",
        run_id="run-1",
        progress=False,
    )
    summary = ScanSummary("run-1", "local", "m1")
    summary.add(make_scan())
    ScanConsole(enabled=False).print_summary(summary, cfg)
    assert f"faces {out}/faces" in capsys.readouterr().out


def test_results_of_a_warehouse_without_scans_is_no_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database no scan has written to yet (here: only `dfscan train --warehouse`'s
    table) lists nothing, as the UI does, rather than a missing-table traceback."""
    url = f"duckdb://{tmp_path}/train-only.duckdb"
    with DuckDBWarehouse(url) as wh:
        wh._execute("CREATE TABLE training_runs (run_id VARCHAR)")
    assert main(["results", "--warehouse", url, "--format", "json"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["results", "--warehouse", url, "--status", "scored"]) == 0
    assert "0 rows" in capsys.readouterr().out


def test_results_say_when_limit_left_matching_rows_out(
    hostile_warehouse: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["results", "--warehouse", hostile_warehouse, "--limit", "1"]) == 0
    assert "1 rows shown, newest first; more match (raise --limit)" in capsys.readouterr().out
    assert main(["results", "--warehouse", hostile_warehouse, "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 rows" in out and "more match" not in out
    assert (
        main(["results", "--warehouse", hostile_warehouse, "--limit", "1", "--format", "json"]) == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 1
