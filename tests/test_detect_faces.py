"""Detection backends on real photos and a real video frame; crop geometry.

Face counts were checked by eye on each image: two_people.jpg (Obama and Biden, 2),
obama.jpg (1), obama_small.jpg (1), obama-1080p.jpg (1), multiface.jpg (the six
Friends cast members), the first frame of hamilton_clip.mp4 (pianist and singer, 2).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import av
import cv2
import fsspec
import numpy as np
import pytest

from operators.detect_faces import (
    DETECTOR_BACKENDS,
    FaceDetectorBackend,
    SCRFDDetector,
    YuNetDetector,
    build_detector,
    crop_box,
    crop_face,
    encode_jpeg,
    file_sha256,
)
from pipelines.config import DETECTOR_FILES, ConfigError, CropConfig, DetectorConfig
from schemas.records import Detection
from tests.conftest import IMAGES, REAL_VIDEOS

BACKENDS = ["scrfd-500m", "scrfd-2.5g", "yunet"]
# First bytes of each file's sha256, as listed in ../shared/README.md.
README_SHA256 = {"scrfd-500m": "5e4447f5", "scrfd-2.5g": "041f73f4", "yunet": "8f2383e4"}


def _image(name: str) -> np.ndarray:
    img = cv2.imread(str(IMAGES / name))
    assert img is not None, name
    return img


@pytest.fixture(scope="module")
def hamilton_frame() -> np.ndarray:
    with av.open(str(REAL_VIDEOS / "hamilton_clip.mp4")) as container:
        return next(container.decode(video=0)).to_ndarray(format="bgr24")


@pytest.fixture(scope="module", params=BACKENDS)
def detector(request: pytest.FixtureRequest) -> FaceDetectorBackend:
    det = build_detector(DetectorConfig.build(request.param))
    det.load()
    return det


@pytest.fixture(scope="module")
def scrfd_500m() -> FaceDetectorBackend:
    det = build_detector(DetectorConfig.build("scrfd-500m"))
    det.load()
    return det


def _centre(d: Detection) -> tuple[float, float]:
    return (d.bbox[0] + d.bbox[2]) / 2, (d.bbox[1] + d.bbox[3]) / 2


def test_registry_covers_every_detector_name():
    assert set(DETECTOR_BACKENDS) == set(DETECTOR_FILES)


@pytest.mark.parametrize(
    "image,faces",
    [
        ("two_people.jpg", 2),
        ("obama.jpg", 1),
        ("obama_small.jpg", 1),
        ("obama-1080p.jpg", 1),
        ("multiface.jpg", 6),
    ],
)
def test_finds_the_faces_in_real_photos(detector: FaceDetectorBackend, image: str, faces: int):
    img = _image(image)
    dets = detector.detect_batch([img])[0]
    assert len(dets) == faces
    h, w = img.shape[:2]
    for d in dets:
        x1, y1, x2, y2 = d.bbox
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert len(d.landmarks) == 10
        xs, ys = d.landmarks[0::2], d.landmarks[1::2]
        assert all(x1 <= x <= x2 for x in xs) and all(y1 <= y <= y2 for y in ys)
        assert 0.0 < d.score <= 1.0
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_landmarks_come_in_the_same_order_from_every_backend(detector: FaceDetectorBackend):
    (face,) = detector.detect_batch([_image("obama.jpg")])[0]
    (ex0, ey0, ex1, ey1, nx, ny, mx0, my0, mx1, my1) = face.landmarks
    assert ex0 < nx < ex1  # eyes, image-left first, either side of the nose
    assert mx0 < nx < mx1  # mouth corners likewise
    assert max(ey0, ey1) < ny < min(my0, my1)  # eyes above the nose above the mouth


def test_finds_each_person_where_they_stand(detector: FaceDetectorBackend):
    img = _image("two_people.jpg")
    dets = detector.detect_batch([img])[0]
    xs = sorted(_centre(d)[0] for d in dets)
    assert xs[0] < img.shape[1] / 2 < xs[1]


def test_finds_both_people_in_a_hamilton_frame(
    detector: FaceDetectorBackend, hamilton_frame: np.ndarray
):
    dets = detector.detect_batch([hamilton_frame])[0]
    assert len(dets) == 2
    xs = sorted(_centre(d)[0] for d in dets)
    assert xs[0] < 160 and xs[1] > 480  # the pianist at left, the singer at right


def test_detect_batch_gives_one_list_per_frame_in_order(detector: FaceDetectorBackend):
    frames = [np.zeros((360, 640, 3), np.uint8), _image("obama.jpg"), _image("two_people.jpg")]
    assert [len(d) for d in detector.detect_batch(frames)] == [0, 1, 2]
    assert detector.detect_batch([]) == []


def test_detector_info_carries_the_model_sha256(detector: FaceDetectorBackend):
    expected = hashlib.sha256(Path(detector.cfg.model_path).read_bytes()).hexdigest()
    assert detector.info.sha256 == expected
    assert expected.startswith(README_SHA256[detector.cfg.name])
    assert detector.info.name == detector.cfg.name


def test_file_sha256_reads_an_fsspec_uri():
    payload = b"not a model" * 100_000  # > 1 MiB: more than one chunk
    with fsspec.open("memory://dfscan-test/model.onnx", "wb") as fh:
        fh.write(payload)
    assert file_sha256("memory://dfscan-test/model.onnx") == hashlib.sha256(payload).hexdigest()


def test_max_faces_keeps_the_largest_faces_sorted_by_score():
    img = _image("multiface.jpg")
    full = build_detector(DetectorConfig.build("scrfd-2.5g"))
    full.load()
    three = build_detector(DetectorConfig.build("scrfd-2.5g", max_faces=3))
    three.load()
    everyone = full.detect_batch([img])[0]
    kept = three.detect_batch([img])[0]

    def area(d: Detection) -> float:
        return (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1])

    largest = sorted(everyone, key=area, reverse=True)[:3]
    assert len(kept) == 3
    assert {d.bbox for d in kept} == {d.bbox for d in largest}
    assert [d.score for d in kept] == sorted((d.score for d in kept), reverse=True)


def test_min_face_px_drops_faces_with_a_shorter_side(scrfd_500m: FaceDetectorBackend):
    img = _image("multiface.jpg")
    sides = sorted(
        min(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) for d in scrfd_500m.detect_batch([img])[0]
    )
    assert len(sides) == 6 and sides[0] < sides[1]
    cut = int(sides[0]) + 1  # just above the smallest face
    det = build_detector(DetectorConfig.build("scrfd-500m", min_face_px=cut))
    det.load()
    assert len(det.detect_batch([img])[0]) == 5
    big_only = build_detector(DetectorConfig.build("scrfd-500m", min_face_px=10_000))
    big_only.load()
    assert big_only.detect_batch([img])[0] == []


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name", ["scrfd-500m", "scrfd-2.5g"])
def test_scrfd_runs_at_a_smaller_det_size(name: str):
    img = _image("two_people.jpg")
    det = build_detector(DetectorConfig.build(name, det_size=320))
    assert isinstance(det, SCRFDDetector) and det.det_size == 320
    det.load()
    small = sorted(det.detect_batch([img])[0], key=_centre)
    # insightface records each input size it ran: 1126x661 shrunk to 320x188, padded.
    assert det._model.resolution_session_input_sizes == ((320, 192),)
    ref = build_detector(DetectorConfig.build(name))
    ref.load()
    full = sorted(ref.detect_batch([img])[0], key=_centre)
    assert len(small) == len(full) == 2
    assert all(_iou(a.bbox, b.bbox) > 0.8 for a, b in zip(small, full, strict=True))


@pytest.mark.parametrize(
    "frame,scale,size",
    [
        ((1920, 1080), 1.0, (640, 384)),  # 16:9: 640x360 padded to the stride, not 640x640
        ((1080, 1920), 1.0, (384, 640)),
        ((640, 360), 1.0, (640, 384)),
        ((480, 480), 1.0, (640, 640)),  # smaller frames are enlarged to det_size, as before
        ((161, 121), 1.0, (640, 512)),
        ((1, 1), 1.0, (640, 640)),
    ],
)
def test_scrfd_input_fits_det_size_and_keeps_the_frame_aspect(
    frame: tuple[int, int], scale: float, size: tuple[int, int]
):
    det = build_detector(DetectorConfig.build("scrfd-500m"))
    assert isinstance(det, SCRFDDetector)
    assert det.input_scale(*frame) == pytest.approx(scale)
    w, h = (max(1, round(v * scale)) for v in frame)
    assert det.input_size(w, h) == size


def test_scrfd_runs_a_16_9_frame_without_the_square_padding(
    scrfd_500m: FaceDetectorBackend, hamilton_frame: np.ndarray
):
    assert hamilton_frame.shape[:2] == (360, 640)
    assert isinstance(scrfd_500m, SCRFDDetector)
    assert scrfd_500m.input_size(640, 360) == (640, 384)
    assert len(scrfd_500m.detect_batch([hamilton_frame])[0]) == 2
    assert (640, 384) in scrfd_500m._model.resolution_session_input_sizes  # what it ran at
    # The same faces as in the 640x640 letterbox insightface would use on its own.
    boxes, _ = scrfd_500m._model.detect(hamilton_frame, input_size=(640, 640))
    fitted = sorted(scrfd_500m.detect_batch([hamilton_frame])[0], key=_centre)
    square = sorted(boxes[:, :4].tolist(), key=lambda b: (b[0] + b[2]) / 2)
    assert all(_iou(a.bbox, tuple(b)) > 0.9 for a, b in zip(fitted, square, strict=True))


@pytest.mark.parametrize("name", ["scrfd-500m", "scrfd-2.5g"])
def test_scrfd_det_size_off_the_stride_grid_is_a_config_error(name: str):
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_detector(DetectorConfig.build(name, det_size=500))


# --- detection on a shrunk frame (--det-scale) -------------------------------------------


def _scaled_pair(name: str, scale: float) -> tuple[FaceDetectorBackend, FaceDetectorBackend]:
    # Detectors run at the frame's own size up to det_size: at 1920 the full-size run
    # sees every pixel of a 1080p frame, so det_scale really shrinks the input.
    full = build_detector(DetectorConfig.build(name, det_size=1920))
    shrunk = build_detector(DetectorConfig.build(name, det_size=1920, det_scale=scale))
    full.load()
    shrunk.load()
    return full, shrunk


@pytest.fixture(scope="module")
def people_at_1080p() -> tuple[np.ndarray, tuple[int, int]]:
    """two_people.jpg pasted off-centre into a black 1920x1080 frame, and its offset:
    a face's full-resolution position differs from its half-size one by hundreds of px."""
    frame = np.zeros((1080, 1920, 3), np.uint8)
    img = _image("two_people.jpg")
    x0, y0 = 700, 350
    frame[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]] = img
    return frame, (x0, y0)


