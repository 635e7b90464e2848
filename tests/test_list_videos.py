"""Listing and content ids."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.list_videos import VideoHasher, list_videos, uri_video_id
from pipelines.config import ConfigError


def make_tree(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.mp4").write_bytes(b"one")
    (root / "b.mov").write_bytes(b"two")
    (root / "notes.txt").write_bytes(b"hello")
    (root / ".hidden.mp4").write_bytes(b"x")
    (root / "_tmp").mkdir()
    (root / "_tmp" / "partial.mp4").write_bytes(b"x")


def test_lists_every_file_sorted_skipping_hidden(tmp_path: Path):
    make_tree(tmp_path)
    files = list(list_videos(str(tmp_path)))
    names = [f.uri.rsplit("/", 1)[-1] for f in files]
    assert names == ["one.mp4", "b.mov", "notes.txt"]  # non-video listed too: it gets a status
    assert all(f.uri.startswith("file://") for f in files)
    assert [f.size_bytes for f in files] == [3, 3, 5]
    assert all(f.mtime and f.mtime > 0 for f in files)


def test_single_file_input(tmp_path: Path):
    make_tree(tmp_path)
    files = list(list_videos(str(tmp_path / "b.mov")))
    assert len(files) == 1 and files[0].size_bytes == 3


def test_missing_input_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        list(list_videos(str(tmp_path / "nope")))


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_lists_its_uris_once(tmp_path: Path, kind: str):
    make_tree(tmp_path)
    uris = [str(tmp_path / "b.mov"), str(tmp_path / "a" / "one.mp4"), str(tmp_path / "b.mov")]
    manifest = tmp_path / f"m.{kind}"
    if kind == "csv":
        manifest.write_text("uri,label\n" + "".join(f"{u},x\n" for u in uris))
    elif kind == "jsonl":
        manifest.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
    else:
        pq.write_table(pa.table({"uri": uris}), manifest)
    files = list(list_videos(str(manifest)))
    assert [f.uri.rsplit("/", 1)[-1] for f in files] == ["b.mov", "one.mp4"]


def test_manifest_without_uri_column_is_a_config_error(tmp_path: Path):
    (tmp_path / "m.csv").write_text("name\nx\n")
    with pytest.raises(ConfigError, match="no URI column"):
        list(list_videos(str(tmp_path / "m.csv")))


def test_video_id_is_sha256_of_content_and_equal_for_copies(tmp_path: Path):
    make_tree(tmp_path)
    (tmp_path / "copy.mp4").write_bytes(b"two")
    refs = {
        Path(r.uri).name: r
        for r in VideoHasher(1 << 30).process_batch(list(list_videos(str(tmp_path))))
    }
    assert refs["b.mov"].video_id == hashlib.sha256(b"two").hexdigest()
    assert refs["copy.mp4"].video_id == refs["b.mov"].video_id
    assert refs["one.mp4"].video_id != refs["b.mov"].video_id


def test_file_over_the_size_limit_is_not_read_and_gets_a_uri_id(tmp_path: Path):
    make_tree(tmp_path)
    files = [f for f in list_videos(str(tmp_path)) if f.uri.endswith("notes.txt")]
    ref = VideoHasher(max_bytes=4).process_batch(files)[0]
    assert ref.video_id == uri_video_id(files[0].uri)
    assert ref.video_id.startswith("u5-")
