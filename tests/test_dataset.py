"""``dfscan dataset build``: face shards + labels -> labelled shards with a leak-free split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from operators.write_face_shards import FaceShardWriter
from pipelines.cli import main
from pipelines.config import shared_dir
from schemas.arrow import LABELLED_FACE_SHARD_SCHEMA
from schemas.records import DetectorInfo, FaceCrop, VideoFaces, VideoRef, VideoStatus

DATA = shared_dir() / "data" / "faces" / "dfdc224"
PAIRS = 30  # fakes, each with its original: 60 labelled videos
STRANGERS = 5  # videos the label file does not know


def _rows() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rows = list(csv.DictReader((DATA / "labels.csv").open()))
    by_name = {r["videoname"]: r for r in rows}
    fakes = [r for r in rows if r["label"] == "FAKE"][:PAIRS]
    labelled = fakes + [by_name[f["original"]] for f in fakes]
    used = {r["videoname"] for r in labelled}
    strangers = [r for r in rows if r["videoname"] not in used][:STRANGERS]
    return labelled, strangers


def _video(row: dict[str, str], folder: str) -> VideoFaces:
    jpeg = (DATA / row["image"]).read_bytes()
    faces = tuple(
        FaceCrop(i, i / 25, 0, (0.0, 0.0, 224.0, 224.0), (0.0,) * 10, 0.9, jpeg, 224, 224)
        for i in range(2)  # two frames per video, so the video level aggregates
    )
    ref = VideoRef(f"sha-{row['videoname']}", f"/uploads/{folder}/{row['videoname']}", 1)
    return VideoFaces(
        ref, VideoStatus.SCORED, DetectorInfo("scrfd-500m", "d" * 64), "uniform:32", faces=faces
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scan's OUT/faces holding 65 videos of real DFDC crops, 2 faces each."""
    labelled, strangers = _rows()
    faces = tmp_path_factory.mktemp("scan") / "faces"
    writer = FaceShardWriter(str(faces), "run-1", 1.3)
    videos = [_video(r, r["label"]) for r in labelled + strangers]
    writer.process_batch(videos[:40])
    writer.process_batch(videos[40:])
    return faces


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labelled, _ = _rows()
    meta = {
        r["videoname"]: {"label": r["label"], "original": r["original"] or None, "split": "train"}
        for r in labelled
    }
    path = tmp_path_factory.mktemp("labels") / "metadata.json"
    path.write_text(json.dumps(meta))
    return path


def _build(shards: Path, out: Path, *flags: str) -> dict[str, object]:
    assert main(["dataset", "build", "--faces", str(shards), "--out", str(out), *flags]) == 0
    return json.loads((out / "dataset.json").read_text())


def _table(out: Path) -> list[dict[str, object]]:
    (part,) = (out / "faces").glob("part-*.parquet")
    table = pq.read_table(part)
    assert table.schema.equals(LABELLED_FACE_SHARD_SCHEMA, check_metadata=False)
    return table.drop_columns(["crop"]).to_pylist()


def test_dfdc_labels_build_a_split_where_no_fake_straddles_its_original(
    shards: Path, metadata: Path, tmp_path: Path
) -> None:
    manifest = _build(shards, tmp_path / "ds", "--labels", str(metadata), "--val-fraction", "0.3")
    assert manifest["videos"] == 2 * PAIRS and manifest["unlabelled_videos"] == STRANGERS
    assert manifest["faces"] == 4 * PAIRS
    rows = _table(tmp_path / "ds")
    side = {r["source_uri"].rsplit("/", 1)[-1]: r["split"] for r in rows}
    labels, _ = _rows()
    for r in labels:
        got = [x["label"] for x in rows if x["source_uri"].endswith("/" + r["videoname"])]
        assert got == [r["label"]] * 2
        if r["label"] == "FAKE":
            assert side[r["videoname"]] == side[r["original"]]  # the pair stays together
    groups = {}
    for r in rows:
        groups.setdefault(r["source_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in groups.values())
    n_val = sum(s == {"val"} for s in groups.values())
    assert n_val == round(0.3 * PAIRS)
    split = json.loads((tmp_path / "ds" / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"]) and split["test"] == []
    assert len(split["train"]) + len(split["val"]) == 2 * PAIRS


def test_a_rebuild_replaces_the_part_and_gives_the_same_split(
    shards: Path, metadata: Path, tmp_path: Path
) -> None:
    first = _build(shards, tmp_path / "ds", "--labels", str(metadata))
    again = _build(shards, tmp_path / "ds", "--labels", str(metadata))
    assert first["part"] == again["part"] and first["data_hash"] == again["data_hash"]
    assert len(list((tmp_path / "ds" / "faces").glob("part-*.parquet"))) == 1
    other = _build(shards, tmp_path / "ds2", "--labels", str(metadata), "--seed", "3")
    assert other["data_hash"] == first["data_hash"]  # same faces and labels
    a = json.loads((tmp_path / "ds" / "split.json").read_text())
    b = json.loads((tmp_path / "ds2" / "split.json").read_text())
    assert a != b  # another seed, another split


def test_csv_labels_by_uri_with_originals_group_like_dfdc_metadata(
    shards: Path, metadata: Path, tmp_path: Path
) -> None:
    labels, _ = _rows()
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "label", "original"])
        for r in labels:
            w.writerow([f"s3://bucket/x/{r['videoname']}", r["label"], r["original"]])
    _build(shards, tmp_path / "csv", "--labels", str(path))
    _build(shards, tmp_path / "dfdc", "--labels", str(metadata))
    assert (tmp_path / "csv" / "split.json").read_text() == (
        tmp_path / "dfdc" / "split.json"
    ).read_text()


def test_folder_names_label_videos_and_other_folders_are_left_out(
    shards: Path, tmp_path: Path
) -> None:
    manifest = _build(shards, tmp_path / "ds")  # no --labels: folders
    # The strangers sit in REAL/ or FAKE/ folders too, so all 65 are labelled.
    assert manifest["labels_format"] == "folders"
    assert manifest["videos"] == 2 * PAIRS + STRANGERS and manifest["unlabelled_videos"] == 0


def test_bad_label_in_csv_is_a_one_line_error(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("video_id,label\nsha-x.mp4,MAYBE\n")
    code = main(["dataset", "build", "--faces", str(shards), "--labels", str(path),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "is not REAL or FAKE" in capsys.readouterr().err


def test_train_and_eval_reuse_the_data_sets_saved_split(
    shards: Path, metadata: Path, tmp_path: Path
) -> None:
    ds = tmp_path / "ds"
    _build(shards, ds, "--labels", str(metadata))
    rows = _table(ds)
    val_faces = {f"{r['video_id']}/{r['frame_index']}/{r['track_id']}" for r in rows
                 if r["split"] == "val"}  # fmt: skip
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(ds), "--out", str(model), "--epochs", "1",
                 "--batch-size", "8", "--image-size", "48", "--num-threads", "1"]) == 0  # fmt: skip
    split = json.loads(Path(str(model) + ".split.json").read_text())
    assert set(split["val"]) == val_faces and split["layout"] == "dataset"
    assert len(split["train"]) + len(split["val"]) == len(rows)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model), "--data", str(ds), "--split", "val",
                 "--out", str(out), "--no-plots"]) == 0  # fmt: skip
    report = json.loads((out / "metrics.json").read_text())
    assert report["frame"]["n"] == len(val_faces)
    assert report["video"]["n"] == len(val_faces) // 2  # two faces per video, aggregated
