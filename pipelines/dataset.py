"""``dfscan dataset build``: labelled face shards, split by source video, from a scan's shards.

Training reads the very crops a scan cut (same detector, crop scale, JPEG settings), so a
model never learns a preprocessing it will not see in production. The builder joins the
committed face shards of ``--faces`` with labels from one ``LabelSource``:

- ``csv``: columns ``label`` (REAL/FAKE), one key column (``video_id``, ``uri`` or
  ``filename``) and optionally ``original`` (for a fake, the key of its real video);
- ``dfdc``: a DFDC ``metadata.json`` (``{"x.mp4": {"label": "FAKE", "original": "y.mp4"}}``);
- ``folders``: the label is the name of the folder holding each video (``.../FAKE/x.mp4``).

A fake and its original share a ``source_id`` and so a side of the split; a video with
no label is left out and counted, never guessed. Output (``--out``):
``faces/part-<digest>.parquet`` (the face columns + ``label``, ``source_id``, ``split``),
``split.json`` (video ids per side) and ``dataset.json`` (what was built, from what, and
the counts). The part is written under ``_tmp`` and moved into place, so a crash never
leaves a half data set that ``dfscan train`` would read.
"""

from __future__ import annotations

import abc
import argparse
import csv
import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pipelines.config import ConfigError

SPLIT_SIDES = ("train", "val", "test")


@dataclass(frozen=True)
class VideoLabel:
    label: str  # REAL / FAKE
    source: str  # split group


def _name(uri: str) -> str:
    """The file name of a URI or path: the key DFDC and most label files use."""
    return PurePosixPath(uri.rstrip("/")).name