@pytest.mark.parametrize("name", BACKENDS)
def test_half_size_detection_gives_full_resolution_boxes(
    name: str, people_at_1080p: tuple[np.ndarray, tuple[int, int]]
):
    frame, (x0, y0) = people_at_1080p
    full, half = _scaled_pair(name, 0.5)
    ref = sorted(full.detect_batch([frame])[0], key=_centre)
    got = sorted(half.detect_batch([frame])[0], key=_centre)
    assert len(ref) == len(got) == 2
    for a, b in zip(ref, got, strict=True):
        side = a.bbox[2] - a.bbox[0]  # ~150 px faces
        assert x0 < b.bbox[0] and y0 < b.bbox[1]  # inside the pasted photo: full-res pixels
        assert max(abs(p - q) for p, q in zip(a.bbox, b.bbox, strict=True)) < 0.05 * side
        assert max(abs(p - q) for p, q in zip(a.landmarks, b.landmarks, strict=True)) < 0.06 * side


def test_half_size_detection_shrinks_yunet_input_but_not_scrfd_input(
    people_at_1080p: tuple[np.ndarray, tuple[int, int]],
):
    frame, _ = people_at_1080p
    full, half = _scaled_pair("yunet", 0.5)
    assert full.input_scale(1920, 1080) == 1.0 and half.input_scale(1920, 1080) == 0.5
    half.detect_batch([frame])
    assert isinstance(half, YuNetDetector) and half._size == (960, 540)  # its input size
    # SCRFD fits whatever it gets to det_size: det_scale changes its input's pixels
    # (shrunk, then enlarged back), not its size or cost.
    _, scrfd = _scaled_pair("scrfd-500m", 0.5)
    assert isinstance(scrfd, SCRFDDetector) and scrfd.input_scale(1920, 1080) == 0.5
    scrfd.detect_batch([frame])
    assert scrfd._model.resolution_session_input_sizes == ((1920, 1088),)
    capped = build_detector(DetectorConfig.build("yunet", det_scale=0.5))  # det_size 640
    assert capped.input_scale(1920, 1080) == pytest.approx(1 / 3)  # the tighter of the two


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5, float("nan")])
def test_det_scale_outside_0_1_is_a_config_error(scale: float):
    with pytest.raises(ConfigError, match="--det-scale must be within"):
        build_detector(DetectorConfig.build("scrfd-500m", det_scale=scale))


