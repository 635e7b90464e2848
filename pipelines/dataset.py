"""``dfscan dataset build``: labelled face shards with a leak-free saved split.

Training reads the very crops a scan cut (same detector, crop scale, JPEG settings), so a
model never learns a preprocessing it will not see in production. Faces come from:

- ``--faces URI``: the committed face shards of earlier scans; or
- ``--videos INPUT`` (a folder or prefix, one video, or a manifest, as for ``dfscan
  scan``): the scan's own head (hash -> decode+detect+crop+track -> face shards, from
  ``pipelines.graph.build_extraction_operators``) runs on the chosen engine and commits
  shards under ``--faces-out`` (default ``OUT/scan/faces``). Nothing is scored and no
  warehouse is written. Only labelled videos are decoded; one that yields no face
  (``no_face``, ``decode_error``, ...) is counted by status, with its error, in
  ``dataset.json``. A rerun skips videos whose faces are committed with the same
  sampling, detector and crop settings (``--rescan`` decodes them again).

Labels come from one ``LabelSource`` (``pipelines/label_sources.py``): a CSV (with
optional ``original`` and ``identity`` columns), a DFDC ``metadata.json``, folder names,
or the FaceForensics++ layout with its official split files (``--split-files`` or
``ROOT/splits``). FF++ is chosen by itself when ``--labels`` is a folder or INPUT is an
FF++ root (it holds ``original_sequences/`` and ``manipulated_sequences/``);
``--compression c23`` keeps one compression.

Splits are by group, never by frame. A group is a connected component over source videos
and identities: a fake joins its original, an FF++ fake ``000_003`` joins people 000 and
003, a CSV identity joins every video showing that person, so no person and no source
video sits on two sides. Groups are drawn to sides at random (``--seed``), or, with FF++
split files, the files decide each video's side and a group they would cut in two is an
error. A video with no label, or in no pair of the split files, is left out and counted.

Output (``--out``): ``faces/part-<digest>.parquet`` (the face columns + ``label``,
``source_id``, ``split``, ``group_id``, ``method``), ``split.json`` (video ids per side
and each video's group) and ``dataset.json`` (what was built, from what, and the
counts). The part is written under ``_tmp`` and moved into place, so a crash never
leaves a half data set that ``dfscan train`` would read.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from operators.base import Operator, Resources
from pipelines.config import (
    ConfigError,
    CropConfig,
    EngineConfig,
    LimitsConfig,
    SamplingConfig,
    ScanConfig,
)
from pipelines.detector_cli import add_detector_arguments, detector_from_args
from pipelines.label_sources import (
    FFPP_COMPRESSIONS,
    LABEL_SOURCES,
    SPLIT_SIDES,
    LabelOptions,
    LabelSource,
    VideoLabel,
    guess_format,
    is_ffpp_root,
    open_labels,
)
from pipelines.limits_cli import _positive, add_limit_arguments, limits_from_args

if TYPE_CHECKING:
    import pyarrow as pa

    from schemas.records import VideoFaces, VideoRef

DEFAULT_CROP_SIZE = 224  # what the shared DFDC crops use; training resizes to its input
DEFAULT_CROP_SCALE = 1.3  # the FaceForensics++ convention, as the scan's default


def group_videos(labels: Mapping[str, VideoLabel]) -> dict[str, str]:
    """video -> its split group: the connected component of its source video in the
    graph that links each source video to the identities of the videos made from it.

    A chain (a-b in one video, b-c in another) is one group. A group is named by its
    smallest node, so the same links give the same names in any order.
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    index: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for lab in labels.values():
        src = index.setdefault(f"video:{lab.source}", len(index))
        rows.append(src)
        cols.append(src)  # a source without identities is a component of its own
        for person in lab.identities:
            rows.append(src)
            cols.append(index.setdefault(f"identity:{person}", len(index)))
    if not index:
        return {}
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(index), len(index)))
    _, component = connected_components(graph, directed=False)
    names: dict[int, str] = {}
    for node, i in sorted(index.items()):
        names.setdefault(int(component[i]), node)  # sorted: the first is the smallest
    return {vid: names[int(component[index[f"video:{lab.source}"]])] for vid, lab in labels.items()}


