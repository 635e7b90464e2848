"""Security: inputs only from allowed prefixes, detector models only with known hashes,
and no credential in any output a scan leaves behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from operators.detect_faces import build_detector, verify_detector_model
from operators.uri_policy import UriPolicy, default_prefixes
from pipelines.cli import main
from pipelines.config import ConfigError, DetectorConfig
from tests.conftest import REAL_VIDEOS
from tests.media import encode_clip, noise_frames

ROOT = Path(__file__).resolve().parent.parent


# --- which URIs may be read -----------------------------------------------------------


def test_prefixes_match_whole_segments_after_resolving_dots_and_symlinks(tmp_path: Path):
    uploads = tmp_path / "uploads"
    (uploads / "day").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "x.mp4").write_bytes(b"x")
    (uploads / "link.mp4").symlink_to(tmp_path / "secret" / "x.mp4")
    policy = UriPolicy.build([str(uploads)])
    assert policy.allows(str(uploads / "day" / "a.mp4"))
    assert policy.allows("file://" + str(uploads / "a.mp4"))
    assert not policy.allows(str(uploads) + "-private/a.mp4")  # a sibling, not a child
    assert not policy.allows(str(uploads / ".." / "secret" / "x.mp4"))
    assert not policy.allows(str(uploads / "link.mp4"))  # a symlink out of the prefix
    assert not policy.allows("s3://bucket/a.mp4")


def test_remote_keys_must_stay_under_the_prefix_however_they_are_read():
    policy = UriPolicy.build(["s3://uploads/in/"])
    assert policy.allows("s3://uploads/in/a.mp4")
    assert policy.allows("S3://uploads/in/a.mp4")  # schemes are case-insensitive
    assert not policy.allows("s3://uploads/in/../secret/a.mp4")  # normalised: outside
    assert not policy.allows("s3://uploads/in/%2e%2e/secret/a.mp4")  # percent-encoded dots
    assert not policy.allows("s3://uploads/inbox/a.mp4")
    assert not policy.allows("http://169.254.169.254/latest/meta-data/")
    assert "chained" in (policy.refusal("zip://a.mp4::s3://uploads/in/z.zip") or "")
    assert UriPolicy.build([]).allows("http://anything/at/all")  # library default: open


def test_the_cli_default_allows_local_files_and_the_given_input_only():
    assert default_prefixes("/data/in", False) == ("file:///",)
    assert default_prefixes("s3://b/day/", False) == ("file:///", "s3://b/day/")
    assert default_prefixes("s3://b/manifests/m.csv", True) == ("file:///", "s3://b/")
    # The input a default came from is itself allowed, with or without its slash.
    for given in ("s3://b/day/", "s3://b/day", "s3://b/", "gs://b/day/"):
        policy = UriPolicy.build(default_prefixes(given, False))
        assert policy.allows(given) and policy.allows(given.rstrip("/") + "/x.mp4")
    assert not UriPolicy.build(["s3://b/day/"]).allows("s3://b/day-private/x.mp4")


@pytest.fixture()
def upload_tree(tmp_path: Path) -> dict[str, Path]:
    uploads, secret = tmp_path / "uploads", tmp_path / "secret"
    uploads.mkdir()
    secret.mkdir()
    files = {
        "ok": encode_clip(uploads / "ok.mp4", noise_frames(6, (64, 48), 1)),
        "outside": encode_clip(secret / "outside.mp4", noise_frames(6, (64, 48), 2)),
        "dotdot": encode_clip(secret / "dotdot.mp4", noise_frames(6, (64, 48), 3)),
        "linked": encode_clip(secret / "linked.mp4", noise_frames(6, (64, 48), 4)),
    }
    (uploads / "link.mp4").symlink_to(files["linked"])
    manifest = tmp_path / "manifest.csv"
    entries = [
        str(files["ok"]),
        str(files["outside"]),
        str(uploads / ".." / "secret" / "dotdot.mp4"),
        str(uploads / "link.mp4"),
        "http://169.254.169.254/latest/meta-data/iam.mp4",
        "zip://x.mp4::file://" + str(files["outside"]),
    ]
    manifest.write_text("uri\n" + "\n".join(entries) + "\n")
    return {"uploads": uploads, "secret": secret, "manifest": manifest}


def test_manifest_entries_outside_the_allowed_prefix_are_rows_never_reads(
    upload_tree, tmp_path: Path, tiny_checkpoint: Path
):
    secret = upload_tree["secret"]
    for f in secret.iterdir():
        os.utime(f, (0, f.stat().st_mtime))
    out = tmp_path / "out"
    args = ["scan", str(upload_tree["manifest"]), "--out", str(out), "--no-progress"]
    args += ["--model", str(tiny_checkpoint), "--frames", "uniform:2"]
    assert main([*args, "--allow-prefix", str(upload_tree["uploads"])]) == 0
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    sql = "SELECT uri, status || ': ' || coalesce(error, '') FROM video_scans"
    got = dict(con.execute(sql).fetchall())
    con.close()
    assert len(got) == 6
    ok = [u for u in got if u.endswith("uploads/ok.mp4")]
    assert len(ok) == 1 and got.pop(ok[0]).startswith("no_face")
    for uri, status in got.items():
        assert status.startswith("unsupported: "), uri
        assert "allowed input prefixes" in status or "chained" in status, (uri, status)
    read = [f.name for f in secret.iterdir() if f.stat().st_atime != 0]
    assert not read, f"read outside the allowed prefix: {read}"


def test_an_input_outside_the_allowed_prefix_is_a_one_line_error(tmp_path, capsys, tiny_checkpoint):
    args = ["scan", str(REAL_VIDEOS), "--out", str(tmp_path), "--model", str(tiny_checkpoint)]
    assert main([*args, "--allow-prefix", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not allowed: outside the allowed input prefixes" in err


# --- detector models are checked against the manifest --------------------------------


def test_a_detector_model_with_another_hash_is_refused_in_one_line(tmp_path: Path, capsys):
    real = Path(DetectorConfig.build("scrfd-500m").model_path)
    tampered = tmp_path / "det_500m.onnx"
    data = bytearray(real.read_bytes())
    data[-1] ^= 0xFF  # one bit flipped in the weights
    tampered.write_bytes(bytes(data))
    cfg = DetectorConfig.build("scrfd-500m", str(tampered))
    with pytest.raises(ConfigError, match="refusing to load it") as err:
        build_detector(cfg).load()
    assert "\n" not in str(err.value)
    # Another genuine model under the wrong name is refused too.
    other = DetectorConfig.build("scrfd-500m", DetectorConfig.build("scrfd-2.5g").model_path)
    with pytest.raises(ConfigError, match="manifest.json lists for --detector scrfd-500m"):
        verify_detector_model(other)
    # A model of one's own is accepted with its hash given explicitly.
    own = DetectorConfig.build("scrfd-500m", str(tampered), model_sha256=_sha(tampered))
    assert verify_detector_model(own) == _sha(tampered)


def test_the_scan_refuses_a_tampered_detector_before_any_video(tmp_path, capsys, tiny_checkpoint):
    tampered = tmp_path / "det.onnx"
    data = bytearray(Path(DetectorConfig.build("scrfd-500m").model_path).read_bytes())
    data[100] ^= 0x01
    tampered.write_bytes(bytes(data))
    args = ["scan", str(REAL_VIDEOS / "hamilton_clip.mp4"), "--out", str(tmp_path / "o")]
    args += ["--model", str(tiny_checkpoint), "--detector-model", str(tampered), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dfscan: error: detector model")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- no credential in any output ------------------------------------------------------

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIADFSCANLEAKTEST01",
    "AWS_SECRET_ACCESS_KEY": "leak-env-aws-secret-Zq9xW2",
    "AWS_SESSION_TOKEN": "leak-env-session-token-Pp4Rt7",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON": "leak-env-gcp-json-Kk1Mm3",
    "DFSCAN_PG_PASSWORD": "leak-env-pg-password-Yy6Uu8",
}
OPTION_SECRETS = {"secret": "leak-opt-secret-Aa1Bb2", "token": "leak-opt-token-Cc3Dd4"}
PUSH_PASSWORD = "leak-url-push-password-Ee5Ff6"


def test_no_secret_reaches_any_output(tmp_path: Path, tiny_checkpoint: Path):
    """Secrets in the environment, in --storage-options and in a URL's password; a scan
    with a failing file, a crashed decoder and an unreachable Pushgateway (so error
    paths and warnings run too); then every output is searched for every secret."""
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(REAL_VIDEOS / "hamilton_clip.mp4", videos / "face.mp4")
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    encode_clip(videos / "fault-abort.mp4", noise_frames(4, (64, 48), 9))
    out = tmp_path / "out"
    env = {**os.environ, **SECRETS, "DFSCAN_TEST_FAULTS": "abort=fault-abort"}
    options = {**OPTION_SECRETS, "auto_mkdir": True}
    cmd = [sys.executable, "-m", "pipelines.cli", "scan", str(videos), "--out", str(out)]
    cmd += ["--model", str(tiny_checkpoint), "--frames", "uniform:4", "--no-progress"]
    cmd += ["--storage-options", json.dumps(options)]
    cmd += ["--pushgateway", f"http://dfscan:{PUSH_PASSWORD}@127.0.0.1:9/", "--push-interval", "60"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    outputs: dict[str, str] = {"stdout": done.stdout, "stderr": done.stderr}
    for path in out.rglob("*"):
        if path.is_file():
            outputs[str(path)] = path.read_bytes().decode("latin-1")
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    sql = "SELECT table_name FROM information_schema.tables"
    tables = [t for (t,) in con.execute(sql).fetchall()]
    for table in tables:
        outputs[f"table {table}"] = repr(con.execute(f'SELECT * FROM "{table}"').fetchall())
    statuses = dict(
        con.execute("SELECT status, count(*) FROM video_scans GROUP BY status").fetchall()
    )
    con.close()
    assert statuses == {"scored": 1, "decode_error": 2}  # the error paths did run
    assert "scan_runs" in tables and "video_scans" in tables
    for shard in (out / "faces").rglob("*.parquet"):
        outputs[f"shard {shard}"] = repr(pq.read_table(shard).to_pylist())
    assert any(k.startswith("shard") for k in outputs)

    secrets = [*SECRETS.values(), *OPTION_SECRETS.values(), PUSH_PASSWORD]
    leaks = [(where, s) for where, text in outputs.items() for s in secrets if s in text]
    assert not leaks, leaks
    assert "metrics push to" in done.stderr  # the warning that used to print the URL


def test_the_run_record_masks_url_passwords_and_drops_storage_options():
    from pipelines.config import EngineConfig, ScanConfig
    from pipelines.scan import config_json

    cfg = ScanConfig(
        input_uri="s3://b/in/",
        out_uri="s3://b/out",
        warehouse_url="postgresql://dfscan:pg-pass-1@db:5432/dfscan",
        run_id="r",
        storage_options={"secret": "opt-secret-2"},
        pushgateway="http://metrics:push-pass-3@gw:9091",
        engine=EngineConfig("beam", beam_args=("--temp_location=gs://t?token=arg-token-4",)),
    )
    text = config_json(cfg)
    for secret in ("pg-pass-1", "opt-secret-2", "push-pass-3", "arg-token-4"):
        assert secret not in text
    record = json.loads(text)
    assert record["warehouse_url"] == "postgresql://dfscan:***@db:5432/dfscan"
    assert "storage_options" not in record
