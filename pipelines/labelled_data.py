"""Labelled face data for training, evaluation and calibration, whatever its layout.

Three layouts are read, each a ``FaceSource`` in ``LAYOUTS`` that says whether a folder
is its kind (no ``if layout == ...`` chain):

- ``crops``: a folder with ``labels.csv`` (image, videoname, label, original) and the
  JPEG crops, as ``../shared/data/faces/dfdc224``. One crop is one video.
- ``dataset``: what ``dfscan dataset build`` writes: face shards with ``label``,
  ``source_id``, ``group_id`` and ``split`` columns plus ``dataset.json``. The split is
  saved there; the group (source videos joined by shared identities) is ``source``.
- ``videos``: folder-per-class videos, ``FAKE/*.mp4`` and ``REAL/*.mp4``, where the face
  fills the frame (``../shared/data/videos/face_crops``). Sampled frames are scored as
  crops: resized to the model's input and JPEG-encoded the way the scan encodes a crop,
  one track per video, so the scan's aggregation rule applies unchanged.

Every face carries ``source``, the split group: a fake goes with the real video it was
made from, so no split can put a fake on one side and its original on the other.
"""

from __future__ import annotations

import abc
import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pipelines.config import ConfigError

if TYPE_CHECKING:
    import numpy as np

LABELS = ("REAL", "FAKE")
LABEL_COLUMNS = ("image", "videoname", "label", "original")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
DATASET_MANIFEST = "dataset.json"


@dataclass(frozen=True)
class LabelledFace:
    """One labelled face image: its key (unique in its data set), video and split group."""

    key: str
    video_id: str
    source: str  # the split group: a fake's original, a real video's own id
    is_fake: bool
    frame_index: int = 0
    pts_s: float = 0.0
    track_id: int = 0
    split: str | None = None  # saved split of a built data set (train/val/test)


@dataclass
class FaceSet:
    """The faces of one data set and the JPEG bytes behind them, read on demand."""

    root: str
    layout: str
    faces: list[LabelledFace]
    reader: FaceSource
    size: int | None = None  # the videos layout encodes frames at this side
    _hashes: dict[str, str] = field(default_factory=dict)

    def jpegs(self, faces: Sequence[LabelledFace]) -> list[bytes]:
        data = self.reader.read(faces)
        for face, blob in zip(faces, data, strict=True):
            self._hashes[face.key] = hashlib.sha256(blob).hexdigest()
        return data

    def images(self, faces: Sequence[LabelledFace], size: int) -> np.ndarray:
        """uint8 RGB (N, size, size, 3) through ``decode_crops``, the scan's own decoder.

        An image that does not decode is bad input, not a bug: a one-line ConfigError
        naming it (checked as it is decoded, so no image is decoded twice).
        """
        from operators.score_faces import UndecodableCrop, decode_crops

        try:
            return decode_crops(self.jpegs(faces), size)
        except UndecodableCrop as err:
            where = self.reader.where(faces[err.index])
            raise ConfigError(f"{where} is not a decodable JPEG ({err.size} bytes)") from None

    def data_hash(self, faces: Sequence[LabelledFace]) -> str:
        """sha256 over key, label, group and the bytes' sha256 of each face read so far.

        Two runs with the same hash saw the same images under the same labels and groups;
        a relabel, a regrouping or a re-encoded image changes it.
        """
        h = hashlib.sha256()
        for f in sorted(faces, key=lambda f: f.key):
            line = f"{f.key}\t{int(f.is_fake)}\t{f.source}\t{self._hashes.get(f.key, '')}\n"
            h.update(line.encode())
        return h.hexdigest()


class FaceSource(abc.ABC):
    """One on-disk layout of labelled faces."""

    layout: ClassVar[str]

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    @abc.abstractmethod
    def matches(cls, root: Path) -> bool:
        """Whether ``root`` is laid out this way."""

    @abc.abstractmethod
    def faces(self, size: int | None) -> list[LabelledFace]:
        """Every labelled face (``size``: the side frames are encoded at, where it matters)."""

    @abc.abstractmethod
    def read(self, faces: Sequence[LabelledFace]) -> list[bytes]:
        """The JPEG bytes of ``faces``, in order."""

    def where(self, face: LabelledFace) -> str:
        """``face`` named for a person who must find and fix it."""
        return f"face {face.key} of {self.root}"


