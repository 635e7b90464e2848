"""``dfscan dataset build``: face shards + labels -> labelled shards with a leak-free split."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from operators.write_face_shards import FaceShardWriter
from pipelines.cli import build_parser, main
from pipelines.config import ConfigError, shared_dir
from pipelines.dataset import fixed_sides, group_videos
from pipelines.label_sources import VideoLabel, parse_ffpp
from pipelines.labelled_data import face_key, open_faces
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


def _table(out: Path) -> list[dict[str, Any]]:
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
    groups: dict[str, set[str]] = {}
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


# ---------------------------------------------------------------- identity groups
def test_identity_links_chain_into_one_group_whatever_the_order() -> None:
    labels = {
        "v1": VideoLabel("REAL", "v1", ("a", "b")),
        "v2": VideoLabel("REAL", "v2", ("b", "c")),  # b links v1 and v2, c links v2 and v3
        "v3": VideoLabel("FAKE", "v4", ("c",)),  # made from v4: its original's group too
        "v4": VideoLabel("REAL", "v4"),
        "v5": VideoLabel("REAL", "v5", ("d",)),
        "v6": VideoLabel("FAKE", "v6"),
    }
    group = group_videos(labels)
    assert group["v1"] == group["v2"] == group["v3"] == group["v4"]
    assert len({group["v1"], group["v5"], group["v6"]}) == 3
    again = group_videos(dict(reversed(list(labels.items()))))
    assert again == group  # names come from the links, not from the order seen


def test_split_files_that_cut_a_group_in_two_are_an_error() -> None:
    found = {
        "x": VideoLabel("REAL", "x", ("p",), split="train"),
        "y": VideoLabel("FAKE", "y", ("p", "q"), split="val"),
    }
    with pytest.raises(ConfigError, match="on train and val"):
        fixed_sides(found, group_videos(found))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_csv_identities_keep_every_person_and_source_on_one_side(
    shards: Path, tmp_path: Path, seed: int
) -> None:
    labelled, _ = _rows()
    fakes = [r for r in labelled if r["label"] == "FAKE"]
    person = {f["original"]: f"p{i}" for i, f in enumerate(fakes)}
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label", "original", "identity"])
        for i, fake in enumerate(fakes):
            # Every third fake also shows the next pair's person: pairs i and i+1 join.
            people = [f"p{i}"] + ([f"p{i + 1}"] if i % 3 == 0 and i + 1 < len(fakes) else [])
            w.writerow([fake["videoname"], "FAKE", fake["original"], ";".join(people)])
            w.writerow([fake["original"], "REAL", "", person[fake["original"]]])
    joins = len([i for i in range(0, PAIRS, 3) if i + 1 < PAIRS])
    manifest = _build(
        shards, tmp_path / "ds", "--labels", str(path), "--seed", str(seed),
        "--val-fraction", "0.3", "--test-fraction", "0.2",
    )  # fmt: skip
    assert manifest["groups"] == PAIRS - joins
    people_of = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            people_of[r["filename"]] = r["identity"].split(";")
    sides: dict[str, set[str]] = {}
    for r in _table(tmp_path / "ds"):
        name = r["source_uri"].rsplit("/", 1)[-1]
        for p in people_of[name]:
            sides.setdefault(f"person {p}", set()).add(r["split"])
        sides.setdefault(f"source {r['source_id']}", set()).add(r["split"])
    assert len(sides) == len(fakes) + PAIRS  # every person and every source was seen
    assert {k: v for k, v in sides.items() if len(v) > 1} == {}
    assert {s for v in sides.values() for s in v} == {"train", "val", "test"}


def test_a_version_1_data_set_still_reads_with_its_source_as_group(
    shards: Path, metadata: Path, tmp_path: Path
) -> None:
    ds = tmp_path / "ds"
    _build(shards, ds, "--labels", str(metadata))
    (part,) = (ds / "faces").glob("part-*.parquet")
    v1 = pq.read_table(part).drop_columns(["group_id", "method"])
    pq.write_table(v1, part)
    faces = open_faces(ds).faces
    by_key = {
        face_key(r["video_id"], r["frame_index"], r["track_id"]): r["source_id"]
        for r in v1.drop_columns(["crop"]).to_pylist()
    }
    assert len(faces) == len(by_key)
    assert all(f.source == by_key[f.key] for f in faces)


# ---------------------------------------------------------------- FaceForensics++ from videos
REAL = shared_dir() / "data" / "videos" / "real"
# FF++ path -> (shared video it links to, side in the split files or None for no pair).
FFPP_VIDEOS = {
    "original_sequences/youtube/c23/videos/000.mp4": ("d18", "train"),
    "original_sequences/youtube/c23/videos/003.mp4": ("d19", "train"),
    "original_sequences/youtube/c23/videos/071.mp4": ("d20", "val"),
    "original_sequences/youtube/c23/videos/054.mp4": ("d11", "val"),
    "original_sequences/youtube/c23/videos/999.mp4": ("d12", None),
    "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4": ("d14", "train"),
    "manipulated_sequences/Deepfakes/c23/videos/003_000.mp4": ("d10", "train"),
    "manipulated_sequences/Face2Face/c23/videos/071_054.mp4": ("d6", "val"),
    "manipulated_sequences/FaceSwap/c23/videos/054_071.mp4": ("d9", "val"),
}
FFPP_OTHER_COMPRESSION = "original_sequences/youtube/c40/videos/000.mp4"
FFPP_CORRUPT = "manipulated_sequences/NeuralTextures/c23/videos/003_000.mp4"
FFPP_MASK = "manipulated_sequences/Deepfakes/masks/videos/000_003.mp4"
FFPP_SPLITS = {"train": [["000", "003"]], "val": [["071", "054"]], "test": []}


def _expected(rel: str) -> tuple[str, str | None, set[str]]:
    """(label, method, people) read off an FF++ path the way the layout defines them."""
    top, method, _, _, name = rel.split("/")
    people = set(name.removesuffix(".mp4").split("_"))
    if top == "original_sequences":
        return "REAL", None, people
    return "FAKE", method, people


def _rel(uri: str, root: Path) -> str:
    return uri.split(str(root) + "/", 1)[1]


@pytest.fixture(scope="module")
def ffpp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FF++ tree: real talking-head videos under FF++ names, the official split
    files, a c40 copy, a truncated fake, a mask video and an original in no pair."""
    root = tmp_path_factory.mktemp("ffpp")
    for rel, (video, _) in {**FFPP_VIDEOS, FFPP_OTHER_COMPRESSION: ("d0", None)}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(REAL / f"talking_head_{video}.mp4")
    for rel, data in (
        (FFPP_CORRUPT, (REAL / "talking_head_d13.mp4").read_bytes()[:20_000]),
        (FFPP_MASK, b"not a face video"),
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "splits").mkdir()
    for side, pairs in FFPP_SPLITS.items():
        (root / "splits" / f"{side}.json").write_text(json.dumps(pairs))
    return root


