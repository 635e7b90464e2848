"""Detection backends on real photos and a real video frame; crop geometry."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from operators.detect_faces import build_detector, crop_box, crop_face, file_sha256
from pipelines.config import ConfigError, CropConfig, DetectorConfig
from schemas.records import Detection
from tests.conftest import IMAGES, REAL_VIDEOS

BACKENDS = ["scrfd-500m", "scrfd-2.5g", "yunet"]


@pytest.fixture(scope="module", params=BACKENDS)
def detector(request: pytest.FixtureRequest):
    det = build_detector(DetectorConfig.build(request.param))
    det.load()
    return det


@pytest.mark.parametrize(
    "image,faces", [("two_people.jpg", 2), ("obama.jpg", 1), ("multiface.jpg", 6)]
)
def test_finds_the_faces_in_real_photos(detector, image: str, faces: int):
    img = cv2.imread(str(IMAGES / image))
    dets = detector.detect_batch([img])[0]
    assert len(dets) == faces
    h, w = img.shape[:2]
    for d in dets:
        x1, y1, x2, y2 = d.bbox
        assert -2 <= x1 < x2 <= w + 2 and -2 <= y1 < y2 <= h + 2
        xs, ys = d.landmarks[0::2], d.landmarks[1::2]
        assert all(x1 - 2 <= x <= x2 + 2 for x in xs) and all(y1 - 2 <= y <= y2 + 2 for y in ys)
        assert 0.0 < d.score <= 1.0
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_finds_both_people_in_a_hamilton_frame(detector):
    with av.open(str(REAL_VIDEOS / "hamilton_clip.mp4")) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="bgr24")
    assert len(detector.detect_batch([frame])[0]) == 2


def test_detector_info_carries_the_model_sha256(detector):
    assert detector.info.sha256 == file_sha256(detector.cfg.model_path)
    assert len(detector.info.sha256) == 64


def test_max_faces_and_min_face_size_are_honoured():
    img = cv2.imread(str(IMAGES / "multiface.jpg"))
    det = build_detector(DetectorConfig.build("scrfd-500m", max_faces=3))
    det.load()
    assert len(det.detect_batch([img])[0]) == 3
    big_only = build_detector(DetectorConfig.build("scrfd-500m", min_face_px=10_000))
    big_only.load()
    assert big_only.detect_batch([img])[0] == []


def test_missing_model_file_is_a_config_error(tmp_path):
    det = build_detector(DetectorConfig.build("yunet", str(tmp_path / "none.onnx")))
    with pytest.raises(ConfigError, match="not found"):
        det.load()


def test_unknown_detector_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown --detector"):
        DetectorConfig.build("blazeface")


def test_crop_is_a_square_enlarged_by_the_scale():
    d = Detection((100.0, 100.0, 140.0, 160.0), (0.0,) * 10, 0.9)
    left, top, right, bottom = crop_box(d, 1.3, 640, 360)
    assert right - left == bottom - top == 78  # 60 px long side x 1.3
    assert (left + right) / 2 == pytest.approx(120, abs=1) and (top + bottom) / 2 == 130
    assert crop_box(d, 1.0, 640, 360)[2] - crop_box(d, 1.0, 640, 360)[0] == 60


def test_crop_is_clipped_at_the_frame_edge_and_resized():
    img = np.zeros((360, 640, 3), np.uint8)
    d = Detection((0.0, 0.0, 50.0, 50.0), (0.0,) * 10, 0.9)
    assert crop_box(d, 1.3, 640, 360)[:2] == (0, 0)
    out = crop_face(img, d, CropConfig(scale=1.3, size=224))
    assert out.shape == (224, 224, 3)
