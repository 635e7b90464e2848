"""The whole scan on the embedded defaults: local runner, local files, DuckDB."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from operators.decode_frames import FrameDecoder
from operators.write_face_shards import FaceShardWriter, read_face_shards
from pipelines.cli import main
from pipelines.config import (
    DetectorConfig,
    LimitsConfig,
    SamplingConfig,
    ScanConfig,
    ScorerConfig,
)
from pipelines.scan import run_scan
from tests.conftest import FACE_CROP_VIDEOS, REAL_VIDEOS
from tests.media import face_frames, truncate, write_audio_only, write_video
from tests.test_write_face_shards import video as faces_video

pytestmark = pytest.mark.slow


def scan_config(input_uri: Path | str, out: Path, checkpoint: Path, **kw) -> ScanConfig:
    return ScanConfig(
        input_uri=str(input_uri),
        out_uri=str(out),
        warehouse_url=f"duckdb://{out}/scans.duckdb",
        run_id=kw.pop("run_id", "run-1"),
        sampling=SamplingConfig.parse(kw.pop("frames", "uniform:16")),
        detector=DetectorConfig.build("scrfd-500m"),
        scorer=ScorerConfig(checkpoint=str(checkpoint)),
        progress=False,
        **kw,
    )


def rows(out: Path) -> list[dict]:
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        cur = con.execute("SELECT * FROM video_scans ORDER BY uri")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


@pytest.fixture(scope="module")
def real_scan(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    out = tmp_path_factory.mktemp("real_scan")
    summary = run_scan(scan_config(REAL_VIDEOS, out, tiny_checkpoint))
    return out, summary


def test_every_real_video_gets_one_scored_row(real_scan):
    out, summary = real_scan
    got = rows(out)
    assert len(got) == len(list(REAL_VIDEOS.glob("*.mp4"))) == summary.videos
    assert {r["status"] for r in got} == {"scored"}
    for r in got:
        assert 0.0 <= r["fake_probability"] <= 1.0
        assert r["label"] in ("FAKE", "REAL")
        assert r["frames_sampled"] == 16
        assert r["faces"] >= r["frames_with_face"] > 0
        assert r["model_version"].startswith("mobilenet_v2-")
        assert r["detector"] == "scrfd-500m" and len(r["detector_sha256"]) == 64
        assert r["decode_s"] > 0 and r["detect_s"] > 0 and r["score_s"] > 0


def test_hamilton_opening_shot_has_two_tracks(real_scan):
    """The clip opens on two people (singer and pianist) and then cuts between shots of
    the stage and the audience: the two opening faces keep one track each over the
    opening shot's samples, and every later shot starts new tracks."""
    out, _ = real_scan
    ham = next(r for r in rows(out) if r["uri"].endswith("hamilton_clip.mp4"))
    tracks = json.loads(ham["track_scores"])
    opening = {t["track_id"]: [f[0] for f in t["frames"]] for t in tracks if t["track_id"] < 2}
    assert opening == {0: [0, 18], 1: [0, 18]}  # uniform:16 samples frames 0, 18, 37, ...
    assert all(f[0] > 18 for t in tracks if t["track_id"] >= 2 for f in t["frames"])
    assert ham["tracks"] == len(tracks) > 2


def test_scores_differ_between_videos(real_scan):
    out, _ = real_scan
    probs = [r["score_mean"] for r in rows(out)]
    assert len({round(p, 6) for p in probs}) > 1


def test_face_shards_hold_every_detected_face(real_scan):
    out, _ = real_scan
    table = read_face_shards(str(out / "faces"))
    per_video = {r["video_id"]: r["faces"] for r in rows(out)}
    assert table.num_rows == sum(per_video.values())
    counts: dict[str, int] = {}
    for vid in table.column("video_id").to_pylist():
        counts[vid] = counts.get(vid, 0) + 1
    assert counts == per_video
    assert set(table.column("run_id").to_pylist()) == {"run-1"}


def test_run_is_recorded_with_counts(real_scan):
    out, summary = real_scan
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    status, counts = con.execute(
        "SELECT status, counts_by_status FROM scan_runs WHERE run_id = 'run-1'"
    ).fetchone()
    con.close()
    assert status == "succeeded"
    assert json.loads(counts) == {"scored": summary.videos}
    text = (out / "metrics.prom").read_text()
    assert f'dfscan_videos_total{{status="scored"}} {float(summary.videos)}' in text


