"""``dfscan shards ls|stats FACES``: what the face-shard dataset holds, without a query engine.

``ls`` prints one line per committed part (rows, videos, bytes, runs); ``stats`` the
totals, per run and per detector, faces per video, plus what needs attention: videos
whose faces sit in more than one part (a rerun that batched them differently: readers
that sum faces would count them twice) and uncommitted files left in ``_tmp/`` by a
crashed writer. Reads footers and the small ``video_id``/``run_id`` columns only.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq


@dataclass(frozen=True)
class PartInfo:
    uri: str
    detector: str
    bytes: int
    rows: int
    videos: int
    runs: tuple[str, ...]
    faces_per_video: dict[str, int]


def _committed(path: str, root: str) -> bool:
    rel = path[len(root) :].lstrip("/")
    parts = rel.split("/")
    return path.endswith(".parquet") and not any(p.startswith((".", "_")) for p in parts)


def list_parts(faces_uri: str, storage_options: dict[str, Any] | None = None) -> list[PartInfo]:
    """Every committed part under ``faces_uri``, sorted by URI."""
    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    found = fs.find(root, detail=True)
    parts = []
    for path in sorted(found):
        if not _committed(path, root):
            continue
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh, columns=["video_id", "run_id", "detector"])
        per_video = Counter(table.column("video_id").to_pylist())
        detectors = sorted(set(table.column("detector").to_pylist()))
        parts.append(
            PartInfo(
                uri=str(fs.unstrip_protocol(path)),
                detector=",".join(detectors),
                bytes=int(found[path].get("size") or 0),
                rows=table.num_rows,
                videos=len(per_video),
                runs=tuple(sorted(set(table.column("run_id").to_pylist()))),
                faces_per_video=dict(per_video),
            )
        )
    return parts


def uncommitted(faces_uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Files under ``_tmp/``: parts a writer started and never moved into place."""
    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    tmp = root.rstrip("/") + "/_tmp"
    return [str(fs.unstrip_protocol(p)) for p in sorted(fs.find(tmp))] if fs.exists(tmp) else []


def shard_stats(parts: list[PartInfo], tmp_files: list[str]) -> dict[str, Any]:
    """Totals, per run and per detector; faces per video; videos in several parts."""
    faces: Counter[str] = Counter()
    parts_of: Counter[str] = Counter()
    by_run: dict[str, Counter[str]] = {}
    by_detector: dict[str, Counter[str]] = {}
    for part in parts:
        faces.update(part.faces_per_video)
        parts_of.update(part.faces_per_video.keys())
        for key, table in ((",".join(part.runs), by_run), (part.detector, by_detector)):
            c = table.setdefault(key, Counter())
            c.update(parts=1, rows=part.rows, bytes=part.bytes, videos=part.videos)
    counts = sorted(faces.values())
    return {
        "parts": len(parts),
        "rows": sum(p.rows for p in parts),
        "bytes": sum(p.bytes for p in parts),
        "videos": len(faces),
        "faces_per_video": {
            "min": counts[0] if counts else 0,
            "median": counts[len(counts) // 2] if counts else 0,
            "max": counts[-1] if counts else 0,
        },
        "by_run": {k: dict(v) for k, v in sorted(by_run.items())},
        "by_detector": {k: dict(v) for k, v in sorted(by_detector.items())},
        "videos_in_several_parts": sorted(v for v, n in parts_of.items() if n > 1),
        "uncommitted": tmp_files,
        "faces_by_video": dict(sorted(faces.items())),
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---------------------------------------------------------------- command line
def register(sub: Any) -> None:
    p = sub.add_parser("shards", help="inspect face shards: ls | stats")
    p.add_argument("action", choices=["ls", "stats"])
    p.add_argument("faces", help="face shards URI (a scan's OUT/faces)")
    p.add_argument("--storage-options", help="JSON object passed to fsspec (e.g. endpoint)")
    p.add_argument("--videos", action="store_true", help="stats: also faces of every video")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run_shards_command)


def run_shards_command(args: argparse.Namespace) -> int:
    from pipelines.cli import _storage_options

    opts = _storage_options(args.storage_options)
    parts = list_parts(args.faces, opts)
    if args.action == "ls":
        if args.format == "json":
            for part in parts:
                d = asdict(part)
                d.pop("faces_per_video")
                print(json.dumps(d))
            return 0
        print(f"{'rows':>8} {'videos':>7} {'bytes':>10}  {'runs':<28} part")
        for part in parts:
            size, runs = _human(part.bytes), ",".join(part.runs)
            print(f"{part.rows:>8} {part.videos:>7} {size:>10}  {runs:<28} {part.uri}")
        return 0
    stats = shard_stats(parts, uncommitted(args.faces, opts))
    per_video = stats.pop("faces_by_video")
    if args.videos:
        stats["faces_by_video"] = per_video
    if args.format == "json":
        print(json.dumps(stats, indent=2))
        return 0
    fpv = stats["faces_per_video"]
    print(
        f"{stats['parts']} parts · {stats['rows']} faces · {stats['videos']} videos · "
        f"{_human(stats['bytes'])} · faces per video min {fpv['min']} median {fpv['median']}"
        f" max {fpv['max']}"
    )
    for title in ("by_run", "by_detector"):
        for key, c in stats[title].items():
            print(
                f"  {title[3:]} {key}: {c['parts']} parts, {c['rows']} faces, "
                f"{c['videos']} videos, {_human(c['bytes'])}"
            )
    if stats["videos_in_several_parts"]:
        print(f"  ! {len(stats['videos_in_several_parts'])} videos have faces in several parts")
    if stats["uncommitted"]:
        print(f"  ! {len(stats['uncommitted'])} uncommitted files under _tmp/")
    if args.videos:
        for vid, n in per_video.items():
            print(f"{n:>8}  {vid}")
    return 0