def test_half_size_faces_are_cropped_from_the_full_resolution_frame(tmp_path: Path):
    """Through the extractor: boxes in full-frame pixels, crops cut from the full frame."""
    from operators.decode_frames import FrameDecoder
    from operators.extract_faces import FaceExtractor
    from pipelines.config import LimitsConfig, SamplingConfig
    from schemas.records import VideoRef, VideoStatus

    video = REAL_VIDEOS / "street_crowd.mp4"  # 1920x1080, several people; half size = det_size
    sampling, limits = SamplingConfig.parse("uniform:3"), LimitsConfig(isolate=False)
    crop = CropConfig(scale=1.3, size=128)
    ref = VideoRef("street", str(video), video.stat().st_size)
    detector = DetectorConfig.build("scrfd-2.5g", det_size=960, det_scale=0.5)
    extractor = FaceExtractor(sampling, detector, crop, limits)
    extractor.setup()
    try:
        result = extractor.extract(ref)
    finally:
        extractor.teardown()
    assert result.status is VideoStatus.SCORED and len(result.faces) >= 3
    assert max(f.bbox[2] for f in result.faces) > 960  # half-size x would stay below 960
    with FrameDecoder(sampling, limits).open(str(video)) as decoded:
        frames = {f.index: f.image for f in decoded.frames}
    assert all(img.shape == (1080, 1920, 3) for img in frames.values())
    for face in result.faces:
        det = Detection(face.bbox, face.landmarks, face.det_score)
        expected = encode_jpeg(crop_face(frames[face.frame_index], det, crop), crop.jpeg_quality)
        assert face.jpeg == expected
        assert (face.crop_width, face.crop_height) == (128, 128)


