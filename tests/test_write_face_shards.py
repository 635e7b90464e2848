"""Face shards: explicit schema, deterministic names, atomic commit."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from operators.write_face_shards import FaceShardWriter, read_face_shards, shard_name
from schemas.arrow import FACE_SHARD_SCHEMA
from schemas.records import DetectorInfo, FaceCrop, VideoFaces, VideoRef, VideoStatus


def video(vid: str, n_faces: int) -> VideoFaces:
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
        VideoRef(vid, f"file:///{vid}.mp4", 100, None),
        status,
        DetectorInfo("scrfd-500m", "d" * 64),
        "uniform:32",
        faces=faces,
    )


def writer(root: Path, run_id: str = "run-1") -> FaceShardWriter:
    w = FaceShardWriter(str(root / "faces"), run_id, crop_scale=1.3)
    w.setup()
    return w


def test_shard_has_the_explicit_schema_and_every_face(tmp_path: Path):
    out = writer(tmp_path).process_batch([video("b", 3), video("a", 2), video("c", 0)])
    assert out[2].shard_uri is None  # no faces, no shard
    assert out[0].shard_uri == out[1].shard_uri
    path = out[0].shard_uri.removeprefix("file://")
    assert "/detector=scrfd-500m/part-" in path
    table = pq.read_table(path)
    assert table.schema.equals(FACE_SHARD_SCHEMA, check_metadata=True)
    assert table.schema.metadata[b"dfscan.schema_version"] == b"1"
    assert table.num_rows == 5
    assert table.column("video_id").to_pylist() == ["a", "a", "b", "b", "b"]  # sorted by video
    assert table.column("landmarks").to_pylist()[0] == [float(x) for x in range(10)]
    assert table.column("crop").to_pylist()[0].startswith(b"\xff\xd8")


def test_same_batch_gets_the_same_name_and_rerun_does_not_duplicate(tmp_path: Path):
    batch = [video("a", 2), video("b", 1)]
    first = writer(tmp_path, "run-1").process_batch(batch)[0].shard_uri
    second = writer(tmp_path, "run-2").process_batch(list(reversed(batch)))[0].shard_uri
    assert first == second
    assert read_face_shards(str(tmp_path / "faces")).num_rows == 3
    assert shard_name(batch, 1.3) != shard_name(batch, 1.5)


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