def _build_videos(root: Path, out: Path, *flags: str) -> dict[str, Any]:
    argv = ["dataset", "build", "--videos", str(root), "--out", str(out),
            "--frames", "uniform:4", "--compression", "c23", "--no-progress", *flags]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "dataset.json").read_text())


@pytest.fixture(scope="module")
def ffpp_built(ffpp_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ffpp_ds")
    _build_videos(ffpp_root, out)  # FF++ found by its folders: no --labels needed
    return out


@pytest.mark.slow
def test_videos_of_the_ffpp_layout_become_labelled_faces_with_their_method(
    ffpp_root: Path, ffpp_built: Path
) -> None:
    manifest = json.loads((ffpp_built / "dataset.json").read_text())
    assert manifest["labels_format"] == "ffpp" and manifest["schema_version"] == "2"
    rows = _table(ffpp_built)
    seen: dict[str, int] = {}
    for r in rows:
        rel = _rel(r["source_uri"], ffpp_root)
        label, method, _ = _expected(rel)
        assert (r["label"], r["method"]) == (label, method)
        seen[rel] = seen.get(rel, 0) + 1
    paired = {rel for rel, (_, side) in FFPP_VIDEOS.items() if side}
    assert set(seen) == paired  # every paired video has faces; nothing else got in
    assert manifest["videos"] == len(paired) and manifest["faces"] == len(rows)
    assert manifest["videos_by_method"] == dict(
        sorted(Counter(_expected(rel)[1] for rel in paired if _expected(rel)[1]).items())
    )
    # Crops are cut like a scan's: 224 px JPEGs from the named detector and sampling.
    assert {(r["crop_width"], r["sampling"], r["detector"]) for r in rows} == {
        (224, "uniform:4", "scrfd-500m")
    }


@pytest.mark.slow
def test_the_split_files_decide_each_side_and_unpaired_videos_are_reported(
    ffpp_root: Path, ffpp_built: Path
) -> None:
    manifest = json.loads((ffpp_built / "dataset.json").read_text())
    for r in _table(ffpp_built):
        assert r["split"] == FFPP_VIDEOS[_rel(r["source_uri"], ffpp_root)][1]
    unpaired = [rel for rel, (_, side) in FFPP_VIDEOS.items() if side is None]
    assert [_rel(u, ffpp_root) for u in manifest["not_in_split_files"]] == unpaired
    assert manifest["split_from"] == f"split files {ffpp_root}/splits"
    split = json.loads((ffpp_built / "split.json").read_text())
    assert set(split["group"]) == {v for s in ("train", "val", "test") for v in split[s]}
    x = manifest["extraction"]
    # The c40 copy, the mask and the three split files are not videos of the c23 layout;
    # the unpaired original is listed but never decoded.
    assert x["files_not_in_layout"] == 5
    assert x["decoded"] == len(FFPP_VIDEOS) - len(unpaired) + 1  # + the corrupt fake


@pytest.mark.slow
def test_a_video_that_yields_no_face_is_counted_with_its_status(
    ffpp_root: Path, ffpp_built: Path
) -> None:
    manifest = json.loads((ffpp_built / "dataset.json").read_text())
    (bad,) = manifest["without_faces"]
    assert _rel(bad["uri"], ffpp_root) == FFPP_CORRUPT
    assert bad["status"] == "decode_error" and bad["error"]
    assert manifest["extraction"]["decoded_without_faces_by_status"] == {"decode_error": 1}


@pytest.mark.slow
def test_no_person_and_no_source_video_of_ffpp_sits_on_two_sides(
    ffpp_root: Path, ffpp_built: Path
) -> None:
    sides: dict[str, set[str]] = {}
    for r in _table(ffpp_built):
        for person in _expected(_rel(r["source_uri"], ffpp_root))[2]:
            sides.setdefault(f"person {person}", set()).add(r["split"])
        sides.setdefault(f"source {r['source_id']}", set()).add(r["split"])
        sides.setdefault(f"group {r['group_id']}", set()).add(r["split"])
    assert {k: v for k, v in sides.items() if len(v) > 1} == {}
    assert {s for v in sides.values() for s in v} == {"train", "val"}


@pytest.mark.slow
def test_a_rerun_decodes_only_what_has_no_committed_faces(
    ffpp_root: Path, ffpp_built: Path, tmp_path: Path
) -> None:
    first = json.loads((ffpp_built / "dataset.json").read_text())
    again = _build_videos(
        ffpp_root, tmp_path / "again", "--faces-out", first["extraction"]["faces_out"]
    )
    assert again["extraction"]["already_extracted"] == first["videos"]
    assert again["extraction"]["decoded"] == 1  # the corrupt fake: it has no faces to find
    assert again["data_hash"] == first["data_hash"]


@pytest.mark.slow
def test_the_beam_runner_builds_the_same_data_set(
    ffpp_root: Path, ffpp_built: Path, tmp_path: Path
) -> None:
    local = json.loads((ffpp_built / "dataset.json").read_text())
    beam = _build_videos(ffpp_root, tmp_path / "beam", "--runner", "beam")
    assert beam["extraction"]["runner"] == "beam"
    assert beam["data_hash"] == local["data_hash"] and beam["part"] == local["part"]
    assert beam["without_faces"][0]["status"] == "decode_error"


@pytest.mark.slow
def test_train_uses_the_ffpp_data_sets_split(ffpp_built: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(ffpp_built), "--out", str(model), "--epochs", "1",
                 "--batch-size", "8", "--image-size", "48", "--num-threads", "1"]) == 0  # fmt: skip
    split = json.loads(Path(str(model) + ".split.json").read_text())
    rows = _table(ffpp_built)
    val = {face_key(r["video_id"], r["frame_index"], r["track_id"]) for r in rows
           if r["split"] == "val"}  # fmt: skip
    assert set(split["val"]) == val and len(split["train"]) == len(rows) - len(val)


