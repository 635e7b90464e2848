"""Checkpoints, scorers and the FaceScorer operator, on real DFDC face crops from ../shared."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from operators.models import checkpoints
from operators.models.checkpoints import (
    CheckpointMeta,
    load_checkpoint,
    model_version,
    read_checkpoint,
    save_checkpoint,
)
from operators.models.scorers import (
    ARCHITECTURES,
    SCORERS,
    MobileNetV2Scorer,
    ResNet18Scorer,
    XceptionScorer,
    build_network,
    build_scorer,
    read_meta,
)
from operators.score_faces import FaceScorer, decode_crops
from pipelines.config import ConfigError, ScorerConfig, shared_dir
from schemas.records import (
    DetectorInfo,
    FaceCrop,
    ScoredVideo,
    VideoFaces,
    VideoRef,
    VideoStatus,
)

DATA = shared_dir() / "data" / "faces" / "dfdc224"
MOBILENET_IMAGENET = shared_dir() / "models" / "imagenet" / "mobilenet_v2-b0353104.pth"
SMALL = 64  # input side for test checkpoints: every arch runs at it, and fast on CPU


def _meta(arch: str, size: int = SMALL, **kw: object) -> CheckpointMeta:
    spec = ARCHITECTURES[arch]
    return CheckpointMeta(arch=arch, input_size=size, mean=spec.mean, std=spec.std, **kw)  # type: ignore[arg-type]


def _save(net: torch.nn.Module, meta: CheckpointMeta, path: Path) -> str:
    return save_checkpoint(net.state_dict(), meta, str(path))


@pytest.fixture(scope="module")
def face_jpegs() -> list[bytes]:
    """Twelve real 224x224 DFDC face crops (6 REAL, 6 FAKE) as JPEG bytes."""
    lines = (DATA / "labels.csv").read_text().splitlines()[1:]
    real = [ln.split(",")[0] for ln in lines if ",REAL," in ln][:6]
    fake = [ln.split(",")[0] for ln in lines if ",FAKE," in ln][:6]
    return [(DATA / name).read_bytes() for name in real + fake]


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2 with the real ImageNet backbone and a seeded random head.

    Its features differ from face to face, so its scores must too (a random-init net
    in eval mode can saturate to one value and would hide a scorer that ignores input).
    """
    torch.manual_seed(0)
    net = build_network("mobilenet_v2", str(MOBILENET_IMAGENET))
    path = tmp_path_factory.mktemp("ckpt") / "mnv2.pt"
    _save(net, _meta("mobilenet_v2", metrics={"val_auc": 0.5}), path)
    return path


def _video(name: str, jpegs: list[bytes]) -> VideoFaces:
    faces = tuple(
        FaceCrop(
            frame_index=i,
            pts_s=i / 10,
            track_id=0,
            bbox=(0.0, 0.0, 224.0, 224.0),
            landmarks=(0.0,) * 10,
            det_score=0.9,
            jpeg=j,
            crop_width=224,
            crop_height=224,
        )
        for i, j in enumerate(jpegs)
    )
    return VideoFaces(
        ref=VideoRef(video_id=name, uri=f"file:///{name}.mp4", size_bytes=1),
        status=VideoStatus.SCORED if faces else VideoStatus.NO_FACE,
        detector=DetectorInfo(name="test", sha256="0" * 64),
        sampling="uniform:32",
        faces=faces,
    )


# --- checkpoints -------------------------------------------------------------------------


def test_checkpoint_round_trip_preserves_meta_and_sha256(tmp_path: Path) -> None:
    net = build_network("resnet18")
    meta = _meta(
        "resnet18",
        crop_scale=1.25,
        training_data="unit test; no terms",
        metrics={"val_auc": 0.75, "val_acc": 0.5},
        created_at=1700000000.5,
        code_version="test",
        temperature=1.7,
        threshold=0.42,
        extra={"head_hidden": "0", "note": "x"},
    )
    path = tmp_path / "sub" / "model.pt"
    sha = _save(net, meta, path)

    loaded = load_checkpoint(str(path))
    assert loaded.meta == meta
    assert loaded.sha256 == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(loaded.state_dict) == set(net.state_dict())
    torch.testing.assert_close(loaded.state_dict["conv1.weight"], net.state_dict()["conv1.weight"])
    assert read_meta(str(path)) == (meta, sha)


