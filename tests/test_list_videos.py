"""Listing, content ids, and the time windows of incremental scans."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.list_videos import (
    ListingReport,
    VideoHasher,
    expand_date_template,
    list_videos,
    template_root,
    uri_video_id,
)
from operators.shard_layout import DEFAULT_PARTITION, partition_date
from pipelines.cli import build_parser, main
from pipelines.config import ConfigError, TimeWindow, parse_instant
from pipelines.limits_cli import limits_from_args
from pipelines.window_cli import window_from_args
from tests.conftest import REAL_VIDEOS


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


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_entries_without_a_uri_are_counted_and_named_not_dropped_silently(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
):
    make_tree(tmp_path)
    good = str(tmp_path / "b.mov")
    manifest = tmp_path / f"m.{kind}"
    if kind == "csv":  # entry 2 has a label but no URI, entry 3 only spaces
        manifest.write_text(f"uri,label\n{good},x\n,FAKE\n   ,x\n")
    else:  # entry 2 has no uri key, entry 3 a null, entry 4 an empty string
        rows = [{"uri": good}, {"label": "FAKE"}, {"uri": None}, {"uri": ""}]
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = ListingReport()
    with caplog.at_level(logging.WARNING, logger="operators.list_videos"):
        files = list(list_videos(str(manifest), report=report))
    assert names(files) == ["b.mov"]
    blank = [2, 3] if kind == "csv" else [2, 3, 4]
    assert report.no_uri == len(blank)
    warned = [r.getMessage() for r in caplog.records if "no URI" in r.getMessage()]
    assert warned == [
        f"manifest {manifest}: {len(blank)} entries with no URI, not scanned"
        f" (entries {', '.join(map(str, blank))})"
    ]


def test_a_missing_manifest_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"manifest .*nope\.csv does not exist"):
        list(list_videos(str(tmp_path / "nope.csv")))


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


# ---------------------------------------------------------------- incremental scans (#4)
UTC = dt.timezone.utc
DAY_20, DAY_21, DAY_22 = (dt.datetime(2026, 11, d, tzinfo=UTC) for d in (20, 21, 22))


def window(since: str | None, until: str | None) -> TimeWindow:
    return TimeWindow(
        parse_instant(since) if since else None, parse_instant(until) if until else None
    )


def touch(path: Path, when: dt.datetime, body: bytes = b"v") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def names(files) -> list[str]:
    return [f.uri.rsplit("/", 1)[-1] for f in files]


def test_window_lists_files_modified_in_since_until_half_open(tmp_path: Path):
    touch(tmp_path / "before.mp4", DAY_21 - dt.timedelta(microseconds=1))
    touch(tmp_path / "at_since.mp4", DAY_21)
    touch(tmp_path / "sub" / "noon.mp4", DAY_21 + dt.timedelta(hours=12))
    touch(tmp_path / "at_until.mp4", DAY_22)  # [since, until): the next night's
    report = ListingReport()
    files = list(
        list_videos(str(tmp_path), window=window("2026-11-21", "2026-11-22"), report=report)
    )
    assert names(files) == ["at_since.mp4", "noon.mp4"]
    assert (report.listed, report.outside_window, report.no_time) == (2, 2, 0)
    # Open ends: only --since, only --until.
    assert names(list_videos(str(tmp_path), window=window("2026-11-21T12:00:00Z", None))) == [
        "at_until.mp4",
        "noon.mp4",
    ]
    assert names(list_videos(str(tmp_path), window=window(None, "2026-11-21"))) == ["before.mp4"]


def test_single_file_input_is_filtered_by_the_window_too(tmp_path: Path):
    video = touch(tmp_path / "one.mp4", DAY_20)
    assert list(list_videos(str(video), window=window("2026-11-21", "2026-11-22"))) == []
    assert len(list(list_videos(str(video), window=window("2026-11-20", "2026-11-21")))) == 1


@pytest.mark.parametrize(
    "now, since, until",
    [
        ("2026-11-22T00:30:00+00:00", "2026-11-21", "2026-11-22"),
        ("2026-11-22T23:59:59+00:00", "2026-11-21", "2026-11-22"),
        # 21:30 in New York on the 21st is 02:30 UTC on the 22nd: days are UTC days.
        ("2026-11-21T21:30:00-05:00", "2026-11-21", "2026-11-22"),
        ("2026-01-01T02:00:00+00:00", "2025-12-31", "2026-01-01"),
    ],
)
def test_yesterday_and_today_are_utc_days_of_the_clock(now: str, since: str, until: str):
    clock = dt.datetime.fromisoformat(now)
    args = argparse.Namespace(input="/uploads", since="yesterday", until="Today")
    assert window_from_args(args, now=clock) == TimeWindow(
        dt.datetime.fromisoformat(since).replace(tzinfo=UTC),
        dt.datetime.fromisoformat(until).replace(tzinfo=UTC),
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-21", "2026-11-21T00:00:00+00:00"),
        ("2026-11-21T10:00:00Z", "2026-11-21T10:00:00+00:00"),
        ("2026-11-21T10:00:00+02:00", "2026-11-21T08:00:00+00:00"),
        (" 2026-11-21T23:30:00-05:00 ", "2026-11-22T04:30:00+00:00"),
    ],
)
def test_iso_dates_and_datetimes_become_utc_instants(text: str, expected: str):
    assert parse_instant(text).isoformat() == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("2026-11-21T10:00:00", "has no timezone"),
        ("2026-13-01", "not a date"),
        ("tomorrow", "not a date"),
        ("", "not a date"),
    ],
)
def test_bad_instants_are_config_errors(text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        parse_instant(text)


def test_since_not_before_until_is_an_error():
    with pytest.raises(ConfigError, match="is not before --until"):
        window("2026-11-21", "2026-11-21")
    with pytest.raises(ConfigError, match="is not before --until"):
        window("2026-11-22", "2026-11-21")


def test_store_without_mtime_is_left_out_of_a_window_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    import fsspec

    fs = fsspec.filesystem("memory")  # reports `created`, never a modification time
    root = f"/{tmp_path.name}/uploads"
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        fs.pipe(f"{root}/{name}", b"x")
    assert len(list(list_videos(f"memory://{root}"))) == 3  # no window: all listed
    report = ListingReport()
    with caplog.at_level(logging.WARNING, logger="operators.list_videos"):
        files = list(
            list_videos(f"memory://{root}", window=window("2020-01-01", None), report=report)
        )
    assert files == [] and report.no_time == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 file(s)" in warnings[0].getMessage()


# ---------------------------------------------------------------- date templates
def day_tree(root: Path, layout: str) -> None:
    """Uploads of the 20th and 21st (none on the 22nd), under ``layout`` day folders;
    every mtime is some other day: a partition is its date, not its files' mtimes."""
    for day, files in ((DAY_20, ["x.mp4"]), (DAY_21, ["a.mp4", "b.mov"])):
        for name in files:
            touch(root / day.strftime(layout) / name, dt.datetime(2026, 1, 1, tzinfo=UTC))
    touch(root / DAY_21.strftime(layout) / "_tmp" / "partial.mp4", DAY_21)


