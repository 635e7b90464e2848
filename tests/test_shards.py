"""``dfscan shards ls|stats|vacuum``: runs, rows, bytes, faces per video, and leftovers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from operators.read_shards import ShardListing, list_shards
from operators.write_face_shards import FaceShardWriter, commit_run, read_face_shards
from pipelines.cli import main
from pipelines.shards import shard_stats, vacuum
from tests.test_write_face_shards import NOON, Killed, crash_before_record, video

HOUR = 3600.0


@pytest.fixture
def faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """run-1 (complete) wrote {a:3, b:1}; run-2 (unfinished) wrote {a:3} and {c:2} (on
    2024-05-01); a killed run left a part without a record and a file in _tmp/; an
    older layout left a stray part. Every leftover is two hours old."""
    root = tmp_path / "faces"
    for run, batch in (
        ("run-1", [video("a", 3), video("b", 1)]),
        ("run-2", [video("a", 3), video("c", 2, NOON.timestamp())]),
    ):
        with FaceShardWriter(str(root), run, crop_scale=1.3) as w:
            w.process_batch(batch + [video("n", 0)])  # a faceless video writes nothing
    commit_run(str(root), "run-1")
    crash_before_record(monkeypatch)
    with pytest.raises(Killed), FaceShardWriter(str(root), "killed", crop_scale=1.3) as w:
        w.process_batch([video("d", 5)])
    monkeypatch.undo()
    (root / "_tmp" / "part-dead.parquet.1234").write_bytes(b"left by a crash")
    legacy = root / "detector=scrfd-500m" / "part-old.parquet"
    legacy.parent.mkdir()
    legacy.write_bytes(b"a part from before dt= partitions")
    old = time.time() - 2 * HOUR
    for path in (*root.glob("dt=*/*/*.parquet"), *(root / "_tmp").iterdir(), legacy):
        os.utime(path, (old, old))
    return root


def test_listing_shows_runs_with_their_parts_rows_bytes_and_completeness(faces: Path) -> None:
    listing = list_shards(str(faces))
    runs = {r.run_id: r for r in listing.runs}
    assert set(runs) == {"run-1", "run-2"}  # the killed run committed nothing
    assert (runs["run-1"].parts, runs["run-1"].rows, runs["run-1"].videos) == (1, 4, 2)
    assert (runs["run-2"].parts, runs["run-2"].rows, runs["run-2"].videos) == (2, 5, 2)
    assert runs["run-1"].complete and not runs["run-2"].complete
    assert len(listing.parts) == 3
    for p in listing.parts:
        assert p.bytes == Path(p.uri.removeprefix("file://")).stat().st_size > 0
        assert p.uri.startswith("file://") and p.detector == "scrfd-500m"
    assert sorted(p.dt for p in listing.parts) == [
        "2024-05-01",
        "__HIVE_DEFAULT_PARTITION__",
        "__HIVE_DEFAULT_PARTITION__",
    ]
    uncommitted = {Path(f.path).name: f.in_layout for f in listing.uncommitted}
    assert len(uncommitted) == 2 and uncommitted["part-old.parquet"] is False
    assert [Path(f.path).name for f in listing.temporary] == ["part-dead.parquet.1234"]


def test_stats_totals_committed_parts_and_flags_double_parts_and_leftovers(faces: Path) -> None:
    stats = shard_stats(list_shards(str(faces)))
    assert (stats["parts"], stats["rows"], stats["videos"]) == (3, 9, 3)
    assert stats["faces_by_video"] == {"a": 6, "b": 1, "c": 2}  # d was never committed
    assert stats["faces_per_video"] == {"min": 1, "median": 2, "max": 6}
    assert stats["by_run"]["run-1"]["rows"] == 4 and stats["by_run"]["run-2"]["videos"] == 2
    day = stats["by_dt"]["2024-05-01"]
    assert (day["parts"], day["rows"], day["videos"]) == (1, 2, 1) and day["bytes"] > 0
    assert stats["videos_in_several_parts"] == ["a"]
    assert len(stats["uncommitted"]) == 2 and len(stats["temporary"]) == 1


def test_a_committed_part_whose_file_is_gone_is_reported_not_read(faces: Path) -> None:
    [gone] = [p for p in list_shards(str(faces)).parts if p.dt == "2024-05-01"]
    Path(gone.uri.removeprefix("file://")).unlink()
    listing = list_shards(str(faces))
    assert listing.missing == (gone.uri,) and len(listing.parts) == 2
    assert "c" not in set(read_face_shards(str(faces)).column("video_id").to_pylist())


def test_cli_ls_and_stats(faces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shards", "ls", str(faces), "--format", "json", "--parts"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["complete"]) for r in listed["runs"]] == [
        ("run-1", True),
        ("run-2", False),
    ]
    assert sorted(p["rows"] for p in listed["parts"]) == [2, 3, 4]
    assert len(listed["uncommitted"]) == 2 and len(listed["temporary"]) == 1
    assert main(["shards", "ls", str(faces)]) == 0
    text = capsys.readouterr().out
    assert "2 runs · 3 committed parts · 9 faces" in text
    [line] = [x for x in text.splitlines() if x.startswith("run-2 ")]
    assert line.split()[1:4] == ["2", "5", "2"] and line.endswith("incomplete")
    assert "! 2 uncommitted file(s)" in text and "! 1 temporary file(s)" in text
    assert main(["shards", "stats", str(faces), "--format", "json", "--videos"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 9 and stats["faces_by_video"]["a"] == 6
    assert main(["shards", "stats", str(faces)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("3 parts · 9 faces · 3 videos")
    assert "faces per video min 1 median 2 max 6" in text
    assert "1 videos have faces in several parts" in text and "2 uncommitted" in text


def test_vacuum_deletes_old_uncommitted_parts_and_temporary_files_only(faces: Path) -> None:
    before = read_face_shards(str(faces)).num_rows
    dry = vacuum(str(faces), dry_run=True)
    assert len(dry.deleted) == 2
    assert all(Path(f.uri.removeprefix("file://")).exists() for f in dry.deleted)
    young = vacuum(str(faces), grace_s=3 * HOUR)  # everything is younger than that
    assert young.deleted == [] and len(young.kept) == 2
    done = vacuum(str(faces))
    assert {f.path for f in done.deleted} == {f.path for f in dry.deleted}
    assert not any(Path(f.uri.removeprefix("file://")).exists() for f in done.deleted)
    assert [Path(f.path).name for f in done.left_alone] == ["part-old.parquet"]
    listing = list_shards(str(faces))
    assert [Path(f.path).name for f in listing.uncommitted] == ["part-old.parquet"]
    assert listing.temporary == () and len(listing.parts) == 3
    assert read_face_shards(str(faces)).num_rows == before  # committed data untouched


def test_vacuum_keeps_a_part_committed_after_it_listed(
    faces: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun commits the orphan between vacuum's listing and its delete: it stays."""
    import pipelines.shards as shards

    real = shards.list_shards
    calls: list[int] = []

    def list_then_rerun(uri: str, opts: dict[str, Any] | None = None) -> ShardListing:
        calls.append(1)
        if len(calls) == 2:
            with FaceShardWriter(str(faces), "rerun", crop_scale=1.3) as w:
                w.process_batch([video("d", 5)])
        return real(uri, opts)

    monkeypatch.setattr(shards, "list_shards", list_then_rerun)
    done = vacuum(str(faces))
    assert [Path(f.path).name for f in done.deleted] == ["part-dead.parquet.1234"]
    assert read_face_shards(str(faces), video_ids=["d"]).num_rows == 5


