"""Fixtures: one per state of the world. Real videos and models come from ../shared."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.config import shared_dir
from tests.media import restore_scheduling, scheduling

SHARED = shared_dir()
REAL_VIDEOS = SHARED / "data" / "videos" / "real"
FACE_CROP_VIDEOS = SHARED / "data" / "videos" / "face_crops"
IMAGES = SHARED / "data" / "images"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# ONNX graphs the scorer exports (the default CPU backend) go to a throwaway folder, not
# the user's cache; set before any scan so Ray/Beam workers and subprocesses inherit it.
os.environ.setdefault("DFSCAN_CACHE_DIR", tempfile.mkdtemp(prefix="dfscan-cache-"))


_SESSION_SCHEDULING = scheduling()


@pytest.fixture(autouse=True)
def _keeps_the_scheduling_policy() -> Iterator[None]:
    """A test must leave the process on the policy the session started with: whatever it
    starts later inherits it (see ``tests.media.keeps_scheduling`` for the encoder that
    does otherwise). The test that changed it fails, and the policy is put back so the
    rest of the suite runs as it should."""
    yield
    now = scheduling()
    if restore_scheduling(_SESSION_SCHEDULING):
        pytest.fail(
            f"the test left this process on scheduling policy {now}, not {_SESSION_SCHEDULING}"
        )


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        pytest.fail(f"shared models and data are missing at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def obama_rgb() -> np.ndarray:
    """A frontal face photo, 160 px tall, RGB."""
    img = cv2.imread(str(IMAGES / "obama.jpg"))
    assert img is not None
    h, w = img.shape[:2]
    img = cv2.resize(img, (int(w * 160 / h), 160))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# One face of labelled crops: (video name, REAL/FAKE, original). Its image is
# ``<video>.jpg``: a real DFDC crop, or the bytes given for that video.
CropRow = tuple[str, str, str]
CropsFolder = Callable[..., Path]


@pytest.fixture
def crops_folder(tmp_path: Path) -> CropsFolder:
    """Build a small ``labels.csv`` crops folder (the dfdc224 layout) under tmp_path:
    ``crops_folder(rows, images={video: bytes})``. Every image not given is a copy of one
    DFDC crop, so loading is real and fast; the labels are what the test says."""
    import csv

    face = SHARED / "data" / "faces" / "dfdc224" / "faces_224" / "tkrworlkkq.jpg"

    def build(rows: list[CropRow], images: dict[str, bytes] | None = None) -> Path:
        root = tmp_path / "crops"
        root.mkdir()
        with (root / "labels.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "videoname", "label", "original"])
            for video, label, original in rows:
                writer.writerow(
                    [f"{video}.jpg", f"{video}.mp4", label, original and f"{original}.mp4"]
                )
                data = (images or {}).get(video)
                (root / f"{video}.jpg").write_bytes(face.read_bytes() if data is None else data)
        return root

    return build


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2 with ImageNet features and a random head: real code path, scores that
    depend on the image, no training time. Not a detector of anything."""
    import torch

    from operators.models.checkpoints import CheckpointMeta, save_checkpoint
    from operators.models.scorers import build_network

    torch.manual_seed(0)
    imagenet = SHARED / "models" / "imagenet" / "mobilenet_v2-b0353104.pth"
    net = build_network("mobilenet_v2", str(imagenet))
    head = net.classifier[-1]
    torch.nn.init.normal_(head.weight, std=0.05)  # large enough that scores spread out
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    meta = CheckpointMeta(
        arch="mobilenet_v2",
        input_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        crop_scale=1.3,
        training_data="none (ImageNet features, random head; tests)",
        metrics={},
        created_at=0.0,
        code_version="test",
    )
    save_checkpoint(net.state_dict(), meta, str(path))
    return path


# --- PostgreSQL server (used by tests/test_postgres_warehouse.py) ---------------------
def _postgres_bindir() -> Path:
    """Debian's server binaries (apt: postgresql), or DFSCAN_PG_BIN, newest version first."""
    env = os.environ.get("DFSCAN_PG_BIN")
    candidates = [Path(env)] if env else sorted(Path("/usr/lib/postgresql").glob("*/bin"))[::-1]
    for bindir in candidates:
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    pytest.fail("PostgreSQL server binaries not found: apt-get install postgresql")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a loopback port with password auth, per session.

    Debian's postgres refuses to run as root, so as root the server runs as the
    ``postgres`` user, in a directory under /tmp (pytest's tmp dirs are 0700 root).
    Yields ``postgresql://dfscan:SECRET@127.0.0.1:PORT/dfscan``.
    """
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    import psycopg

    bindir = _postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="dfscan-pg-"))
    uid = gid = None
    groups: list[int] | None = None
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("as root, the server needs a 'postgres' user: apt-get install postgresql")
        uid, gid, groups = pw.pw_uid, pw.pw_gid, []
    password = "dfscan-test-secret"
    (root / "pwfile").write_text(password + "\n")
    (root / "sock").mkdir()
    if uid is not None and gid is not None:
        for path in (root, root / "pwfile", root / "sock"):
            os.chown(path, uid, gid)
    data, log = root / "data", root / "postgres.log"
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "dfscan", "-E", "UTF8"]
    initdb += ["--pwfile", str(root / "pwfile"), "--auth", "scram-sha-256", "--no-sync"]
    done = subprocess.run(
        initdb, capture_output=True, text=True, cwd=root, user=uid, group=gid, extra_groups=groups
    )
    if done.returncode != 0:
        pytest.fail(f"initdb failed: {done.stderr[-2000:]}")
    port = _free_port()
    server = [str(bindir / "postgres"), "-D", str(data), "-k", str(root / "sock")]
    server += ["-p", str(port), "-c", "listen_addresses=127.0.0.1"]
    # Throwaway data: durability costs time and buys nothing here.
    server += ["-c", "fsync=off", "-c", "full_page_writes=off"]
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(
            server,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=root,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    admin = f"postgresql://dfscan:{password}@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"postgres exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=2) as con:
                    con.execute("CREATE DATABASE dfscan")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"postgres did not answer in 30 s: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield f"postgresql://dfscan:{password}@127.0.0.1:{port}/dfscan"
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown: open test connections are cut
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
