"""What a scan must decode: hash what is new, fold same-bytes copies, skip what is done.

The decision needs every content id at once (two URIs with the same bytes may sit in
different batches, on different workers), so it cannot be an operator in the streamed
chain: the driver hashes first, through the same runner (``hash_refs``), decides here,
and only then hands the remaining refs to the runner with the rest of the operators.

- **Hash cache.** A listed file whose (uri, size, mtime) matches a row of the
  warehouse's ``video_uris`` table keeps its recorded content id and is not read again,
  so a nightly scan of a growing bucket reads only the new uploads. ``--rescan`` hashes
  everything afresh.
- **Same bytes, one decode.** Refs with one ``video_id`` are decoded once, under the
  first URI in sorted order (the one its ``video_scans`` row names); every URI is
  recorded in ``video_uris`` (video_id, uri, first and last run that saw it).
- **Skip.** A content id that already has a row under this model version is not decoded
  again, whatever its status, unless ``--rescan``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from operators.write_warehouse import Warehouse
from schemas.records import VideoFile, VideoRef


@dataclass(frozen=True)
class ScanPlan:
    """The outcome of hashing and deduplication, before any decode."""

    todo: list[VideoRef]  # one per content id to decode, in URI order
    skipped: list[VideoRef] = field(default_factory=list)  # already scanned, this model
    duplicates: list[VideoRef] = field(default_factory=list)  # same bytes, another URI
    hashed: int = 0  # files read to learn their id
    cached: int = 0  # files whose id came from video_uris


def plan_scan(
    files: list[VideoFile],
    hash_refs: Callable[[list[VideoFile]], list[VideoRef]],
    warehouse: Warehouse,
    model_version: str,
    run_id: str,
    rescan: bool = False,
) -> ScanPlan:
    """Hash (or look up) every file, record every URI, and choose what to decode."""
    known = {} if rescan else warehouse.known_video_ids(files)
    cached = [
        VideoRef(known[f.uri], f.uri, f.size_bytes, f.mtime, f.uploaded_at)
        for f in files
        if f.uri in known
    ]
    to_hash = [f for f in files if f.uri not in known]
    hashed = hash_refs(to_hash) if to_hash else []
    if len(hashed) != len(to_hash):
        raise RuntimeError(f"hashing returned {len(hashed)} refs for {len(to_hash)} files")
    refs = sorted(cached + hashed, key=lambda r: r.uri)
    warehouse.record_uris(refs, run_id)

    first: dict[str, VideoRef] = {}
    duplicates: list[VideoRef] = []
    for ref in refs:
        if ref.video_id in first:
            duplicates.append(ref)
        else:
            first[ref.video_id] = ref
    done = set() if rescan else warehouse.scanned_keys(model_version, list(first))
    return ScanPlan(
        todo=[r for r in first.values() if r.video_id not in done],
        skipped=[r for r in first.values() if r.video_id in done],
        duplicates=duplicates,
        hashed=len(to_hash),
        cached=len(cached),
    )
