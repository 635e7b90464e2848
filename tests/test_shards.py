"""``dfscan shards ls|stats``: parts, rows, bytes, faces per video, and what needs a look."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from operators.write_face_shards import FaceShardWriter
from pipelines.cli import main
from pipelines.shards import list_parts, shard_stats, uncommitted
from tests.test_write_face_shards import video


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    """Two runs: run-1 wrote {a:3, b:1}, run-2 wrote {a:3, c:2} (a is in two parts)."""
    root = tmp_path / "faces"
    for run, batch in (
        ("run-1", [video("a", 3), video("b", 1)]),
        ("run-2", [video("a", 3), video("c", 2)]),
    ):
        w = FaceShardWriter(str(root), run, crop_scale=1.3)
        with w:
            w.process_batch(batch + [video("n", 0)])  # a faceless video writes nothing
    (root / "_tmp").mkdir(exist_ok=True)
    (root / "_tmp" / "part-dead.parquet.1234").write_bytes(b"left by a crash")
    return root


def test_ls_lists_each_committed_part_with_its_rows_videos_bytes_and_run(faces: Path) -> None:
    parts = list_parts(str(faces))
    assert len(parts) == 2
    by_run = {p.runs: p for p in parts}
    assert by_run[("run-1",)].rows == 4 and by_run[("run-1",)].videos == 2
    assert by_run[("run-2",)].faces_per_video == {"a": 3, "c": 2}
    for p in parts:
        assert p.uri.startswith("file://") and "/detector=scrfd-500m/part-" in p.uri
        assert p.bytes == Path(p.uri.removeprefix("file://")).stat().st_size > 0
        assert p.detector == "scrfd-500m"


def test_stats_totals_and_flags_double_parts_and_leftovers(faces: Path) -> None:
    stats = shard_stats(list_parts(str(faces)), uncommitted(str(faces)))
    assert (stats["parts"], stats["rows"], stats["videos"]) == (2, 9, 3)
    assert stats["faces_by_video"] == {"a": 6, "b": 1, "c": 2}
    assert stats["faces_per_video"] == {"min": 1, "median": 2, "max": 6}
    assert stats["by_run"]["run-1"]["rows"] == 4 and stats["by_run"]["run-2"]["videos"] == 2
    assert stats["videos_in_several_parts"] == ["a"]
    assert [Path(u).name for u in stats["uncommitted"]] == ["part-dead.parquet.1234"]


def test_cli_ls_and_stats(faces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shards", "ls", str(faces), "--format", "json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted(x["rows"] for x in lines) == [4, 5]
    assert main(["shards", "stats", str(faces), "--format", "json", "--videos"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 9 and stats["faces_by_video"]["a"] == 6
    assert main(["shards", "stats", str(faces)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("2 parts · 9 faces · 3 videos")
    assert "1 videos have faces in several parts" in text and "1 uncommitted" in text


def test_an_empty_or_missing_dataset_is_zero_parts(tmp_path: Path) -> None:
    assert list_parts(str(tmp_path / "none")) == []
    assert shard_stats([], [])["rows"] == 0