class LabelSource(abc.ABC):
    """Where labels come from; ``lookup`` answers per video, None = unlabelled."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None: ...


def _check_label(label: str, where: str) -> str:
    label = label.strip().upper()
    if label not in ("REAL", "FAKE"):
        raise ConfigError(f"{where}: label {label!r} is not REAL or FAKE")
    return label


class CsvLabels(LabelSource):
    kind = "csv"
    KEYS = ("video_id", "uri", "filename")

    def __init__(self, path: str) -> None:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            key = next((k for k in self.KEYS if k in fields), None)
            if key is None or "label" not in fields:
                raise ConfigError(f"{path} needs a label column and one of {', '.join(self.KEYS)}")
            self.key = key
            self.rows: dict[str, VideoLabel] = {}
            for i, row in enumerate(reader, start=2):
                k = self._norm(row[key] or "")
                label = _check_label(row["label"] or "", f"{path} line {i}")
                original = self._norm(row.get("original") or "")
                source = original if label == "FAKE" and original else k
                self.rows[k] = VideoLabel(label, source)

    def _norm(self, value: str) -> str:
        value = value.strip()
        return _name(value) if self.key in ("uri", "filename") else value

    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None:
        if self.key == "video_id":
            return self.rows.get(video_id)
        return self.rows.get(_name(source_uri))


class DfdcLabels(LabelSource):
    kind = "dfdc"

    def __init__(self, path: str) -> None:
        try:
            meta = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not JSON: {err.msg}") from None
        if not isinstance(meta, dict):
            raise ConfigError(f"{path} is not a DFDC metadata.json object")
        self.rows: dict[str, VideoLabel] = {}
        for name, entry in meta.items():
            label = _check_label(str(entry.get("label", "")), f"{path} [{name}]")
            original = _name(str(entry.get("original") or ""))
            self.rows[_name(name)] = VideoLabel(
                label, original if label == "FAKE" and original else _name(name)
            )

    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None:
        return self.rows.get(_name(source_uri))


class FolderLabels(LabelSource):
    """No pairing information: every video is its own group."""

    kind = "folders"

    def __init__(self, path: str | None = None) -> None:
        pass

    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None:
        parent = PurePosixPath(source_uri.rstrip("/")).parent.name.upper()
        if parent not in ("REAL", "FAKE"):
            return None
        return VideoLabel(parent, _name(source_uri))


LABEL_SOURCES: dict[str, type[LabelSource]] = {
    c.kind: c for c in (CsvLabels, DfdcLabels, FolderLabels)
}


def open_labels(kind: str, path: str | None) -> LabelSource:
    if kind not in LABEL_SOURCES:
        raise ConfigError(f"unknown --labels-format {kind!r}: one of {', '.join(LABEL_SOURCES)}")
    if kind != "folders":
        if not path:
            raise ConfigError(f"--labels-format {kind} needs --labels FILE")
        if not Path(path).is_file():
            raise ConfigError(f"labels file not found: {path}")
    return LABEL_SOURCES[kind](path)  # type: ignore[call-arg]


def guess_format(path: str | None) -> str:
    """csv for *.csv, dfdc for *.json, folders without a file."""
    if not path:
        return "folders"
    return "dfdc" if path.lower().endswith(".json") else "csv"


@dataclass(frozen=True)
class BuildConfig:
    faces: str  # a scan's OUT/faces
    out: str  # a local folder
    labels: str | None
    labels_format: str
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0


def assign_splits(
    groups: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """group -> train/val/test, whole groups at a time, reproducible from the seed."""
    import numpy as np

    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError("need at least two source videos to split train/val")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = max(1, round(val_fraction * len(unique)))
    n_test = round(test_fraction * len(unique))
    if n_val + n_test >= len(unique):
        raise ConfigError(
            f"{len(unique)} source videos cannot give {n_val} val + {n_test} test and a train side"
        )
    side = {}
    for rank, i in enumerate(order):
        side[unique[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return side


def build_dataset(cfg: BuildConfig) -> dict[str, Any]:
    """Join shards and labels, split by source, write the data set; return its manifest."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from operators.write_face_shards import read_face_shards
    from schemas.arrow import FACE_SHARD_SCHEMA, LABELLED_FACE_SHARD_SCHEMA

    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {cfg.test_fraction}")
    labels = open_labels(cfg.labels_format, cfg.labels)
    table = read_face_shards(cfg.faces)
    if table.num_rows == 0:
        raise ConfigError(f"no committed face shards under {cfg.faces}")
    # A face written twice (a rerun that batched its video differently) counts once:
    # the newest run's copy wins.
    table = table.sort_by([("video_id", "ascending"), ("run_id", "descending")])
    keys = [
        f"{v}/{f}/{t}"
        for v, f, t in zip(
            table.column("video_id").to_pylist(),
            table.column("frame_index").to_pylist(),
            table.column("track_id").to_pylist(),
            strict=True,
        )
    ]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    table = table.take(pa.array(sorted(first.values()), type=pa.int64()))

    videos = dict(
        zip(
            table.column("video_id").to_pylist(),
            table.column("source_uri").to_pylist(),
            strict=False,
        )
    )
    found: dict[str, VideoLabel] = {}
    unlabelled = []
    for vid, uri in sorted(videos.items()):
        hit = labels.lookup(vid, uri)
        if hit is None:
            unlabelled.append(uri)
        else:
            found[vid] = hit
    if not found:
        raise ConfigError(f"no video under {cfg.faces} has a label in {cfg.labels or 'folders'}")
    side = assign_splits(
        [v.source for v in found.values()], cfg.val_fraction, cfg.test_fraction, cfg.seed
    )
    keep = pc.is_in(table.column("video_id"), value_set=pa.array(sorted(found)))
    table = table.filter(keep)
    vids = table.column("video_id").to_pylist()
    columns = {name: table.column(name) for name in FACE_SHARD_SCHEMA.names}
    columns["label"] = pa.array([found[v].label for v in vids], pa.string())
    columns["source_id"] = pa.array([found[v].source for v in vids], pa.string())
    columns["split"] = pa.array([side[found[v].source] for v in vids], pa.string())
    out_table = pa.Table.from_pydict(columns, schema=LABELLED_FACE_SHARD_SCHEMA)

    out = Path(cfg.out)
    # The data set's identity: every face's key, label, group and crop bytes.
    digest = hashlib.sha256()
    rows = zip(
        vids,
        table.column("frame_index").to_pylist(),
        table.column("track_id").to_pylist(),
        table.column("crop").to_pylist(),
        strict=True,
    )
    for vid, frame, track, crop in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        crop_sha = hashlib.sha256(crop).hexdigest()
        line = f"{vid}/{frame}/{track}\t{found[vid].label}\t{found[vid].source}\t{crop_sha}\n"
        digest.update(line.encode())
    tag = digest.hexdigest()
    # The part's name also carries the split, so two splits of one data set never share it.
    split_tag = f"{tag}|{cfg.seed}|{cfg.val_fraction:g}|{cfg.test_fraction:g}"
    part_digest = hashlib.sha256(split_tag.encode()).hexdigest()
    (out / "faces" / "_tmp").mkdir(parents=True, exist_ok=True)
    final = out / "faces" / f"part-{part_digest[:24]}.parquet"
    tmp = out / "faces" / "_tmp" / f"{final.name}.{uuid.uuid4().hex}"
    pq.write_table(out_table, tmp, row_group_size=1024, compression="zstd")
    for old in (out / "faces").glob("part-*.parquet"):
        if old != final:
            old.unlink()  # a rebuild replaces the data set, it does not add to it
    tmp.replace(final)

    per_side: dict[str, list[str]] = {s: [] for s in SPLIT_SIDES}
    for vid in sorted(found):
        per_side[side[found[vid].source]].append(vid)
    (out / "split.json").write_text(json.dumps(per_side, indent=1))
    counts = Counter((side[found[v].source], found[v].label) for v in vids)
    manifest = {
        "schema": "labelled_face_shard",
        "schema_version": LABELLED_FACE_SHARD_SCHEMA.metadata[b"dfscan.schema_version"].decode(),
        "faces_from": cfg.faces,
        "labels": cfg.labels,
        "labels_format": cfg.labels_format,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "group": "source video: a fake's original, a real video itself",
        "videos": len(found),
        "faces": out_table.num_rows,
        "unlabelled_videos": len(unlabelled),
        "faces_by_split_label": {f"{s}/{lab}": n for (s, lab), n in sorted(counts.items())},
        "videos_by_split": {s: len(v) for s, v in per_side.items()},
        "data_hash": tag,
        "built_at": time.time(),
        "part": final.name,
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ---------------------------------------------------------------- command line
def register(sub: Any) -> None:
    p = sub.add_parser("dataset", help="build labelled training data from face shards")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    b = dsub.add_parser("build", help="face shards + labels -> labelled shards with a split")
    b.add_argument("--faces", required=True, help="face shards URI (a scan's OUT/faces)")
    b.add_argument("--labels", help="labels CSV or DFDC metadata.json (none: folder names)")
    b.add_argument(
        "--labels-format",
        choices=sorted(LABEL_SOURCES),
        help="default: csv for .csv, dfdc for .json, folders without --labels",
    )
    b.add_argument("--out", required=True, help="folder to write the data set to")
    b.add_argument("--val-fraction", type=float, default=0.2)
    b.add_argument("--test-fraction", type=float, default=0.0)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=run_build_command)


def run_build_command(args: argparse.Namespace) -> int:
    cfg = BuildConfig(
        faces=args.faces,
        out=args.out,
        labels=args.labels,
        labels_format=args.labels_format or guess_format(args.labels),
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    m = build_dataset(cfg)
    print(
        f"{m['videos']} labelled videos ({m['unlabelled_videos']} without a label, left out), "
        f"{m['faces']} faces; videos per split {m['videos_by_split']}"
    )
    print(f"wrote {cfg.out}/dataset.json, split.json and faces/{m['part']}")
    return 0