def test_rerun_replaces_rows_with_the_same_values(tmp_path, tiny_checkpoint: Path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("talking_head_d0.mp4", "hamilton_clip.mp4"):
        shutil.copy(REAL_VIDEOS / name, videos / name)
    out = tmp_path / "out"
    run_scan(scan_config(videos, out, tiny_checkpoint, frames="uniform:8"))
    before = {r["video_id"]: r for r in rows(out)}
    run_scan(
        scan_config(videos, out, tiny_checkpoint, run_id="run-2", frames="uniform:8", rescan=True)
    )
    after = {r["video_id"]: r for r in rows(out)}
    assert len(after) == 2 and after.keys() == before.keys()
    for vid, r in after.items():
        assert r["run_id"] == "run-2"
        assert r["fake_probability"] == pytest.approx(before[vid]["fake_probability"], abs=1e-6)
        assert r["faces"] == before[vid]["faces"] and r["tracks"] == before[vid]["tracks"]
    # Same batches, same part names: the shards were replaced, not duplicated.
    assert read_face_shards(str(out / "faces")).num_rows == sum(r["faces"] for r in after.values())


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory, obama_rgb: np.ndarray) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "zero.mp4").write_bytes(b"")
    truncate(REAL_VIDEOS / "hamilton_clip.mp4", d / "truncated.mp4", 150_000)
    (d / "text.mp4").write_text("definitely not a video\n" * 20)
    write_audio_only(d / "audio_only.mp4")
    write_video(d / "no_face.mp4", n=20)  # decodes fine, nobody in it
    # Valid container whose video packets are gone: nothing can be decoded.
    good = write_video(d / "tmp_face.mp4", face_frames(obama_rgb, n=20))
    data = bytearray(good.read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + 4 :] = bytes(len(data) - mdat - 4)
    (d / "undecodable.mp4").write_bytes(bytes(data))
    shutil.move(str(good), d / "face.mp4")
    return d


EXPECTED = {
    "zero.mp4": "unsupported",
    "truncated.mp4": "decode_error",
    "text.mp4": "unsupported",
    "audio_only.mp4": "unsupported",
    "no_face.mp4": "no_face",
    "undecodable.mp4": "decode_error",
    "face.mp4": "scored",
}