@pytest.mark.parametrize(
    "layout, template",
    [("dt=%Y-%m-%d", "dt={date}"), ("%Y/%m/%d", "{date:%Y/%m/%d}")],
)
def test_date_template_lists_one_prefix_per_day_missing_days_empty(
    tmp_path: Path, layout: str, template: str
):
    day_tree(tmp_path, layout)
    report = ListingReport()
    files = list(
        list_videos(
            f"{tmp_path}/{template}/", window=window("2026-11-21", "2026-11-23"), report=report
        )
    )
    assert names(files) == ["a.mp4", "b.mov"]
    assert all(f"/{DAY_21.strftime(layout)}/" in f.uri for f in files)
    assert report.days == [f"{tmp_path}/{d.strftime(layout)}/" for d in (DAY_21, DAY_22)]
    assert report.empty_days == [f"{tmp_path}/{DAY_22.strftime(layout)}/"]
    assert (report.outside_window, report.no_time) == (0, 0)  # no mtime filter
    # Uploaded on its partition's day, whatever the copy's mtime (shards file it there).
    assert {f.uploaded_at for f in files} == {DAY_21.timestamp()}
    both = list(list_videos(f"{tmp_path}/{template}/", window=window("2026-11-20", "2026-11-22")))
    assert names(both) == ["x.mp4", "a.mp4", "b.mov"]  # oldest day first


def test_date_template_of_daily_manifests(tmp_path: Path):
    video = touch(tmp_path / "v.mp4", DAY_20)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "2026-11-21.csv").write_text(f"uri\n{video}\n")
    files = list(
        list_videos(f"{tmp_path}/m/{{date}}.csv", window=window("2026-11-20", "2026-11-23"))
    )
    assert [f.uri for f in files] == [f"file://{video}"]  # listed on its manifest's day
    assert [(f.mtime, f.uploaded_at) for f in files] == [(DAY_20.timestamp(), DAY_21.timestamp())]