def assign_splits(
    groups: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """group -> train/val/test, whole groups at a time, reproducible from the seed."""
    import numpy as np

    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError("need at least two split groups (source videos) to split train/val")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = max(1, round(val_fraction * len(unique)))
    n_test = round(test_fraction * len(unique))
    if n_val + n_test >= len(unique):
        raise ConfigError(
            f"{len(unique)} split groups cannot give {n_val} val + {n_test} test and a train side"
        )
    side = {}
    for rank, i in enumerate(order):
        side[unique[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return side


def fixed_sides(found: Mapping[str, VideoLabel], group: Mapping[str, str]) -> dict[str, str]:
    """group -> the side the labels fix for its videos; a group they put on two sides
    (a person or source video in train and in val) is a ConfigError."""
    sides: dict[str, set[str]] = {}
    for vid, lab in found.items():
        if lab.split is None:
            raise RuntimeError(f"video {vid} has no fixed side")  # filtered out before
        sides.setdefault(group[vid], set()).add(lab.split)
    cut = sorted((g, s) for g, s in sides.items() if len(s) > 1)
    if cut:
        g, s = cut[0]
        raise ConfigError(
            f"the split files put group {g} (videos sharing a source video or a person) on"
            f" {' and '.join(sorted(s))}; {len(cut)} group(s) cut in two"
        )
    return {g: next(iter(s)) for g, s in sides.items()}


# ---------------------------------------------------------------- extraction (--videos)
@dataclass(frozen=True)
class ExtractedVideo:
    """What the driver keeps of one extracted video: its outcome, not its crops."""

    video_id: str
    uri: str
    status: str  # the scan's VideoStatus value ("scored": faces were found)
    error: str | None
    faces: int
    shard_uri: str | None

    @classmethod
    def of(cls, video: VideoFaces) -> ExtractedVideo:
        from schemas.records import VideoStatus

        return cls(
            video.ref.video_id,
            video.ref.uri,
            VideoStatus(video.status).value,
            video.error,
            len(video.faces),
            video.shard_uri,
        )


class ExtractionOutcome(Operator["VideoFaces", ExtractedVideo]):
    """Last stage of the extraction list: drops the crops (they are committed in the
    shards) so engines do not ship them back to the driver."""

    name = "extraction_outcome"

    @property
    def resources(self) -> Resources:
        return Resources(cpus=0.1, batch_size=64)  # a few field copies per video

    def process_batch(self, items: list[VideoFaces]) -> list[ExtractedVideo]:
        return [ExtractedVideo.of(v) for v in items]


def _extracted_record(record: Any) -> dict[str, Any]:
    # Beam routes videos that failed to decode around the later stages (dead letters),
    # so they reach the end of the graph still as VideoFaces.
    if not isinstance(record, ExtractedVideo):
        record = ExtractedVideo.of(record)
    return dataclasses.asdict(record)


def _extracted_from_record(d: Mapping[str, Any]) -> ExtractedVideo:
    return ExtractedVideo(**d)


def register_beam_result() -> None:
    """Tell the Beam runner how this list's last records travel back to the driver
    (it hands results back as Parquet with a schema, chosen by the last operator)."""
    from pipelines import beam_runner
    from schemas.arrow import EXTRACTION_OUTCOME_SCHEMA

    beam_runner.RESULT_CODECS[ExtractionOutcome] = beam_runner.ResultCodec(
        EXTRACTION_OUTCOME_SCHEMA, _extracted_record, _extracted_from_record
    )


def _same_settings(table: pa.Table, cfg: ScanConfig) -> pa.Table:
    """The face rows cut with ``cfg``'s sampling, detector and crop (scale and size)."""
    import pyarrow.compute as pc

    keep = pc.and_(
        pc.and_(
            pc.equal(table.column("sampling"), str(cfg.sampling)),
            pc.equal(table.column("detector"), cfg.detector.name),
        ),
        pc.and_(
            pc.less(pc.abs(pc.subtract(table.column("crop_scale"), cfg.crop_scale)), 1e-6),
            pc.equal(table.column("crop_width"), cfg.crop.size),
        ),
    )
    return table.filter(keep)


@dataclass
class Extraction:
    """What ``--videos`` did before the labels join: the videos to read and the counts."""

    video_ids: list[str]  # labelled videos whose committed faces make the data set
    unlabelled: list[str] = field(default_factory=list)  # URIs
    not_in_split: list[str] = field(default_factory=list)  # URIs
    without_faces: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def extract_videos(
    cfg: ScanConfig,
    faces_uri: str,
    labels: LabelSource,
    on_listed: Callable[[int], None] | None = None,
    on_video: Callable[[ExtractedVideo], None] | None = None,
) -> Extraction:
    """List, hash, keep the labelled videos, and run the scan's decode+detect+shards on
    the ones whose faces are not committed yet."""
    from operators.list_videos import list_videos
    from operators.metrics import ScanMetrics
    from operators.read_shards import read_face_shards
    from operators.write_face_shards import commit_run
    from pipelines.graph import build_extraction_operators
    from pipelines.scan import RUNNERS

    opts = cfg.storage_options
    files = list(list_videos(cfg.input_uri, opts, cfg.limits.allow_prefixes))
    chosen = [f for f in files if labels.selects(f.uri)]
    if not chosen:
        raise ConfigError(
            f"none of the {len(files)} files under {cfg.input_uri} is a video of the"
            f" {labels.kind} layout"
        )
    hasher, *operators = build_extraction_operators(cfg, faces_uri)
    runner = RUNNERS[cfg.engine.name](cfg.engine)
    if runner.name == "beam":
        register_beam_result()
    metrics = ScanMetrics()
    refs: list[VideoRef] = sorted(runner.run(chosen, [hasher], metrics), key=lambda r: r.uri)
    first: dict[str, VideoRef] = {}
    for ref in refs:
        first.setdefault(ref.video_id, ref)  # same bytes under two names: decoded once
    out = Extraction(video_ids=[])
    wanted: list[VideoRef] = []
    for ref in first.values():
        hit = labels.lookup(ref.video_id, ref.uri)
        if hit is None:
            out.unlabelled.append(ref.uri)
        elif labels.fixed_split and hit.split is None:
            out.not_in_split.append(ref.uri)
        else:
            wanted.append(ref)
    ids = [r.video_id for r in wanted]
    done: set[str] = set()
    if not cfg.rescan and ids:
        index = read_face_shards(
            faces_uri,
            opts,
            columns=["video_id", "sampling", "detector", "crop_scale", "crop_width"],
            video_ids=ids,
        )
        done = set(_same_settings(index, cfg).column("video_id").to_pylist())
    todo: list[Any] = [r for r in wanted if r.video_id not in done]
    if on_listed:
        on_listed(len(todo))
    statuses: Counter[str] = Counter()
    for row in runner.run(todo, [*operators, ExtractionOutcome()], metrics) if todo else ():
        statuses[row.status] += 1
        if row.faces == 0:
            out.without_faces.append(
                {"uri": row.uri, "video_id": row.video_id, "status": row.status, "error": row.error}
            )
        if on_video:
            on_video(row)
    if todo:
        # Every engine has committed its parts by now: the run's summary marks it
        # complete in the face-shard dataset, as a scan's does.
        commit_run(faces_uri, cfg.run_id, opts)
    out.video_ids = ids
    out.report = {
        "videos_from": cfg.input_uri,
        "faces_out": faces_uri,
        "runner": runner.name,
        "run_id": cfg.run_id,
        "sampling": str(cfg.sampling),
        "detector": cfg.detector.name,
        "det_size": cfg.detector.det_size,
        "det_threshold": cfg.detector.score_threshold,
        "crop_scale": cfg.crop_scale,
        "crop_size": cfg.crop.size,
        "files_listed": len(files),
        "files_not_in_layout": len(files) - len(chosen),
        "duplicate_uris": len(refs) - len(first),
        "already_extracted": len(done),
        "decoded": len(todo),
        "decoded_with_faces": sum(n for s, n in statuses.items() if s == "scored"),
        "decoded_without_faces_by_status": {
            s: n for s, n in sorted(statuses.items()) if s != "scored"
        },
    }
    return out


# ---------------------------------------------------------------- build
@dataclass(frozen=True)
class BuildConfig:
    faces: str  # face shards: --faces, or where --videos commits them
    out: str  # a local folder
    labels: str | None
    labels_format: str
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    split_files: str | None = None  # FF++ official split files
    compression: str | None = None  # FF++: only this compression
    storage_options: dict[str, Any] = field(default_factory=dict)
    # --videos: the scan's extraction settings (its head runs first); None: --faces as is.
    extract: ScanConfig | None = None


def build_dataset(
    cfg: BuildConfig,
    on_listed: Callable[[int], None] | None = None,
    on_video: Callable[[ExtractedVideo], None] | None = None,
) -> dict[str, Any]:
    """(Extract,) join shards and labels, split by group, write the data set; return
    its manifest."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from operators.read_shards import read_face_shards
    from schemas.arrow import FACE_SHARD_SCHEMA, LABELLED_FACE_SHARD_SCHEMA

    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {cfg.test_fraction}")
    options = LabelOptions(cfg.split_files, cfg.compression, cfg.storage_options)
    labels = open_labels(cfg.labels_format, cfg.labels, options)
    extraction: Extraction | None = None
    if cfg.extract is not None:
        extraction = extract_videos(cfg.extract, cfg.faces, labels, on_listed, on_video)
        table = read_face_shards(cfg.faces, cfg.storage_options, video_ids=extraction.video_ids)
        table = _same_settings(table, cfg.extract)
        if table.num_rows == 0:
            raise ConfigError(
                f"no face in the {len(extraction.video_ids)} labelled videos under"
                f" {cfg.extract.input_uri} ({len(extraction.unlabelled)} without a label,"
                f" {len(extraction.not_in_split)} in no split pair)"
            )
    else:
        table = read_face_shards(cfg.faces, cfg.storage_options)
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
    unlabelled = list(extraction.unlabelled) if extraction else []
    not_in_split = list(extraction.not_in_split) if extraction else []
    not_in_layout = 0
    for vid, uri in sorted(videos.items()):
        if not labels.selects(uri):
            not_in_layout += 1
            continue
        hit = labels.lookup(vid, uri)
        if hit is None:
            unlabelled.append(uri)
        elif labels.fixed_split and hit.split is None:
            not_in_split.append(uri)
        else:
            found[vid] = hit
    if not found:
        raise ConfigError(
            f"no video under {cfg.faces} has a label in {cfg.labels or cfg.labels_format}"
            + (
                f" and a pair in the split files ({len(not_in_split)} in none)"
                if not_in_split
                else ""
            )
        )
    group = group_videos(found)
    if labels.fixed_split:
        side = fixed_sides(found, group)
    else:
        side = assign_splits(list(group.values()), cfg.val_fraction, cfg.test_fraction, cfg.seed)
    keep = pc.is_in(table.column("video_id"), value_set=pa.array(sorted(found)))
    table = table.filter(keep)
    vids = table.column("video_id").to_pylist()
    columns = {name: table.column(name) for name in FACE_SHARD_SCHEMA.names}
    columns["label"] = pa.array([found[v].label for v in vids], pa.string())
    columns["source_id"] = pa.array([found[v].source for v in vids], pa.string())
    columns["split"] = pa.array([side[group[v]] for v in vids], pa.string())
    columns["group_id"] = pa.array([group[v] for v in vids], pa.string())
    columns["method"] = pa.array([found[v].method for v in vids], pa.string())
    out_table = pa.Table.from_pydict(columns, schema=LABELLED_FACE_SHARD_SCHEMA)

    out = Path(cfg.out)
    # The data set's identity: every face's key, label, group, method and crop bytes.
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
        lab = found[vid]
        line = (
            f"{vid}/{frame}/{track}\t{lab.label}\t{lab.source}\t{group[vid]}\t"
            f"{lab.method or ''}\t{crop_sha}\n"
        )
        digest.update(line.encode())
    tag = digest.hexdigest()
    # The part's name also carries the split, so two splits of one data set never share it.
    how = (
        f"files:{sorted(side.items())}"
        if labels.fixed_split
        else f"{cfg.seed}|{cfg.val_fraction:g}|{cfg.test_fraction:g}"
    )
    part_digest = hashlib.sha256(f"{tag}|{how}".encode()).hexdigest()
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
        per_side[side[group[vid]]].append(vid)
    split_doc: dict[str, Any] = dict(per_side)
    split_doc["group"] = {vid: group[vid] for vid in sorted(found)}
    (out / "split.json").write_text(json.dumps(split_doc, indent=1))
    counts = Counter((side[group[v]], found[v].label) for v in vids)
    groups_by_split = Counter(side[g] for g in set(group.values()))
    methods = Counter(lab.method for lab in found.values() if lab.method)
    without = extraction.without_faces if extraction else []
    manifest = {
        "schema": "labelled_face_shard",
        "schema_version": LABELLED_FACE_SHARD_SCHEMA.metadata[b"dfscan.schema_version"].decode(),
        "faces_from": cfg.faces,
        "videos_from": cfg.extract.input_uri if cfg.extract else None,
        "labels": cfg.labels,
        "labels_format": cfg.labels_format,
        "compression": cfg.compression,
        "split_from": (
            f"split files {labels.split_files}"
            if labels.fixed_split
            else f"random by group (seed {cfg.seed}, val {cfg.val_fraction:g},"
            f" test {cfg.test_fraction:g})"
        ),
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "group": "connected component over source videos and identities: a fake goes with"
        " its original and with every video showing one of its people",
        "videos": len(found),
        "faces": out_table.num_rows,
        "groups": len(set(group.values())),
        "unlabelled_videos": len(unlabelled),
        "videos_not_in_split_files": len(not_in_split),
        "not_in_split_files": sorted(not_in_split),
        "videos_not_in_layout": not_in_layout,
        "videos_without_faces": len(without),
        "without_faces": without,
        "faces_by_split_label": {f"{s}/{lab}": n for (s, lab), n in sorted(counts.items())},
        "videos_by_split": {s: len(v) for s, v in per_side.items()},
        "groups_by_split": {s: groups_by_split.get(s, 0) for s in SPLIT_SIDES},
        "videos_by_method": dict(sorted(methods.items())),
        "extraction": extraction.report if extraction else None,
        "data_hash": tag,
        "built_at": time.time(),
        "part": final.name,
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ---------------------------------------------------------------- command line
def register(sub: Any) -> None:
    p = sub.add_parser("dataset", help="build labelled training data from face shards or videos")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    b = dsub.add_parser(
        "build", help="face shards or videos + labels -> labelled shards with a split"
    )
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--faces", help="face shards URI (a scan's OUT/faces)")
    source.add_argument(
        "--videos",
        metavar="INPUT",
        help="folder or prefix URI, one video, or a manifest: extract faces as a scan does",
    )
    b.add_argument(
        "--labels",
        help="labels CSV, DFDC metadata.json or FaceForensics++ root"
        " (none: folder names, or FF++ when INPUT is an FF++ root)",
    )
    b.add_argument(
        "--labels-format",
        choices=sorted(LABEL_SOURCES),
        help="default: csv for a file, dfdc for .json, ffpp for a folder, folders without --labels",
    )
    b.add_argument(
        "--split-files",
        metavar="DIR",
        help="FF++ official train/val/test.json (default: ROOT/splits when present)",
    )
    b.add_argument("--compression", choices=FFPP_COMPRESSIONS, help="FF++: only this compression")
    b.add_argument("--out", required=True, help="folder to write the data set to")
    b.add_argument("--val-fraction", type=float, default=0.2)
    b.add_argument("--test-fraction", type=float, default=0.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--storage-options", help="JSON object passed to fsspec (e.g. endpoint)")
    # --videos: the scan's extraction flags, with the scan's defaults.
    e = b.add_argument_group("extraction (--videos), as dfscan scan")
    e.add_argument("--faces-out", help="face shards URI to commit to (default: OUT/scan/faces)")
    e.add_argument("--frames", default="uniform:32", help="uniform:N | fps:F | keyframes")
    add_detector_arguments(e)
    e.add_argument(
        "--crop-scale",
        type=_positive(float),
        default=DEFAULT_CROP_SCALE,
        help=f"box enlargement (default {DEFAULT_CROP_SCALE})",
    )
    e.add_argument(
        "--crop-size",
        type=_positive(int),
        default=DEFAULT_CROP_SIZE,
        help=f"crop side in pixels (default {DEFAULT_CROP_SIZE})",
    )
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument(
        "--timeout",
        type=_positive(float),
        default=LimitsConfig.timeout_s,
        help="per-video seconds for decode+detect",
    )
    e.add_argument("--max-bytes", type=_positive(int), default=LimitsConfig.max_bytes)
    add_limit_arguments(b)
    e.add_argument("--runner", default="local", help="engine: local (default), ray, beam")
    e.add_argument("--ray-address", help="connect to this Ray cluster (auto, ray://head:10001)")
    e.add_argument("--run-id", help="id of the extraction run (default: time + random)")
    e.add_argument("--rescan", action="store_true", help="decode again videos already extracted")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=run_build_command)


def extraction_config(args: argparse.Namespace, storage: dict[str, Any]) -> ScanConfig:
    """The scan's configuration for its extraction stages, from the same flags."""
    from pipelines.cli import new_run_id
    from pipelines.scan import RUNNERS

    if args.runner not in RUNNERS:
        raise ConfigError(f"unknown --runner {args.runner!r}: choose one of {', '.join(RUNNERS)}")
    detector = detector_from_args(args)
    return ScanConfig(
        input_uri=args.videos,
        out_uri=args.out,
        warehouse_url="",  # none: the build stops at the face shards
        run_id=args.run_id or new_run_id(),
        sampling=SamplingConfig.parse(args.frames),
        detector=detector,
        crop=CropConfig(scale=args.crop_scale, size=args.crop_size),
        limits=limits_from_args(argparse.Namespace(**vars(args), input=args.videos)),
        storage_options=storage,
        engine=EngineConfig(args.runner, args.ray_address, tuple(getattr(args, "beam_args", ()))),
        progress=not args.no_progress,
        rescan=args.rescan,
    )


def build_config(args: argparse.Namespace) -> BuildConfig:
    from pipelines.cli import _storage_options

    storage = _storage_options(args.storage_options)
    if args.labels_format:
        fmt, labels = args.labels_format, args.labels
        if fmt == "ffpp" and not labels and args.videos and is_ffpp_root(args.videos, storage):
            labels = args.videos  # the root that may hold splits/
    else:
        fmt, labels = guess_format(args.labels, args.videos, storage)
    extract = None
    faces = args.faces
    if args.videos is not None:
        faces = args.faces_out or f"{args.out.rstrip('/')}/scan/faces"
        own = Path(args.out, "faces").resolve()
        if "://" not in faces and own in (Path(faces).resolve(), *Path(faces).resolve().parents):
            raise ConfigError(
                f"--faces-out {faces} is inside OUT/faces, which holds the data set's own part"
            )
        extract = extraction_config(args, storage)
    elif args.faces_out:
        raise ConfigError(
            "--faces-out is for --videos (with --faces the shards are read as they are)"
        )
    return BuildConfig(
        faces=faces,
        out=args.out,
        labels=labels,
        labels_format=fmt,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        split_files=args.split_files,
        compression=args.compression,
        storage_options=storage,
        extract=extract,
    )


def run_build_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    cfg = build_config(args)
    console = Console()
    enabled = cfg.extract is not None and cfg.extract.progress and console.is_terminal
    with Progress(
        TextColumn("[bold]extract"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("videos"),
        console=console,
        disable=not enabled,
    ) as progress:
        task = progress.add_task("extract", total=None)
        m = build_dataset(
            cfg,
            on_listed=lambda n: progress.update(task, total=n),
            on_video=lambda _: progress.advance(task),
        )
    if m["extraction"]:
        x = m["extraction"]
        print(
            f"extracted faces from {x['decoded']} videos ({x['already_extracted']} already"
            f" extracted, {x['decoded_with_faces']} with faces, without:"
            f" {x['decoded_without_faces_by_status'] or 'none'}) into {x['faces_out']}"
        )
    print(
        f"{m['videos']} labelled videos in {m['groups']} groups"
        f" ({m['unlabelled_videos']} without a label, {m['videos_not_in_split_files']} in no"
        f" split pair, {m['videos_without_faces']} without faces: left out),"
        f" {m['faces']} faces; videos per split {m['videos_by_split']}"
    )
    print(f"wrote {cfg.out}/dataset.json, split.json and faces/{m['part']}")
    return 0