@pytest.mark.parametrize("name", BACKENDS)
def test_missing_model_file_is_a_one_line_config_error(tmp_path: Path, name: str):
    missing = str(tmp_path / "none.onnx")
    with pytest.raises(ConfigError, match="not found") as err:
        build_detector(DetectorConfig.build(name, missing))
    assert missing in str(err.value) and "\n" not in str(err.value)


def test_model_file_gone_by_load_time_is_a_config_error(tmp_path: Path):
    path = tmp_path / "yunet.onnx"
    path.write_bytes(Path(DetectorConfig.build("yunet").model_path).read_bytes())
    det = build_detector(DetectorConfig.build("yunet", str(path)))
    path.unlink()
    with pytest.raises(ConfigError, match="not found"):
        det.load()


def test_unknown_detector_or_device_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown --detector"):
        build_detector(DetectorConfig(name="blazeface", model_path="x.onnx"))
    with pytest.raises(ConfigError, match="unknown --device"):
        build_detector(DetectorConfig.build("yunet", device="tpu"))


def test_cuda_without_a_cuda_provider_is_a_config_error():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the error cannot happen")
    det = build_detector(DetectorConfig.build("scrfd-500m", device="cuda"))
    with pytest.raises(ConfigError, match="--device cuda"):
        det.load()


