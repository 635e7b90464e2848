"""Face shards: explicit schema, date-partitioned deterministic names, committed by record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import operators.write_face_shards as write_face_shards
from operators.read_shards import DamagedShard, ShardFaceReader, committed_parts, list_shards
from operators.shard_layout import DEFAULT_PARTITION, partition_date
from operators.write_face_shards import FaceShardWriter, commit_run, read_face_shards, shard_name
from schemas.arrow import FACE_SHARD_SCHEMA
from schemas.records import DetectorInfo, FaceCrop, VideoFaces, VideoRef, VideoStatus

# 2024-05-01 23:30 at UTC-2 is already 2024-05-02 in UTC: the partition follows UTC.
LATE_EVENING = dt.datetime(2024, 5, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
NOON = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def video(vid: str, n_faces: int, mtime: float | None = None) -> VideoFaces:
    faces = tuple(
        FaceCrop(
            i,
            i * 0.04,
            i % 2,
            (1.0, 2.0, 30.0, 40.0),
            tuple(float(x) for x in range(10)),
            0.9,
            b"\xff\xd8jpeg" + bytes([i]),
            224,
            224,
        )
        for i in range(n_faces)
    )
    status = VideoStatus.SCORED if faces else VideoStatus.NO_FACE
    return VideoFaces(
        VideoRef(vid, f"file:///{vid}.mp4", 100, mtime),
        status,
        DetectorInfo("scrfd-500m", "d" * 64),
        "uniform:32",
        faces=faces,
    )


def writer(root: Path, run_id: str = "run-1") -> FaceShardWriter:
    w = FaceShardWriter(str(root / "faces"), run_id, crop_scale=1.3)
    w.setup()
    return w


def local(uri: str | None) -> Path:
    assert uri is not None
    return Path(uri.removeprefix("file://"))


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def crash_before_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the writer dies after moving a part into place, before its record."""

    def die(*args: object) -> None:
        raise Killed("killed between the move and the record")

    monkeypatch.setattr(write_face_shards, "put_json", die)


def test_shard_has_the_explicit_schema_and_every_face(tmp_path: Path):
    out = writer(tmp_path).process_batch([video("b", 3), video("a", 2), video("c", 0)])
    assert out[2].shard_uri is None  # no faces, no shard
    assert out[0].shard_uri == out[1].shard_uri
    path = local(out[0].shard_uri)
    assert path.relative_to(tmp_path / "faces").parts[:2] == (
        f"dt={DEFAULT_PARTITION}",  # the store reported no upload time
        "detector=scrfd-500m",
    )
    assert path.name.startswith("part-")
    table = pq.read_table(path)
    assert table.schema.equals(FACE_SHARD_SCHEMA, check_metadata=True)
    assert table.schema.metadata[b"dfscan.schema_version"] == b"1"
    assert table.num_rows == 5
    assert table.column("video_id").to_pylist() == ["a", "a", "b", "b", "b"]  # sorted by video
    assert table.column("landmarks").to_pylist()[0] == [float(x) for x in range(10)]
    assert table.column("crop").to_pylist()[0].startswith(b"\xff\xd8")


def test_a_batch_is_split_by_the_utc_date_of_each_upload(tmp_path: Path):
    batch = [
        video("late", 2, LATE_EVENING.timestamp()),
        video("noon", 1, NOON.timestamp()),
        video("noon2", 1, NOON.timestamp() + 3600),
        video("unknown", 1, None),
    ]
    out = {v.ref.video_id: v.shard_uri for v in writer(tmp_path).process_batch(batch)}
    dirs = {vid: local(uri).parent.parent.name for vid, uri in out.items()}
    assert dirs == {
        "late": "dt=2024-05-02",
        "noon": "dt=2024-05-01",
        "noon2": "dt=2024-05-01",
        "unknown": f"dt={DEFAULT_PARTITION}",
    }
    assert out["noon"] == out["noon2"] and len(set(out.values())) == 3
    # Each part is named for its own videos, so the same split is named alike next time.
    assert local(out["noon"]).name == shard_name([batch[1], batch[2]], 1.3)
    assert read_face_shards(str(tmp_path / "faces")).num_rows == 5


def test_the_listing_upload_time_outranks_the_store_mtime(tmp_path: Path):
    # A manifest's uploaded_at (or a date partition's day) says when the platform got
    # the upload; the store's mtime is when the copy being read was written.
    listed = video("m", 1, NOON.timestamp())
    late = dataclasses.replace(listed.ref, uploaded_at=LATE_EVENING.timestamp())
    out = writer(tmp_path).process_batch([dataclasses.replace(listed, ref=late), video("n", 1)])
    dirs = [local(v.shard_uri).parent.parent.name for v in out]
    assert dirs == ["dt=2024-05-02", f"dt={DEFAULT_PARTITION}"]