# ---------------------------------------------------------------- command line
def _split_dir(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "splits"
    d.mkdir()
    for side, text in files.items():
        (d / f"{side}.json").write_text(text)
    return d


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("both sources", "not allowed with argument"),
        ("no source", "one of the arguments --faces --videos is required"),
        ("split files for csv", "are for --labels-format ffpp"),
        ("split file not pairs", "is not a list of id pairs"),
        ("id on two sides", "split files put id 003 in both train.json and val.json"),
        ("missing videos", "does not exist"),
        ("bad frames", "unknown --frames"),
        ("faces-out with faces", "--faces-out is for --videos"),
        ("faces-out inside the data set", "inside OUT/faces"),
        ("unknown runner", "unknown --runner"),
    ],
)
def test_bad_build_arguments_are_one_line_and_exit_2(
    case: str,
    expected: str,
    shards: Path,
    ffpp_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = str(tmp_path / "o")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\nx.mp4,REAL\n")
    videos = ["--videos", str(ffpp_root)]
    argv: dict[str, Callable[[], list[str]]] = {
        "both sources": lambda: ["--faces", str(shards), *videos],
        "no source": lambda: [],
        "split files for csv": lambda: ["--faces", str(shards), "--labels", str(labels),
                                        "--split-files", str(_split_dir(tmp_path, train="[]"))],
        "split file not pairs": lambda: [*videos, "--split-files",
                                         str(_split_dir(tmp_path, train='[["000"]]'))],
        "id on two sides": lambda: [*videos, "--split-files", str(_split_dir(
            tmp_path, train='[["000", "003"]]', val='[["003", "071"]]'))],
        "missing videos": lambda: ["--videos", str(tmp_path / "nowhere")],
        "bad frames": lambda: [*videos, "--frames", "every:2"],
        "faces-out with faces": lambda: ["--faces", str(shards), "--faces-out",
                                         str(tmp_path / "f")],
        "faces-out inside the data set": lambda: [*videos, "--faces-out", f"{out}/faces/x"],
        "unknown runner": lambda: [*videos, "--runner", "spark"],
    }  # fmt: skip
    args = argv[case]()
    code: int | str | None
    try:
        code = main(["dataset", "build", "--out", out, *args])
    except SystemExit as exc:  # argparse's own usage errors exit from parse_args
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dfscan: error:") and err.count("\n") == 1
    assert expected in err
    assert not (tmp_path / "o" / "dataset.json").exists()


def test_extraction_flags_default_as_the_scans_do(tmp_path: Path) -> None:
    parser = build_parser()
    build = vars(parser.parse_args(["dataset", "build", "--videos", "v", "--out", "o"]))
    scan = vars(parser.parse_args(["scan", "v"]))
    # --out names different things; scan takes its crop scale from the checkpoint.
    shared = set(build) & set(scan) - {"func", "command", "out", "crop_scale"}
    assert {"frames", "detector", "det_size", "det_threshold", "timeout", "max_bytes",
            "max_pixels", "codecs", "runner"} <= shared  # fmt: skip
    assert {k: build[k] for k in shared} == {k: scan[k] for k in shared}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("original_sequences/youtube/c23/videos/000.mp4", ("REAL", "youtube/000", ("000",))),
        (
            "manipulated_sequences/Deepfakes/raw/videos/000_003.mp4",
            ("FAKE", "youtube/000", ("000", "003")),
        ),
        (
            "manipulated_sequences/DeepFakeDetection/c40/videos/01_02__walking__YVGY8LOK.mp4",
            ("FAKE", "actors/01__walking", ("01", "02")),
        ),
        (
            "original_sequences/actors/c40/videos/01__walking.mp4",
            ("REAL", "actors/01__walking", ("01",)),
        ),
        ("manipulated_sequences/Deepfakes/masks/videos/000_003.mp4", None),
        ("original_sequences/youtube/c23/videos/000_003.mp4", None),  # an original has one id
        ("manipulated_sequences/Deepfakes/c23/videos/000.mp4", None),  # a fake has two
        ("splits/train.json", None),
    ],
)
def test_ffpp_paths_give_label_source_video_and_people(
    path: str, expected: tuple[str, str, tuple[str, ...]] | None
) -> None:
    video = parse_ffpp(f"s3://bucket/ffpp/{path}")
    got = None if video is None else ("REAL" if video.real else "FAKE", video.source, video.ids)
    assert got == expected