def test_a_loaded_detector_pickles_without_its_session(scrfd_500m: FaceDetectorBackend):
    copy = pickle.loads(pickle.dumps(scrfd_500m))
    assert scrfd_500m.loaded and not copy.loaded
    with pytest.raises(RuntimeError, match="load"):
        copy.detect_batch([_image("obama.jpg")])
    copy.load()
    assert len(copy.detect_batch([_image("obama.jpg")])[0]) == 1


# --- crops ------------------------------------------------------------------------------


def _det(x1: float, y1: float, x2: float, y2: float) -> Detection:
    return Detection((x1, y1, x2, y2), (0.0,) * 10, 0.9)


def test_crop_is_a_square_on_the_face_enlarged_by_the_scale():
    d = _det(100.0, 100.0, 140.0, 160.0)  # 40 x 60, centre (120, 130)
    left, top, right, bottom = crop_box(d, 1.3, 640, 360)
    assert right - left == bottom - top == 78  # long side 60 x 1.3
    assert (left + right) / 2 == 120 and (top + bottom) / 2 == 130
    l1, t1, r1, b1 = crop_box(d, 1.0, 640, 360)
    assert r1 - l1 == b1 - t1 == 60
    assert (right - left) * (bottom - top) / ((r1 - l1) * (b1 - t1)) == pytest.approx(1.69)


def test_crop_is_clipped_at_the_frame_edge():
    d = _det(0.0, 300.0, 50.0, 360.0)  # bottom-left corner of a 640x360 frame
    left, top, right, bottom = crop_box(d, 1.3, 640, 360)
    assert (left, bottom) == (0, 360)
    assert right == 64 and top == 291  # 78 px square around (25, 330), cut by the edges
    out = crop_face(np.zeros((360, 640, 3), np.uint8), d, CropConfig(scale=1.3, size=224))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_crop_holds_the_face_pixels_and_has_the_configured_size():
    img = np.zeros((360, 640, 3), np.uint8)
    img[100:200, 300:400] = (0, 0, 255)  # a red "face"
    d = _det(300.0, 100.0, 400.0, 200.0)
    tight = crop_face(img, d, CropConfig(scale=1.0, size=64))  # downscale: INTER_AREA
    assert tight.shape == (64, 64, 3)
    assert (tight[..., 2] > 200).mean() > 0.95
    loose = crop_face(img, d, CropConfig(scale=2.0, size=300))  # upscale: INTER_LINEAR
    assert loose.shape == (300, 300, 3)
    assert (loose[..., 2] > 200).mean() == pytest.approx(0.25, abs=0.02)  # 1/scale^2


def test_encode_jpeg_round_trips():
    img = np.full((224, 224, 3), (40, 120, 200), np.uint8)
    data = encode_jpeg(img, 95)
    assert data[:2] == b"\xff\xd8"  # JPEG SOI marker
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert back is not None and back.shape == img.shape
    assert np.abs(back.astype(int) - img).max() <= 3
    assert len(encode_jpeg(_image("obama.jpg"), 50)) < len(encode_jpeg(_image("obama.jpg"), 95))


def test_crop_without_a_scale_uses_the_ff_plus_plus_default():
    img = np.zeros((360, 640, 3), np.uint8)
    img[100:200, 300:400] = 255
    d = _det(300.0, 100.0, 400.0, 200.0)
    unset = crop_face(img, d, CropConfig(scale=None, size=130))
    assert np.array_equal(unset, crop_face(img, d, CropConfig(scale=1.3, size=130)))


# --- the --det-scale flag --------------------------------------------------------------