def test_meta_of_bytes_read_before_comes_from_the_cache_without_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The meta is cached under the file's sha256, so a scan that runs a cached ONNX graph
    needs no torch; other bytes miss the cache, a damaged entry is replaced."""
    cache = str(tmp_path / "cache")
    meta = _meta("mobilenet_v2", threshold=0.61, extra={"head_hidden": "0"})
    path = tmp_path / "m.pt"
    sha = _save(build_network("mobilenet_v2"), meta, path)
    assert read_checkpoint(str(path), cache_dir=cache).meta == meta  # parsed, then cached
    entry = tmp_path / "cache" / "checkpoints" / f"{sha}-v{checkpoints.FORMAT_VERSION}.json"
    assert entry.is_file()

    parse = checkpoints._parse
    parses: list[str] = []

    def counting_parse(data: bytes, uri: str, digest: str) -> checkpoints.LoadedCheckpoint:
        parses.append(uri)
        return parse(data, uri, digest)

    monkeypatch.setattr(checkpoints, "_parse", counting_parse)
    again = read_checkpoint(str(path), cache_dir=cache)
    assert (again.meta, again.sha256) == (meta, sha) and parses == []
    # Other bytes (a recalibrated threshold) are another key: parsed, not served stale.
    other = tmp_path / "other.pt"
    _save(build_network("mobilenet_v2"), _meta("mobilenet_v2", threshold=0.3), other)
    assert read_checkpoint(str(other), cache_dir=cache).meta.threshold == 0.3
    assert parses == [str(other)]
    # A damaged entry is logged, parsed around and rewritten.
    entry.write_text('["not", "a meta"]')
    with caplog.at_level("WARNING", logger=checkpoints.__name__):
        assert read_checkpoint(str(path), cache_dir=cache).meta == meta
    assert "unreadable cached checkpoint meta" in caplog.text and parses[-1] == str(path)
    assert read_checkpoint(str(path), cache_dir=cache).meta == meta and len(parses) == 2


def test_save_leaves_no_temporary_file_beside_the_checkpoint(tmp_path: Path) -> None:
    _save(build_network("mobilenet_v2"), _meta("mobilenet_v2"), tmp_path / "m.pt")
    _save(build_network("mobilenet_v2"), _meta("mobilenet_v2"), tmp_path / "m.pt")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


class _NotATensor:
    """Any class outside torch's allow-list: a weights_only load must refuse it."""


def test_load_is_weights_only_and_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save(
        {
            "format": "dfscan-checkpoint",
            "format_version": 1,
            "meta": _meta("resnet18").to_dict(),
            "state_dict": {},
            "payload": _NotATensor(),
        },
        path,
    )
    with pytest.raises(ConfigError, match="not a dfscan checkpoint"):
        load_checkpoint(str(path))