def test_each_bad_input_gets_exactly_one_row_with_its_status(bad_inputs, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    code = main(
        [
            "scan",
            str(bad_inputs),
            "--out",
            str(out),
            "--model",
            str(tiny_checkpoint),
            "--frames",
            "uniform:8",
            "--no-progress",
        ]
    )
    assert code == 0
    got = {Path(r["uri"]).name: r for r in rows(out)}
    assert {k: v["status"] for k, v in got.items()} == EXPECTED
    for name, r in got.items():
        if EXPECTED[name] in ("unsupported", "decode_error"):
            assert r["error"], name
            assert r["fake_probability"] is None and r["label"] is None


def test_a_manifest_entry_deleted_before_the_scan_gets_a_decode_error_row(
    tmp_path, tiny_checkpoint
):
    present = tmp_path / "present.mp4"
    shutil.copy(REAL_VIDEOS / "talking_head_d0.mp4", present)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri\n{present}\n{tmp_path / 'gone.mp4'}\n")
    out = tmp_path / "out"
    summary = run_scan(scan_config(manifest, out, tiny_checkpoint, frames="uniform:4"))
    assert dict(summary.counts) == {"scored": 1, "decode_error": 1}
    [gone] = [r for r in rows(out) if r["uri"].endswith("gone.mp4")]
    assert gone["status"] == "decode_error"
    assert gone["error"] == "the file cannot be read: FileNotFoundError"


def test_timeout_ends_a_slow_video_with_status_timeout(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    cfg = scan_config(
        REAL_VIDEOS / "hamilton_clip.mp4", out, tiny_checkpoint, limits=LimitsConfig(timeout_s=1e-6)
    )
    summary = run_scan(cfg)
    assert dict(summary.counts) == {"timeout": 1}
    assert rows(out)[0]["status"] == "timeout"


def test_cli_bad_argument_is_one_line_and_exit_2(capsys, tiny_checkpoint):
    with pytest.raises(SystemExit) as exc:
        main(["scan", str(REAL_VIDEOS), "--threshold", "2", "--model", str(tiny_checkpoint)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("dfscan: error:")
    assert "--threshold" in err


def test_cli_bad_frames_policy_is_one_line_and_exit_2(capsys, tmp_path, tiny_checkpoint):
    args = ["scan", str(REAL_VIDEOS), "--out", str(tmp_path), "--model", str(tiny_checkpoint)]
    assert main([*args, "--frames", "uniform:0"]) == 2
    assert capsys.readouterr().err == "dfscan: error: --frames uniform:N needs N >= 1, got 0\n"


def test_cli_bad_setting_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["scan", str(REAL_VIDEOS), "--out", str(tmp_path), "--model", "/nope.pt"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "dfscan: error: no model at /nope.pt: pass --model CKPT or train one with `dfscan train`"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["scan", "bogus://bucket/uploads/", "--out", "{out}"],
        ["scan", "{real}", "--out", "bogus://bucket/out"],
        ["scan", "{real}", "--out", "{out}", "--model", "bogus://bucket/m.pt"],
        ["rescore", "--faces", "bogus://bucket/faces", "--model", "m.pt"],
        ["report", "--faces", "bogus://bucket/faces", "--out", "{out}"],
        ["shards", "ls", "bogus://bucket/faces"],
    ],
)
def test_an_unknown_storage_scheme_is_one_line_before_any_work(capsys, tmp_path, argv):
    # An unknown scheme, or a known one whose driver is not installed (gs:// without
    # gcsfs), is found before any work, not as a traceback deep inside a stage.
    argv = [a.format(real=REAL_VIDEOS, out=tmp_path / "o") for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    uri = next(a for a in argv if a.startswith("bogus://"))
    assert (code, err) == (2, f"dfscan: error: cannot open {uri}: Protocol not known: bogus\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("own_warehouse", [False, True])
def test_an_out_that_cannot_be_made_is_one_line_before_any_decode(
    capsys, tmp_path, tiny_checkpoint, own_warehouse
):
    (tmp_path / "a-file").write_bytes(b"x")
    out = tmp_path / "a-file" / "out"  # under a regular file: no folder can be made there
    wh = ["--warehouse", f"duckdb://{tmp_path}/wh.duckdb"] if own_warehouse else []
    argv = ["scan", str(REAL_VIDEOS), "--out", str(out), "--model", str(tiny_checkpoint), *wh]
    assert main(argv) == 2
    what = f"--out {out}" if own_warehouse else f"warehouse duckdb://{out}/scans.duckdb"
    verb = "write" if own_warehouse else "create"
    assert capsys.readouterr().err == f"dfscan: error: cannot {verb} {what}: Not a directory\n"
    if own_warehouse:  # refused before the run began: no run record, no row
        con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
        counts = [
            con.execute(f"SELECT count(*) FROM {t}").fetchone()
            for t in ("scan_runs", "video_scans")
        ]
        con.close()
        assert counts == [(0,), (0,)]


def test_results_command_lists_rows(real_scan, capsys):
    out, summary = real_scan
    assert (
        main(
            [
                "results",
                "--warehouse",
                f"duckdb://{out}/scans.duckdb",
                "--format",
                "json",
                "--limit",
                "3",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["status"] == "scored" for line in lines)


def test_face_crop_clips_score_through_the_classifier(tiny_checkpoint):
    from operators.models.scorers import build_scorer

    scorer = build_scorer(str(tiny_checkpoint))
    scorer.load()
    decoder = FrameDecoder(SamplingConfig.parse("uniform:4"), LimitsConfig())
    means = []
    for clip in sorted(FACE_CROP_VIDEOS.rglob("*.mp4"))[:6]:
        with decoder.open(str(clip)) as video:
            frames = [f.image[..., ::-1] for f in video.frames]  # BGR -> RGB
        import cv2

        batch = np.stack([cv2.resize(f, (scorer.input_size, scorer.input_size)) for f in frames])
        probs = scorer.predict(batch)
        assert probs.shape == (4,) and np.all((probs >= 0) & (probs <= 1))
        means.append(float(probs.mean()))
    assert len({round(m, 6) for m in means}) > 1


def test_a_resumed_run_with_nothing_left_to_decode_still_writes_its_summary(
    tmp_path: Path, tiny_checkpoint: Path
):
    # The killed first attempt of run k1 had committed a part (and its row) before the
    # kill; the rerun skips everything, and must still mark k1 complete in the shards.
    out, empty = tmp_path / "out", tmp_path / "nothing-new"
    empty.mkdir()
    with FaceShardWriter(str(out / "faces"), "k1", crop_scale=1.3) as writer:
        writer.process_batch([faces_video("a", 2)])
    argv = ["scan", str(empty), "--out", str(out), "--model", str(tiny_checkpoint)]
    assert main([*argv, "--run-id", "k1"]) == 0
    summary = json.loads((out / "faces" / "_runs" / "k1.json").read_text())
    assert (summary["run_id"], summary["parts"]) == ("k1", 1)
    assert main([*argv, "--run-id", "k2"]) == 0  # a run that committed nothing: no summary
    assert not (out / "faces" / "_runs" / "k2.json").exists()