def test_cli_det_scale_reaches_the_detector_config(tmp_path: Path):
    from pipelines.cli import build_parser, build_scan_config

    model = tmp_path / "model.pt"
    model.write_bytes(b"")  # the scan config only checks that a local model exists
    base = ["scan", str(REAL_VIDEOS), "--out", str(tmp_path), "--model", str(model)]
    args = build_parser().parse_args([*base, "--det-scale", "0.5"])
    args.beam_args = []
    assert build_scan_config(args).detector.det_scale == 0.5
    args = build_parser().parse_args(base)
    args.beam_args = []
    assert build_scan_config(args).detector.det_scale == 1.0  # default: the full frame


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "half", "nan"])
def test_cli_bad_det_scale_is_one_line_and_exit_2(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["scan", str(REAL_VIDEOS), "--out", str(tmp_path), "--det-scale", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dfscan: error: argument --det-scale: ") and err.count("\n") == 1
    assert ("not a number" if value == "half" else "must be within (0, 1]") in err


@pytest.mark.parametrize("rotation", [90, 270])
def test_a_phone_video_row_has_the_size_its_boxes_are_in(
    tmp_path: Path, obama_rgb: np.ndarray, rotation: int
):
    """Portrait phone clip stored landscape with a display matrix: faces are found
    upright, and the video's width and height are those of the upright frame."""
    from operators.extract_faces import FaceExtractor
    from pipelines.config import LimitsConfig, SamplingConfig
    from schemas.records import VideoRef, VideoStatus
    from tests.media import encode_clip

    upright = np.full((320, 240, 3), 90, np.uint8)
    upright[80:240, 40 : 40 + obama_rgb.shape[1]] = obama_rgb[:, :200]
    stored = np.ascontiguousarray(np.rot90(upright, k=-rotation // 90))  # shown: rotated back
    clip = encode_clip(tmp_path / "phone.mov", [stored] * 4, rotation=rotation)
    sampling, limits = SamplingConfig.parse("uniform:2"), LimitsConfig(isolate=False)
    extractor = FaceExtractor(sampling, DetectorConfig.build("scrfd-500m"), CropConfig(), limits)
    extractor.setup()
    try:
        result = extractor.extract(VideoRef("phone", str(clip), clip.stat().st_size))
    finally:
        extractor.teardown()
    assert result.status is VideoStatus.SCORED and result.meta is not None
    assert (result.meta.width, result.meta.height, result.meta.rotation) == (240, 320, rotation)
    for face in result.faces:
        x1, y1, x2, y2 = face.bbox
        assert 40 <= x1 < x2 <= 240 and 80 <= y1 < y2 <= 240  # where the face was pasted


def test_a_4k_upload_is_detected_a_few_frames_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Frames in flight are bounded in bytes (8 frames of 1080p BGR), not in frames: 8
    frames of 4K would hold 200 MB, of 8K 1.6 GB, per decode worker."""
    from operators.extract_faces import FaceExtractor
    from pipelines.config import LimitsConfig, SamplingConfig
    from schemas.records import VideoRef
    from tests.media import encode_clip

    clip = encode_clip(
        tmp_path / "uhd.mp4",
        [np.full((2160, 3840, 3), 90, np.uint8)] * 6,
        options={"preset": "ultrafast"},
    )
    sampling, limits = SamplingConfig.parse("uniform:6"), LimitsConfig(isolate=False)
    extractor = FaceExtractor(sampling, DetectorConfig.build("scrfd-500m"), CropConfig(), limits)
    extractor.setup()
    batches: list[int] = []
    detect_batch = extractor._detector.detect_batch
    monkeypatch.setattr(
        extractor._detector,
        "detect_batch",
        lambda images: batches.append(len(images)) or detect_batch(images),
    )
    try:
        result = extractor.extract(VideoRef("uhd", str(clip), clip.stat().st_size))
    finally:
        extractor.teardown()
    assert result.frames_sampled == 6
    assert batches == [2, 2, 2]
