"""``dfscan shards ls|stats|vacuum FACES``: what the face-shard dataset holds, and tidying it.

Everything comes from one listing of the faces root and the commit records
(``operators/read_shards.py::list_shards``); no Parquet file is opened. ``ls`` shows the
runs (parts, rows, bytes, complete or not) and, apart, what readers do not take:
uncommitted parts, temporary files, records whose part is gone. ``stats`` gives the
totals over committed parts, faces per video, and what needs a look: videos whose faces
sit in more than one part (a rerun that batched them differently: readers that sum
faces would count them twice). ``vacuum`` deletes uncommitted parts and temporary files
older than a grace period; younger ones may belong to a writer still running, and files
this layout does not write are only reported.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from operators.read_shards import (
    CommittedPart,
    ShardListing,
    StoredFile,
    list_shards,
    require_faces_root,
)

# A writer moves a part into place and writes its record within seconds; an hour also
# covers a slow object-store copy and clock skew between this machine and the store.
DEFAULT_GRACE_S = 3600.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def shard_stats(listing: ShardListing) -> dict[str, Any]:
    """Totals over committed parts; per run, detector and date; faces per video."""
    faces: Counter[str] = Counter()
    parts_of: Counter[str] = Counter()
    by_detector: dict[str, Counter[str]] = {}
    by_dt: dict[str, Counter[str]] = {}
    for part in listing.parts:
        faces.update(part.faces_per_video)
        parts_of.update(part.faces_per_video.keys())
        for key, table in ((part.detector, by_detector), (part.dt, by_dt)):
            c = table.setdefault(key, Counter())
            c.update(parts=1, rows=part.rows, bytes=part.bytes, videos=part.videos)
    counts = sorted(faces.values())
    return {
        "parts": len(listing.parts),
        "rows": sum(p.rows for p in listing.parts),
        "bytes": sum(p.bytes for p in listing.parts),
        "videos": len(faces),
        "faces_per_video": {
            "min": counts[0] if counts else 0,
            "median": statistics.median(counts) if counts else 0,
            "max": counts[-1] if counts else 0,
        },
        "by_run": {
            r.run_id: {
                "parts": r.parts,
                "rows": r.rows,
                "bytes": r.bytes,
                "videos": r.videos,
                "complete": r.complete,
            }
            for r in listing.runs
        },
        "by_detector": {k: dict(v) for k, v in sorted(by_detector.items())},
        "by_dt": {k: dict(v) for k, v in sorted(by_dt.items())},
        "videos_in_several_parts": sorted(v for v, n in parts_of.items() if n > 1),
        "uncommitted": [f.uri for f in listing.uncommitted],
        "temporary": [f.uri for f in listing.temporary],
        "missing": list(listing.missing),
        "damaged": list(listing.damaged),
        "faces_by_video": dict(sorted(faces.items())),
    }


@dataclass
class VacuumResult:
    deleted: list[StoredFile] = field(default_factory=list)
    kept: list[StoredFile] = field(default_factory=list)  # younger than the grace period
    left_alone: list[StoredFile] = field(default_factory=list)  # not written by this layout


def vacuum(
    faces_uri: str,
    storage_options: dict[str, Any] | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
    now: float | None = None,
) -> VacuumResult:
    """Delete uncommitted parts and temporary files last modified over ``grace_s`` ago."""
    cutoff = (time.time() if now is None else now) - grace_s
    listing = list_shards(faces_uri, storage_options)
    result = VacuumResult(left_alone=[f for f in listing.uncommitted if not f.in_layout])
    for f in (*(f for f in listing.uncommitted if f.in_layout), *listing.temporary):
        old = f.modified is not None and f.modified <= cutoff
        (result.deleted if old else result.kept).append(f)
    if dry_run or not result.deleted:
        return result
    # List again just before deleting: a part committed, or rewritten by a rerun, since
    # the first listing has a record or a new mtime now, and is kept.
    again = list_shards(faces_uri, storage_options)
    still = {(f.path, f.modified) for f in (*again.uncommitted, *again.temporary)}
    result.deleted = [f for f in result.deleted if (f.path, f.modified) in still]
    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    for f in result.deleted:
        # One file at a time: rm() would expand glob characters of the path.
        fs.rm_file(f"{root.rstrip('/')}/{f.path}")
    return result


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _age(modified: float | None, now: float) -> str:
    if modified is None:
        return "age unknown"
    hours = max(now - modified, 0.0) / 3600
    return f"{hours * 60:.0f} min old" if hours < 1 else f"{hours:.1f} h old"


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``1h``, ``2d`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 1h, 2d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


# ---------------------------------------------------------------- command line
def register(sub: Any) -> None:
    p = sub.add_parser("shards", help="inspect and tidy face shards: ls | stats | vacuum")
    p.add_argument("action", choices=["ls", "stats", "vacuum"])
    p.add_argument("faces", help="face shards URI (a scan's OUT/faces)")
    p.add_argument("--storage-options", help="JSON object passed to fsspec (e.g. endpoint)")
    p.add_argument("--parts", action="store_true", help="ls: also every committed part")
    p.add_argument("--videos", action="store_true", help="stats: also faces of every video")
    p.add_argument(
        "--grace",
        type=parse_duration,
        default=DEFAULT_GRACE_S,
        help="vacuum: only files older than this (default 1h; 30m, 2d, ...)",
    )
    p.add_argument("--dry-run", action="store_true", help="vacuum: say what, delete nothing")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run_shards_command)


def _part_dict(part: CommittedPart) -> dict[str, Any]:
    d = asdict(part)
    d.pop("faces_per_video")
    d["videos"] = part.videos
    return d


def _print_leftovers(listing: ShardListing) -> None:
    if listing.uncommitted:
        print(
            f"! {len(listing.uncommitted)} uncommitted file(s): no commit record, readers "
            "skip them (`dfscan shards vacuum` removes the parts)"
        )
        for f in listing.uncommitted:
            note = "" if f.in_layout else "  (not a part this layout writes: left alone)"
            print(f"    {_human(f.bytes):>10}  {f.uri}{note}")
    if listing.temporary:
        print(f"! {len(listing.temporary)} temporary file(s) under _tmp/")
    for uri in listing.missing:
        print(f"! committed part is missing: {uri}")
    for why in listing.damaged:
        print(f"! damaged record: {why}")


def _ls(listing: ShardListing, args: argparse.Namespace) -> None:
    if args.format == "json":
        out: dict[str, Any] = {"runs": [asdict(r) for r in listing.runs]}
        if args.parts:
            out["parts"] = [_part_dict(p) for p in listing.parts]
        out["uncommitted"] = [asdict(f) for f in listing.uncommitted]
        out["temporary"] = [asdict(f) for f in listing.temporary]
        out["missing"] = list(listing.missing)
        out["damaged"] = list(listing.damaged)
        print(json.dumps(out, indent=2))
        return
    print(f"{'run':<32} {'parts':>6} {'rows':>9} {'videos':>7} {'bytes':>10}  status")
    for r in listing.runs:
        status = "complete" if r.complete else "incomplete"
        print(
            f"{r.run_id:<32} {r.parts:>6} {r.rows:>9} {r.videos:>7} {_human(r.bytes):>10}  {status}"
        )
    rows = sum(p.rows for p in listing.parts)
    print(
        f"{len(listing.runs)} runs · {len(listing.parts)} committed parts · {rows} faces · "
        f"{_human(sum(p.bytes for p in listing.parts))}"
    )
    if args.parts:
        print(f"\n{'rows':>8} {'videos':>7} {'bytes':>10}  {'runs':<28} part")
        for p in listing.parts:
            runs = ",".join(p.runs)
            print(f"{p.rows:>8} {p.videos:>7} {_human(p.bytes):>10}  {runs:<28} {p.path}")
    _print_leftovers(listing)


def _stats(listing: ShardListing, args: argparse.Namespace) -> None:
    stats = shard_stats(listing)
    per_video = stats.pop("faces_by_video")
    if args.videos:
        stats["faces_by_video"] = per_video
    if args.format == "json":
        print(json.dumps(stats, indent=2))
        return
    fpv = stats["faces_per_video"]
    print(
        f"{stats['parts']} parts · {stats['rows']} faces · {stats['videos']} videos · "
        f"{_human(stats['bytes'])} · faces per video min {fpv['min']} median {fpv['median']:g}"
        f" max {fpv['max']}"
    )
    for title in ("by_run", "by_detector", "by_dt"):
        for key, c in stats[title].items():
            status = (
                "" if "complete" not in c else (" complete" if c["complete"] else " incomplete")
            )
            print(
                f"  {title[3:]} {key}: {c['parts']} parts, {c['rows']} faces, "
                f"{c['videos']} videos, {_human(c['bytes'])}{status}"
            )
    if stats["videos_in_several_parts"]:
        print(f"  ! {len(stats['videos_in_several_parts'])} videos have faces in several parts")
    _print_leftovers(listing)
    if args.videos:
        for vid, n in per_video.items():
            print(f"{n:>8}  {vid}")


def _vacuum(args: argparse.Namespace, opts: dict[str, Any]) -> None:
    now = time.time()
    result = vacuum(args.faces, opts, args.grace, args.dry_run, now)
    if args.format == "json":
        out: dict[str, Any] = {"dry_run": args.dry_run, **asdict(result)}
        print(json.dumps(out, indent=2))
        return
    verb = "would delete" if args.dry_run else "deleted"
    for f in result.deleted:
        kind = "uncommitted part" if f.in_layout else "temporary file"
        print(f"{verb} {f.uri} ({kind}, {_age(f.modified, now)}, {_human(f.bytes)})")
    if result.kept:
        print(f"kept {len(result.kept)} file(s) younger than the grace period (a writer may")
        print("  still commit them; --grace to change)")
    for f in result.left_alone:
        print(f"left alone (not a part this layout writes): {f.uri}")
    total = _human(sum(f.bytes for f in result.deleted))
    print(f"vacuum: {verb} {len(result.deleted)} file(s), {total}")


def run_shards_command(args: argparse.Namespace) -> int:
    from pipelines.cli import _storage_options
    from pipelines.config import ConfigError

    opts = _storage_options(args.storage_options)
    try:
        fsspec.core.url_to_fs(args.faces, **opts)
    except TypeError as err:  # options the scheme's filesystem does not take
        raise ConfigError(f"cannot open {args.faces}: {err}") from None
    require_faces_root(args.faces, opts)
    if args.action == "vacuum":
        _vacuum(args, opts)
    elif args.action == "ls":
        _ls(list_shards(args.faces, opts), args)
    else:
        _stats(list_shards(args.faces, opts), args)
    return 0