def test_load_rejects_files_that_are_not_dfscan_checkpoints(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(build_network("mobilenet_v2").state_dict(), plain)  # a bare state dict
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for path in (plain, text):
        with pytest.raises(ConfigError, match="not a dfscan checkpoint") as err:
            load_checkpoint(str(path))
        assert "\n" not in str(err.value)


def test_missing_checkpoint_is_a_one_line_config_error(tmp_path: Path) -> None:
    op = FaceScorer(ScorerConfig(checkpoint=str(tmp_path / "nope.pt")))
    with pytest.raises(ConfigError, match="checkpoint not found") as err:
        op.setup()
    assert "\n" not in str(err.value)


def test_model_version_is_arch_and_sha256_prefix(imagenet_checkpoint: Path) -> None:
    meta, sha = read_meta(str(imagenet_checkpoint))
    version = model_version(meta, sha)
    assert version == f"mobilenet_v2-{sha[:12]}"
    assert re.fullmatch(r"mobilenet_v2-[0-9a-f]{12}", version)
    scorer = build_scorer(str(imagenet_checkpoint), device="cpu")
    assert scorer.model_version == version
    assert scorer.sha256 == sha


# --- scorers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "cls"),
    [
        ("resnet18", ResNet18Scorer),
        ("xception", XceptionScorer),
        ("mobilenet_v2", MobileNetV2Scorer),
    ],
)
def test_each_arch_builds_and_predicts_probabilities_per_face(
    arch: str, cls: type, tmp_path: Path, face_jpegs: list[bytes]
) -> None:
    torch.manual_seed(0)
    path = tmp_path / f"{arch}.pt"
    _save(build_network(arch), _meta(arch), path)

    scorer = build_scorer(str(path), device="cpu", num_threads=1)
    assert type(scorer) is cls and SCORERS[arch] is cls
    assert scorer.arch == arch and scorer.input_size == SMALL
    probs = scorer.predict(decode_crops(face_jpegs[:5], SMALL))
    assert probs.shape == (5,)
    assert probs.dtype == np.float32
    assert np.all((probs >= 0.0) & (probs <= 1.0))


def test_arch_input_sizes_and_normalisation_follow_their_papers() -> None:
    assert {a: s.input_size for a, s in ARCHITECTURES.items()} == {
        "resnet18": 224,
        "xception": 299,
        "mobilenet_v2": 224,
    }
    assert ARCHITECTURES["xception"].mean == (0.5, 0.5, 0.5)
    assert ARCHITECTURES["resnet18"].mean == (0.485, 0.456, 0.406)


def test_scores_differ_across_different_faces(
    imagenet_checkpoint: Path, face_jpegs: list[bytes]
) -> None:
    scorer = build_scorer(str(imagenet_checkpoint), device="cpu")
    probs = scorer.predict(decode_crops(face_jpegs, scorer.input_size))
    assert len(np.unique(np.round(probs, 5))) >= len(face_jpegs) - 1
    assert float(probs.max() - probs.min()) > 1e-3


def test_temperature_divides_the_logit(tmp_path: Path, face_jpegs: list[bytes]) -> None:
    torch.manual_seed(0)
    net = build_network("mobilenet_v2", str(MOBILENET_IMAGENET))
    _save(net, _meta("mobilenet_v2"), tmp_path / "t1.pt")
    _save(net, _meta("mobilenet_v2", temperature=2.0), tmp_path / "t2.pt")
    crops = decode_crops(face_jpegs, SMALL)
    p1 = build_scorer(str(tmp_path / "t1.pt"), device="cpu").predict(crops).astype(np.float64)
    p2 = build_scorer(str(tmp_path / "t2.pt"), device="cpu").predict(crops).astype(np.float64)
    logit = np.log(p1 / (1 - p1))
    np.testing.assert_allclose(p2, 1 / (1 + np.exp(-logit / 2)), atol=1e-5)