def test_an_unusable_upload_time_goes_to_the_default_partition():
    assert partition_date(NOON.timestamp()) == "2024-05-01"
    assert partition_date(0.0) == "1970-01-01"
    for bad in (None, math.nan, 1e20, -1e20):
        assert partition_date(bad) == DEFAULT_PARTITION


def test_each_part_gets_a_commit_record_under_its_run(tmp_path: Path):
    out = writer(tmp_path, "nightly-7").process_batch([video("a", 2, NOON.timestamp())])
    part = local(out[0].shard_uri)
    record_path = tmp_path / "faces" / "_commits" / "run=nightly-7" / f"{part.stem}.json"
    record = json.loads(record_path.read_text())
    assert record["path"] == f"dt=2024-05-01/detector=scrfd-500m/{part.name}"
    assert (record["rows"], record["videos"], record["faces_per_video"]) == (2, 1, {"a": 2})
    assert record["bytes"] == part.stat().st_size > 0
    assert (record["detector"], record["dt"], record["run_id"]) == (
        "scrfd-500m",
        "2024-05-01",
        "nightly-7",
    )
    assert record["schema_version"] == 1
    assert dt.datetime.fromisoformat(record["written_at"]).tzinfo is not None
    assert not list((tmp_path / "faces" / "_tmp").iterdir())  # nothing left half-written


def test_a_run_id_cannot_place_records_outside_the_commit_directory(tmp_path: Path):
    writer(tmp_path, "../../escape/x").process_batch([video("a", 1)])
    commits = tmp_path / "faces" / "_commits"
    [record] = commits.rglob("*.json")
    assert record.parent.parent == commits and record.parent.name == "run=..%2F..%2Fescape%2Fx"
    assert [p.runs for p in committed_parts(str(tmp_path / "faces"))] == [("../../escape/x",)]


def test_same_batch_gets_the_same_name_and_rerun_does_not_duplicate(tmp_path: Path):
    batch = [video("a", 2), video("b", 1)]
    first = writer(tmp_path, "run-1").process_batch(batch)[0].shard_uri
    second = writer(tmp_path, "run-2").process_batch(list(reversed(batch)))[0].shard_uri
    assert first == second
    assert read_face_shards(str(tmp_path / "faces")).num_rows == 3
    [part] = committed_parts(str(tmp_path / "faces"))  # two records, one part
    assert part.runs == ("run-1", "run-2") and part.rows == 3
    assert shard_name(batch, 1.3) != shard_name(batch, 1.5)


def test_a_part_moved_into_place_without_its_record_is_invisible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    faces = str(tmp_path / "faces")
    writer(tmp_path, "run-1").process_batch([video("a", 2)])
    crash_before_record(monkeypatch)
    w = writer(tmp_path, "killed")
    with pytest.raises(Killed):
        w.process_batch([video("b", 3), video("c", 1)])
    [orphan] = list_shards(faces).uncommitted
    assert orphan.in_layout and local(orphan.uri).exists()  # the data is there ...
    assert set(read_face_shards(faces).column("video_id").to_pylist()) == {"a"}  # ... unread
    assert read_face_shards(faces, video_ids=["b"]).num_rows == 0
    assert [p.faces_per_video for p in committed_parts(faces)] == [{"a": 2}]

    monkeypatch.undo()  # the rerun of the same batch rewrites the same name and commits it
    rerun = writer(tmp_path, "rerun").process_batch([video("c", 1), video("b", 3)])
    assert rerun[0].shard_uri == orphan.uri
    table = read_face_shards(faces)
    assert sorted(table.column("video_id").to_pylist()) == ["a", "a", "b", "b", "b", "c"]
    assert list_shards(faces).uncommitted == ()


def test_a_video_filter_opens_only_the_parts_whose_records_list_it(tmp_path: Path):
    w = writer(tmp_path)
    [a] = w.process_batch([video("a", 2)])
    [b] = w.process_batch([video("b", 1)])
    local(b.shard_uri).write_bytes(b"not parquet any more")
    faces = str(tmp_path / "faces")
    assert read_face_shards(faces, video_ids=["a"]).column("video_id").to_pylist() == ["a", "a"]
    with pytest.raises(pa.ArrowInvalid, match="magic bytes"):  # unfiltered: b is opened
        read_face_shards(faces)
    assert a.shard_uri != b.shard_uri