@dataclass(frozen=True)
class LabelRow:
    """One row of ``labels.csv``."""

    image: str  # path relative to the data folder
    videoname: str
    label: str  # REAL / FAKE
    original: str  # for fakes, the real video it was made from

    @property
    def is_fake(self) -> bool:
        return self.label == "FAKE"

    @property
    def source(self) -> str:
        """The split group: a fake goes with its original, a real video is its own source."""
        return self.original if self.is_fake and self.original else self.videoname


def read_labels(data: Path) -> list[LabelRow]:
    """Rows of ``labels.csv``; a missing column or unknown label is a one-line ConfigError."""
    path = data / "labels.csv"
    if not path.is_file():
        raise ConfigError(f"--data {data} has no labels.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(LABEL_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
        rows = [LabelRow(*(str(r[c] or "").strip() for c in LABEL_COLUMNS)) for r in reader]
    bad = sorted({r.label for r in rows} - set(LABELS))
    if bad:
        raise ConfigError(f"{path} has labels {bad}; expected REAL or FAKE")
    if not rows:
        raise ConfigError(f"{path} has no rows")
    return rows


class CropsFolder(FaceSource):
    layout = "crops"

    @classmethod
    def matches(cls, root: Path) -> bool:
        return (root / "labels.csv").is_file()

    def faces(self, size: int | None) -> list[LabelledFace]:
        return [
            LabelledFace(key=r.image, video_id=r.videoname, source=r.source, is_fake=r.is_fake)
            for r in read_labels(self.root)
        ]

    def read(self, faces: Sequence[LabelledFace]) -> list[bytes]:
        out = []
        for f in faces:
            path = self.root / f.key
            try:
                out.append(path.read_bytes())
            except FileNotFoundError:
                raise ConfigError(f"image listed in labels.csv is missing: {path}") from None
        return out

    def where(self, face: LabelledFace) -> str:
        return f"image {self.root / face.key}"


def face_key(video_id: str, frame_index: int, track_id: int) -> str:
    """A face row's key in a built data set: unique per (video, frame, track)."""
    return f"{video_id}/{frame_index}/{track_id}"


class DatasetShards(FaceSource):
    layout = "dataset"

    @classmethod
    def matches(cls, root: Path) -> bool:
        return (root / DATASET_MANIFEST).is_file()

    def _table(self, columns: list[str]) -> object:
        import pyarrow.dataset as ds

        from schemas.arrow import LABELLED_FACE_SHARD_SCHEMA

        dataset = ds.dataset(
            str(self.root / "faces"),
            schema=LABELLED_FACE_SHARD_SCHEMA,
            format="parquet",
            ignore_prefixes=[".", "_"],
        )
        return dataset.to_table(columns=columns)

    def faces(self, size: int | None) -> list[LabelledFace]:
        cols = ["video_id", "frame_index", "pts_s", "track_id", "label", "source_id", "split"]
        table = self._table([*cols, "group_id"])
        out = [
            LabelledFace(
                key=face_key(r["video_id"], r["frame_index"], r["track_id"]),
                video_id=r["video_id"],
                # The identity group (v2); a v1 data set grouped by source video alone.
                source=r["group_id"] or r["source_id"],
                is_fake=r["label"] == "FAKE",
                frame_index=r["frame_index"],
                pts_s=r["pts_s"],
                track_id=r["track_id"],
                split=r["split"],
            )
            for r in table.to_pylist()  # type: ignore[attr-defined]
        ]
        if not out:
            raise ConfigError(f"data set {self.root} has no faces")
        return out

    def read(self, faces: Sequence[LabelledFace]) -> list[bytes]:
        table = self._table(["video_id", "frame_index", "track_id", "crop"])
        crops = {
            face_key(r["video_id"], r["frame_index"], r["track_id"]): r["crop"]
            for r in table.to_pylist()  # type: ignore[attr-defined]
        }
        return [crops[f.key] for f in faces]


class ClassFolders(FaceSource):
    """``FAKE/`` and ``REAL/`` folders of videos whose frames are face crops already."""

    layout = "videos"
    frames_per_video = 32  # the scan's default sampling, uniform:32

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._jpegs: dict[str, bytes] = {}

    @classmethod
    def matches(cls, root: Path) -> bool:
        return any((root / c).is_dir() for c in LABELS)

    def faces(self, size: int | None) -> list[LabelledFace]:
        import cv2

        from operators.decode_frames import FrameDecoder
        from operators.detect_faces import encode_jpeg
        from operators.errors import DecodeError, UnsupportedMedia
        from pipelines.config import CropConfig, LimitsConfig, SamplingConfig

        if size is None:
            raise ConfigError("the videos layout needs the model's input size to cut frames")
        decoder = FrameDecoder(
            SamplingConfig("uniform", count=self.frames_per_video), LimitsConfig()
        )
        quality = CropConfig().jpeg_quality
        out: list[LabelledFace] = []
        for label in LABELS:
            folder = self.root / label
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() not in VIDEO_SUFFIXES:
                    continue
                video_id = f"{label}/{path.name}"
                try:
                    with decoder.open(str(path)) as video:
                        for frame in video.frames:
                            img = frame.image
                            interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
                            crop = cv2.resize(img, (size, size), interpolation=interp)
                            key = f"{video_id}#{frame.index}"
                            self._jpegs[key] = encode_jpeg(crop, quality)
                            out.append(
                                LabelledFace(
                                    key=key,
                                    video_id=video_id,
                                    source=video_id,
                                    is_fake=label == "FAKE",
                                    frame_index=frame.index,
                                    pts_s=frame.pts_s,
                                )
                            )
                except (DecodeError, UnsupportedMedia) as err:
                    print(f"skipped {path}: {err}")
        if not out:
            raise ConfigError(f"no decodable videos under {self.root}/FAKE or /REAL")
        return out

    def read(self, faces: Sequence[LabelledFace]) -> list[bytes]:
        return [self._jpegs[f.key] for f in faces]


# Checked in order: a built data set first (it may sit beside other files).
LAYOUTS: tuple[type[FaceSource], ...] = (DatasetShards, CropsFolder, ClassFolders)


def open_faces(data: str | Path, size: int | None = None) -> FaceSet:
    """The labelled faces under ``data``, in whichever layout it has."""
    root = Path(data)
    if not root.is_dir():
        raise ConfigError(f"--data {root} is not a folder")
    for cls in LAYOUTS:
        if cls.matches(root):
            source = cls(root)
            return FaceSet(str(root), cls.layout, source.faces(size), source, size)
    raise ConfigError(f"--data {root} has no labels.csv, {DATASET_MANIFEST} or FAKE/ REAL/ folders")


def split_candidates(uri: str, checkpoint: str | None = None) -> list[str]:
    """Where the split file a checkpoint names may be, most trustworthy first.

    Training records the path it wrote (``<--out>.split.json``), relative to the folder
    it ran in when ``--out`` was relative, so from any other folder that path is wrong.
    The file sits beside the checkpoint, so look there too, by the recorded name (a
    calibrated copy keeps its original's split) and by ``<checkpoint>.split.json``. A
    relative path is tried beside the checkpoint first: the same relative path from
    another folder may name another run's split. A URI or an absolute path is tried
    as recorded first.
    """
    if not checkpoint:
        return [uri]
    folder, _, _ = checkpoint.rpartition("/")
    name = uri.rpartition("/")[2]
    beside = [f"{folder}/{name}" if folder else name, f"{checkpoint}.split.json"]
    recorded_first = "://" in uri or Path(uri).is_absolute()
    ordered = [uri, *beside] if recorded_first else [*beside, uri]
    return list(dict.fromkeys(ordered))


def read_split(uri: str, checkpoint: str | None = None) -> dict[str, list[str]]:
    """A split file written beside a checkpoint: {"train": [keys], "val": [keys], ...}.

    ``uri`` as the checkpoint records it; with ``checkpoint``, also looked up beside it
    (``split_candidates``). Not found anywhere is a one-line ConfigError.
    """
    import fsspec

    for candidate in split_candidates(uri, checkpoint):
        try:
            with fsspec.open(candidate, "r") as f:
                split = json.load(f)
        except FileNotFoundError:
            continue
        if not isinstance(split, dict) or not isinstance(split.get("val"), list):
            raise ConfigError(f"split file {candidate} has no 'val' list")
        return split
    where = f" (nor beside the checkpoint {checkpoint})" if checkpoint else ""
    raise ConfigError(f"split file not found: {uri}{where}")