def test_predict_rejects_faces_not_at_the_input_size(imagenet_checkpoint: Path) -> None:
    scorer = build_scorer(str(imagenet_checkpoint), device="cpu")
    with pytest.raises(ValueError, match="expected uint8"):
        scorer.predict(np.zeros((2, SMALL + 1, SMALL + 1, 3), dtype=np.uint8))
    assert scorer.predict(np.zeros((0, SMALL, SMALL, 3), dtype=np.uint8)).shape == (0,)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_a_config_error(imagenet_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available") as err:
        build_scorer(str(imagenet_checkpoint), device="cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        FaceScorer(ScorerConfig(checkpoint=str(imagenet_checkpoint), device="cuda")).setup()


def test_unknown_device_is_a_config_error(imagenet_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="unknown device"):
        build_scorer(str(imagenet_checkpoint), device="tpu")


def test_checkpoint_of_unknown_arch_is_a_config_error(tmp_path: Path) -> None:
    meta = CheckpointMeta(arch="vit_huge", input_size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    save_checkpoint({}, meta, str(tmp_path / "vit.pt"))
    with pytest.raises(ConfigError, match="no scorer for architecture 'vit_huge'"):
        build_scorer(str(tmp_path / "vit.pt"))


# --- decode_crops ------------------------------------------------------------------------


def test_decode_crops_returns_rgb_resized_with_area() -> None:
    bgr_red = np.zeros((100, 100, 3), dtype=np.uint8)
    bgr_red[..., 2] = 255  # red in OpenCV's BGR order
    ok, jpeg = cv2.imencode(".jpg", bgr_red)
    assert ok
    out = decode_crops([jpeg.tobytes(), jpeg.tobytes()], 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    assert out[0, 16, 16, 0] > 240 and out[0, 16, 16, 2] < 15  # R high, B low: RGB order


def test_decode_crops_raises_on_a_broken_jpeg() -> None:
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_crops([b"not a jpeg"], 32)


# --- FaceScorer --------------------------------------------------------------------------


def test_face_scorer_batches_across_videos_and_splits_scores_back_in_order(
    imagenet_checkpoint: Path, face_jpegs: list[bytes]
) -> None:
    videos = [
        _video("a", face_jpegs[0:3]),
        _video("empty", []),
        _video("c", face_jpegs[3:8]),
        _video("d", face_jpegs[8:9]),
    ]
    op = FaceScorer(ScorerConfig(checkpoint=str(imagenet_checkpoint), device="cpu", batch_size=4))
    with op:
        scorer = op.scorer
        expected = {
            v.ref.video_id: scorer.predict(decode_crops([f.jpeg for f in v.faces], SMALL))
            for v in videos
            if v.faces
        }
        calls: list[int] = []
        real_predict = scorer.predict

        def spy(batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            return real_predict(batch)

        scorer.predict = spy  # type: ignore[method-assign]
        out = op.process_batch(videos)

    # 9 faces from three videos in passes of 4: faces of a and c share the first pass.
    assert calls == [4, 4, 1]
    assert [s.video.ref.video_id for s in out] == ["a", "empty", "c", "d"]
    assert all(isinstance(s, ScoredVideo) for s in out)
    assert [len(s.scores) for s in out] == [3, 0, 5, 1]
    for s in out:
        if s.video.faces:
            np.testing.assert_allclose(s.scores, expected[s.video.ref.video_id], atol=1e-4)
            assert s.score_seconds > 0
        else:
            assert s.scores == () and s.score_seconds == 0.0
        assert s.model_version == scorer.model_version


def test_face_scorer_with_only_faceless_videos_runs_no_forward_pass(
    imagenet_checkpoint: Path,
) -> None:
    op = FaceScorer(ScorerConfig(checkpoint=str(imagenet_checkpoint), device="cpu"))
    with op:
        out = op.process_batch([_video("x", []), _video("y", [])])
    assert [s.scores for s in out] == [(), ()]
    assert op.resources.batch_size >= 1 and op.resources.gpus == 0


def test_face_scorer_constructor_keeps_only_settings(imagenet_checkpoint: Path) -> None:
    import pickle

    op = FaceScorer(ScorerConfig(checkpoint=str(imagenet_checkpoint)))
    assert len(pickle.dumps(op)) < 2000  # no model before setup(): cheap to ship to workers


def test_pretrained_file_must_be_a_matching_state_dict(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"hello, not weights")
    with pytest.raises(ConfigError, match="not a torch state dict"):
        build_network("mobilenet_v2", str(garbage))
    with pytest.raises(ConfigError, match="do not fit this architecture") as err:
        build_network("resnet18", str(MOBILENET_IMAGENET))
    assert "\n" not in str(err.value)


def test_imagenet_weights_are_loaded_into_the_backbone() -> None:
    state = torch.load(MOBILENET_IMAGENET, weights_only=True, map_location="cpu")
    net = build_network("mobilenet_v2", str(MOBILENET_IMAGENET))
    torch.testing.assert_close(
        net.state_dict()["features.0.0.weight"], state["features.0.0.weight"]
    )
    assert net.state_dict()["classifier.1.weight"].shape == (1, 1280)  # 1-logit head