@pytest.mark.parametrize(
    "since, until, message",
    [
        (None, None, "needs --since and --until"),
        ("2026-11-21", None, "needs --since and --until"),
        ("2026-11-21T06:00:00Z", "2026-11-22", "is not a UTC midnight"),
        # A mistyped year: refused, not ~365,000 prefixes listed.
        ("1026-11-21", "2026-11-22", f"span {(DAY_22 - DAY_21.replace(year=1026)).days} days"),
    ],
)
def test_date_template_needs_a_window_of_whole_days(
    tmp_path: Path, since: str | None, until: str | None, message: str
):
    w = None if since is None and until is None else window(since, until)
    with pytest.raises(ConfigError, match=message):
        list(list_videos(f"{tmp_path}/dt={{date}}/", window=w))


def test_date_template_must_name_the_day(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not name the day"):
        expand_date_template(f"{tmp_path}/{{date:%Y/%m}}/", window("2026-11-21", "2026-11-22"))


def test_expanded_day_prefixes_obey_the_allowed_prefixes(tmp_path: Path):
    day_tree(tmp_path / "in", "dt=%Y-%m-%d")
    (tmp_path / "secret" / "dt=2026-11-21").mkdir(parents=True)
    (tmp_path / "secret" / "dt=2026-11-21" / "s.mp4").write_bytes(b"s")
    w = window("2026-11-21", "2026-11-22")
    allowed = (str(tmp_path / "in"),)
    assert names(list_videos(f"{tmp_path}/in/dt={{date}}/", None, allowed, window=w)) == [
        "a.mp4",
        "b.mov",
    ]
    for escape in (f"{tmp_path}/in/../secret/dt={{date}}/", f"{tmp_path}/secret/dt={{date}}/"):
        with pytest.raises(ConfigError, match="is not allowed: outside the allowed input"):
            list(list_videos(escape, None, allowed, window=w))


def test_template_root_is_the_folder_above_the_date_field():
    assert template_root("s3://uploads/dt={date}/") == "s3://uploads/"
    assert template_root("s3://uploads/{date:%Y/%m/%d}/") == "s3://uploads/"
    assert template_root("s3://uploads/day") == "s3://uploads/day"  # not a template


# ---------------------------------------------------------------- manifests with uploaded_at
@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_window_filters_on_uploaded_at_not_the_store(tmp_path: Path, kind: str):
    # Every file's store mtime is inside the window: only uploaded_at decides.
    paths = {n: str(touch(tmp_path / f"{n}.mp4", DAY_21)) for n in ("in", "late", "blank", "gone")}
    rows = [
        (paths["in"], "2026-11-21T23:59:59Z"),
        (paths["late"], "2026-11-22T00:00:00Z"),
        (paths["blank"], None),  # unknown upload time: left out and counted
        (paths["gone"], "2026-11-21"),
        (paths["in"], "2026-11-25"),  # a duplicate: its first row counts
    ]
    os.remove(paths["gone"])  # listed, in the window, deleted since: still gets a row
    manifest = tmp_path / f"m.{kind}"
    if kind == "csv":
        manifest.write_text("uri,uploaded_at\n" + "".join(f"{u},{t or ''}\n" for u, t in rows))
    elif kind == "jsonl":
        manifest.write_text(
            "".join(json.dumps({"uri": u, "uploaded_at": t}) + "\n" for u, t in rows)
        )
    else:
        stamps = [dt.datetime.fromisoformat(t).replace(tzinfo=UTC) if t else None for _, t in rows]
        pq.write_table(pa.table({"uri": [u for u, _ in rows], "uploaded_at": stamps}), manifest)
    report = ListingReport()
    files = list(
        list_videos(str(manifest), window=window("2026-11-21", "2026-11-22"), report=report)
    )
    assert [(n, f.size_bytes) for n, f in zip(names(files), files, strict=True)] == [
        ("in.mp4", 1),
        ("gone.mp4", -1),
    ]
    assert (report.outside_window, report.no_time) == (1, 1)
    # The upload time rides along (the shard partition goes by it), the store's mtime too.
    assert [(f.uploaded_at, f.mtime) for f in files] == [
        (dt.datetime(2026, 11, 21, 23, 59, 59, tzinfo=UTC).timestamp(), DAY_21.timestamp()),
        (DAY_21.timestamp(), None),
    ]
    unwindowed = list(list_videos(str(manifest)))
    everything = dict(zip(names(unwindowed), unwindowed, strict=True))
    assert len(everything) == 4  # no window: uploaded_at is ignored
    # An empty cell is no upload time for the shard partition too, not the store's mtime.
    blank = VideoHasher(1 << 30).hash_one(everything["blank.mp4"])
    assert partition_date(blank.upload_time) == DEFAULT_PARTITION


def test_manifest_without_uploaded_at_uses_the_store_mtime(tmp_path: Path):
    old, new = touch(tmp_path / "old.mp4", DAY_20), touch(tmp_path / "new.mp4", DAY_21)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri\n{old}\n{new}\n{tmp_path / 'gone.mp4'}\n")
    report = ListingReport()
    files = list(
        list_videos(str(manifest), window=window("2026-11-21", "2026-11-22"), report=report)
    )
    assert names(files) == ["new.mp4"]
    assert files[0].uploaded_at is None  # upload time: the store's mtime
    assert (report.outside_window, report.no_time) == (1, 1)  # gone: no mtime to judge by


def test_manifest_with_a_bad_uploaded_at_is_a_config_error(tmp_path: Path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": "/v.mp4", "uploaded_at": 1795219200}) + "\n")
    with pytest.raises(ConfigError, match="uploaded_at must hold ISO dates"):
        list(list_videos(str(manifest), window=window("2026-11-21", "2026-11-22")))
    (tmp_path / "m.csv").write_text("uri,uploaded_at\n/v.mp4,last tuesday\n")
    with pytest.raises(ConfigError, match="'last tuesday' is not an ISO date"):
        list(list_videos(str(tmp_path / "m.csv"), window=window("2026-11-21", "2026-11-22")))


# ---------------------------------------------------------------- S3 (moto)
@pytest.fixture(scope="module")
def moto_s3() -> Iterator[dict[str, Any]]:
    """moto's S3 server on loopback: LastModified as a real store reports it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {
            "key": "k",
            "secret": "s",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
        }
    finally:
        server.stop()


@pytest.mark.services
def test_s3_day_template_and_last_modified_window(moto_s3: dict[str, Any]):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **moto_s3)
    fs.mkdir("uploads")
    for key in ("dt=2026-11-20/x.mp4", "dt=2026-11-21/a.mp4", "dt=2026-11-21/b.mp4", "y.mp4"):
        fs.pipe_file(f"uploads/{key}", b"v")
    w = window("2026-11-21", "2026-11-23")  # the 22nd has no prefix at all
    report = ListingReport()
    files = list(list_videos("s3://uploads/dt={date}/", moto_s3, window=w, report=report))
    assert [f.uri for f in files] == [
        "s3://uploads/dt=2026-11-21/a.mp4",
        "s3://uploads/dt=2026-11-21/b.mp4",
    ]
    assert report.empty_days == ["s3://uploads/dt=2026-11-22/"]
    # LastModified (a datetime from the store) against a window: the hour around now.
    now = dt.datetime.now(UTC)
    around = TimeWindow(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    assert len(list(list_videos("s3://uploads/", moto_s3, window=around))) == 4
    past = TimeWindow(None, now - dt.timedelta(hours=1))
    assert list(list_videos("s3://uploads/", moto_s3, window=past)) == []


# ---------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--since", "last week"], "argument --since: not a date: 'last week'"),
        (["--until", "2026-11-21T10:00"], "argument --until: '2026-11-21T10:00' has no timezone"),
    ],
)
def test_cli_unparsable_date_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
):
    with pytest.raises(SystemExit) as exc:
        main(["scan", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dfscan: error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    "suffix, flags, message",
    [
        ("", ["--since", "2026-11-22", "--until", "2026-11-21"], "is not before --until"),
        ("", ["--since", "today", "--until", "yesterday"], "is not before --until"),
        ("/dt={date}/", [], "needs --since and --until"),
        ("/dt={date}/", ["--since", "yesterday"], "needs --since and --until"),
        ("/dt={date}/", ["--since", "2026-11-21T06:00Z", "--until", "today"], "UTC midnight"),
        ("/{date:%Y/%m}/", ["--since", "yesterday", "--until", "today"], "does not name the day"),
    ],
)
def test_cli_bad_window_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
    flags: list[str],
    message: str,
):
    code = main(["scan", f"{tmp_path}{suffix}", "--out", str(tmp_path / "out"), *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dfscan: error: ") and err.count("\n") == 1
    assert message in err


def scan_rows(out: Path) -> dict[str, tuple[str, str]]:
    """uri file name -> (status, run_id) of every warehouse row."""
    import duckdb

    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        found = con.execute("SELECT uri, status, run_id FROM video_scans").fetchall()
    finally:
        con.close()
    return {uri.rsplit("/", 1)[-1]: (status, run) for uri, status, run in found}


def scan_argv(input_uri: str, out: Path, checkpoint: Path, run_id: str) -> list[str]:
    return ["scan", input_uri, "--out", str(out), "--model", str(checkpoint)] + [
        "--frames", "uniform:4", "--run-id", run_id, "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_nightly_scans_of_a_folder_scan_one_day_each(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
):
    uploads, out = tmp_path / "uploads", tmp_path / "out"
    noon = dt.timedelta(hours=12)
    for name, day in (("talking_head_d18.mp4", DAY_20), ("talking_head_d19.mp4", DAY_21)):
        touch(uploads / name, day + noon, (REAL_VIDEOS / name).read_bytes())
    touch(uploads / "notes.txt", DAY_21 + noon, b"not a video")

    night_1 = ["--since", "2026-11-21", "--until", "2026-11-22"]
    assert main([*scan_argv(str(uploads), out, tiny_checkpoint, "night-1"), *night_1]) == 0
    assert scan_rows(out) == {
        "talking_head_d19.mp4": ("scored", "night-1"),
        "notes.txt": ("unsupported", "night-1"),  # a non-video in the window still has a row
    }
    # The summary says what the window left out: a filtered run is not an empty one.
    assert (
        "left out by the listing: 1 uploaded outside the window · 0 without an upload time"
        " · 0 manifest entries without a URI"
    ) in " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    night_2 = ["--since", "2026-11-20", "--until", "2026-11-21"]
    assert main([*scan_argv(str(uploads), out, tiny_checkpoint, "night-2"), *night_2]) == 0
    assert scan_rows(out) == {
        "talking_head_d18.mp4": ("scored", "night-2"),
        "talking_head_d19.mp4": ("scored", "night-1"),
        "notes.txt": ("unsupported", "night-1"),
    }


@pytest.mark.slow
def test_scan_of_a_date_template_scans_only_the_window_days(tmp_path: Path, tiny_checkpoint: Path):
    import duckdb

    uploads, out = tmp_path / "uploads", tmp_path / "out"
    for name, day in (
        ("talking_head_d18.mp4", "2026-11-20"),
        ("talking_head_d19.mp4", "2026-11-21"),
    ):
        (uploads / f"dt={day}").mkdir(parents=True)
        shutil.copy(REAL_VIDEOS / name, uploads / f"dt={day}" / name)  # mtime: now
    argv = scan_argv(f"{uploads}/dt={{date}}/", out, tiny_checkpoint, "days-21-22")
    assert main([*argv, "--since", "2026-11-21", "--until", "2026-11-23"]) == 0  # 22nd: none
    assert scan_rows(out) == {"talking_head_d19.mp4": ("scored", "days-21-22")}
    # Its faces are filed under the upload day, not under the copy's mtime (today).
    assert [p.name for p in (out / "faces").glob("dt=*")] == ["dt=2026-11-21"]
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    run = con.execute("SELECT config FROM scan_runs WHERE run_id = 'days-21-22'").fetchone()
    con.close()
    assert run is not None
    recorded = json.loads(run[0])["window"]  # the run record says which days it covered
    assert parse_instant(recorded["since"].replace(" ", "T")) == DAY_21
    assert parse_instant(recorded["until"].replace(" ", "T")) == DAY_22 + dt.timedelta(days=1)


def test_cli_default_prefix_of_a_template_is_its_root_and_dot_dot_escapes_are_refused():
    nightly = ["--since", "2026-11-21", "--until", "2026-11-22"]
    args = build_parser().parse_args(["scan", "s3://uploads/dt={date}/", *nightly])
    assert limits_from_args(args).allow_prefixes == ("file:///", "s3://uploads/")
    sneaky = "s3://uploads/../private/dt={date}/"  # refused before any request is made
    prefixes = limits_from_args(build_parser().parse_args(["scan", sneaky, *nightly]))
    with pytest.raises(ConfigError, match="dt=2026-11-21/ is not allowed: outside"):
        list(list_videos(sneaky, None, prefixes.allow_prefixes, window=window(*nightly[1::2])))