def test_cli_vacuum_says_what_it_deleted(faces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shards", "vacuum", str(faces), "--dry-run"]) == 0
    text = capsys.readouterr().out
    lines = [x for x in text.splitlines() if x.startswith("would delete file://")]
    assert len(lines) == 2 and "(uncommitted part, 2.0 h old" in text
    assert any("/_tmp/part-dead.parquet.1234 (temporary file" in x for x in lines)
    assert "left alone (not a part this layout writes)" in text
    assert "vacuum: would delete 2 file(s)" in text
    assert main(["shards", "vacuum", str(faces), "--grace", "3h"]) == 0
    assert "vacuum: deleted 0 file(s)" in capsys.readouterr().out
    assert main(["shards", "vacuum", str(faces), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dry_run"] is False and len(result["deleted"]) == 2
    assert list_shards(str(faces)).temporary == ()


def test_cli_refuses_a_bad_grace_in_one_line(
    faces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["shards", "vacuum", str(faces), "--grace", "soon"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not a duration: 'soon'" in err and len(err.strip().splitlines()) == 1


def test_an_empty_or_missing_dataset_is_zero_parts(tmp_path: Path) -> None:
    listing = list_shards(str(tmp_path / "none"))
    assert listing.parts == () and listing.runs == ()
    assert shard_stats(listing)["rows"] == 0
    assert vacuum(str(tmp_path / "none")).deleted == []


@pytest.mark.parametrize("action", ["ls", "stats", "vacuum"])
def test_cli_refuses_a_faces_path_that_names_nothing_or_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    # The library reads a missing folder as an empty data set; a typed argument that
    # names nothing is a mistake to say, not "0 parts".
    (tmp_path / "clip.mp4").write_bytes(b"x")
    for given, why in (
        (tmp_path / "none", "nothing is there"),
        (tmp_path / "clip.mp4", "it is a file"),
    ):
        assert main(["shards", action, str(given)]) == 2
        assert capsys.readouterr().err == (
            f"dfscan: error: no face shards at {given}: {why} (give a scan's OUT/faces)\n"
        )


def test_cli_refuses_an_unknown_scheme_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shards", "ls", "nosuchscheme://bucket/faces"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfscan: error: cannot open nosuchscheme://bucket/faces: ")
    assert err.endswith("Protocol not known: nosuchscheme\n") and err.count("\n") == 1