def test_commit_run_summarises_the_run_and_marks_it_complete(tmp_path: Path):
    faces = str(tmp_path / "faces")
    out = writer(tmp_path, "run-1").process_batch([video("a", 2), video("b", 1, NOON.timestamp())])
    parts = {local(v.shard_uri) for v in out}
    writer(tmp_path, "run-2").process_batch([video("c", 4)])  # never finished
    run = commit_run(faces, "run-1")
    summary = json.loads((tmp_path / "faces" / "_runs" / "run-1.json").read_text())
    assert (summary["status"], summary["parts"], summary["rows"], summary["videos"]) == (
        "complete",
        2,
        3,
        2,
    )
    assert len(parts) == 2 and summary["bytes"] == sum(p.stat().st_size for p in parts)
    assert run.parts == 2 and len(summary["commits"]) == 2
    runs = {r.run_id: r for r in list_shards(faces).runs}
    assert runs["run-1"].complete and not runs["run-2"].complete
    assert (runs["run-2"].parts, runs["run-2"].rows) == (1, 4)


def test_a_record_that_names_a_path_outside_the_layout_is_refused(tmp_path: Path):
    out = writer(tmp_path).process_batch([video("a", 2)])
    [record_path] = (tmp_path / "faces" / "_commits").rglob("*.json")
    record = json.loads(record_path.read_text())
    record["path"] = "../../elsewhere/part-00.parquet"
    record_path.write_text(json.dumps(record))
    listing = list_shards(str(tmp_path / "faces"))
    assert listing.parts == () and len(listing.damaged) == 1
    assert "not a part of this layout" in listing.damaged[0]
    assert [f.uri for f in listing.uncommitted] == [out[0].shard_uri]
    assert read_face_shards(str(tmp_path / "faces")).num_rows == 0


def test_temporary_parts_are_never_read(tmp_path: Path):
    writer(tmp_path).process_batch([video("a", 2)])
    tmp = tmp_path / "faces" / "_tmp"
    tmp.mkdir(exist_ok=True)
    (tmp / "part-x.parquet.123").write_bytes(b"half a parquet file")
    table = read_face_shards(str(tmp_path / "faces"))
    assert table.num_rows == 2
    assert read_face_shards(str(tmp_path / "faces"), video_ids=["zzz"]).num_rows == 0


def test_reading_a_missing_dataset_gives_an_empty_table(tmp_path: Path):
    assert read_face_shards(str(tmp_path / "none")).num_rows == 0
    empty = read_face_shards(str(tmp_path / "none"), columns=["video_id", "__filename"])
    assert empty.column_names == ["video_id", "__filename"]


def test_a_video_committed_again_in_another_batch_is_read_once(tmp_path: Path):
    # A crash after a part's commit but before its warehouse rows: the rerun batches
    # the video with others, so it lands in a second part under another name.
    writer(tmp_path, "run-1").process_batch([video("a", 2), video("b", 1)])
    writer(tmp_path, "run-2").process_batch([video("a", 2), video("c", 3)])
    faces = str(tmp_path / "faces")
    assert len(committed_parts(faces)) == 2
    table = read_face_shards(faces, columns=["video_id", "frame_index"])
    assert table.column_names == ["video_id", "frame_index"]
    rows = sorted(zip(*table.to_pydict().values(), strict=True))
    assert rows == [("a", 0), ("a", 1), ("b", 0), ("c", 0), ("c", 1), ("c", 2)]
    # The newest part wins for the repeated video; the older keeps its other video.
    named = read_face_shards(faces, columns=["video_id", "run_id"]).to_pylist()
    assert {r["run_id"] for r in named if r["video_id"] == "a"} == {"run-2"}
    assert {r["run_id"] for r in named if r["video_id"] == "b"} == {"run-1"}


def test_the_same_video_cut_another_way_is_not_a_repeat(tmp_path: Path):
    w = FaceShardWriter(str(tmp_path / "faces"), "run-2", crop_scale=1.5)
    w.setup()
    writer(tmp_path, "run-1").process_batch([video("a", 2)])
    w.process_batch([video("a", 2)])
    table = read_face_shards(str(tmp_path / "faces"), columns=["video_id", "crop_scale"])
    assert sorted(table.column("crop_scale").to_pylist()) == pytest.approx([1.3, 1.3, 1.5, 1.5])


@pytest.mark.parametrize(
    ("name", "error"),
    [
        (b"track\xee\xeed", "footer text is not UTF-8"),
        (b"track_xd", "no column track_id"),
    ],
    # found by fuzzing, was a UnicodeDecodeError; would have read as a column of nulls
    ids=["not-utf8", "renamed"],
)
def test_a_footer_with_a_damaged_column_name_is_a_damaged_shard(
    tmp_path: Path, name: bytes, error: str
):
    out = writer(tmp_path).process_batch([video("a", 2)])
    path = local(out[0].shard_uri)
    data = path.read_bytes()
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    at = data.index(b"track_id", footer_start)  # same length: the footer still parses
    path.write_bytes(data[:at] + name + data[at + 8 :])
    with pytest.raises(DamagedShard, match=error):
        ShardFaceReader().read_part(str(out[0].shard_uri), ["a"])
    with pytest.raises(DamagedShard, match=error):
        read_face_shards(str(tmp_path / "faces"))
