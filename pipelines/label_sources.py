"""Where the labels of a data set come from: one ``LabelSource`` per format.

``lookup(video_id, uri)`` answers per video with a ``VideoLabel`` (REAL/FAKE, the source
video, the people shown, the manipulation method, a side fixed by the labels) or None for
a video the labels do not know, which ``dfscan dataset build`` leaves out and counts.

- ``csv``: columns ``label`` (REAL/FAKE), one key column (``video_id``, ``uri`` or
  ``filename``), optionally ``original`` (for a fake, the key of its real video) and
  ``identity`` (the people shown, ``;``-separated);
- ``dfdc``: a DFDC ``metadata.json`` (``{"x.mp4": {"label": "FAKE", "original": "y.mp4"}}``);
- ``folders``: the name of the folder holding each video (``.../FAKE/x.mp4``);
- ``ffpp``: the FaceForensics++ layout and its official split files (``FfppLabels``).
"""

from __future__ import annotations

import abc
import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pipelines.config import ConfigError

SPLIT_SIDES = ("train", "val", "test")
FFPP_COMPRESSIONS = ("raw", "c23", "c40")
FFPP_ORIGINALS = "original_sequences"
FFPP_MANIPULATED = "manipulated_sequences"
# Fakes made from the hired actors' videos (original_sequences/actors), not from YouTube.
FFPP_ACTOR_METHODS = ("DeepFakeDetection",)


@dataclass(frozen=True)
class VideoLabel:
    label: str  # REAL / FAKE
    source: str  # the source video: a fake's original, a real video itself
    identities: tuple[str, ...] = ()  # people shown: videos sharing one share a side
    method: str | None = None  # how a fake was made, where the labels say
    split: str | None = None  # a side fixed by the labels (FF++ split files)


@dataclass(frozen=True)
class LabelOptions:
    """Settings that only the FaceForensics++ source takes."""

    split_files: str | None = None
    compression: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)


def _name(uri: str) -> str:
    """The file name of a URI or path: the key DFDC and most label files use."""
    return PurePosixPath(uri.rstrip("/")).name


class LabelSource(abc.ABC):
    """Where labels come from; ``lookup`` answers per video, None = unlabelled."""

    kind: ClassVar[str]
    needs_file: ClassVar[bool] = True  # --labels must name a file
    takes_layout_options: ClassVar[bool] = False  # --split-files, --compression
    # Where the labels fix every video's side (FF++ split files); None: drawn by group.
    split_files: str | None = None

    def __init__(self, path: str | None, options: LabelOptions) -> None:
        self.path = path

    @property
    def fixed_split(self) -> bool:
        return self.split_files is not None

    def selects(self, uri: str) -> bool:
        """Whether a listed file belongs to the labelled layout at all (FF++: a video of
        the chosen compression, not a mask video or a split file)."""
        return True

    @abc.abstractmethod
    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None: ...


def _check_label(label: str, where: str) -> str:
    label = label.strip().upper()
    if label not in ("REAL", "FAKE"):
        raise ConfigError(f"{where}: label {label!r} is not REAL or FAKE")
    return label


class CsvLabels(LabelSource):
    kind = "csv"
    KEYS = ("video_id", "uri", "filename")

    def __init__(self, path: str | None, options: LabelOptions) -> None:
        super().__init__(path, options)
        assert path is not None  # open_labels checks needs_file
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            key = next((k for k in self.KEYS if k in fields), None)
            if key is None or "label" not in fields:
                raise ConfigError(f"{path} needs a label column and one of {', '.join(self.KEYS)}")
            self.key = key
            self.rows: dict[str, VideoLabel] = {}
            for i, row in enumerate(reader, start=2):
                k = self._norm(row[key] or "")
                label = _check_label(row["label"] or "", f"{path} line {i}")
                original = self._norm(row.get("original") or "")
                people = {p.strip() for p in (row.get("identity") or "").split(";")}
                self.rows[k] = VideoLabel(
                    label,
                    original if label == "FAKE" and original else k,
                    tuple(sorted(p for p in people if p)),
                )

    def _norm(self, value: str) -> str:
        value = value.strip()
        return _name(value) if self.key in ("uri", "filename") else value

    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None:
        if self.key == "video_id":
            return self.rows.get(video_id)
        return self.rows.get(_name(source_uri))


class DfdcLabels(LabelSource):
    kind = "dfdc"

    def __init__(self, path: str | None, options: LabelOptions) -> None:
        super().__init__(path, options)
        assert path is not None  # open_labels checks needs_file
        try:
            meta = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not JSON: {err.msg}") from None
        if not isinstance(meta, dict):
            raise ConfigError(f"{path} is not a DFDC metadata.json object")
        self.rows: dict[str, VideoLabel] = {}
        for name, entry in meta.items():
            label = _check_label(str(entry.get("label", "")), f"{path} [{name}]")
            original = _name(str(entry.get("original") or ""))
            self.rows[_name(name)] = VideoLabel(
                label, original if label == "FAKE" and original else _name(name)
            )

    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None:
        return self.rows.get(_name(source_uri))


class FolderLabels(LabelSource):
    """No pairing information: every video is its own group."""

    kind = "folders"
    needs_file = False

    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None:
        parent = PurePosixPath(source_uri.rstrip("/")).parent.name.upper()
        if parent not in ("REAL", "FAKE"):
            return None
        return VideoLabel(parent, _name(source_uri))


@dataclass(frozen=True)
class FfppVideo:
    """Where one file sits in the FaceForensics++ layout."""

    real: bool
    subset: str  # originals: youtube | actors; fakes: the method (Deepfakes, ...)
    compression: str  # raw | c23 | c40
    ids: tuple[str, ...]  # originals: (person,); fakes: (target, source)
    scene: str | None  # the actors' videos: 01__walking -> "walking"

    @property
    def people(self) -> str:
        """Whose ids these are: the YouTube subjects or the hired actors."""
        if self.real:
            return self.subset
        return "actors" if self.subset in FFPP_ACTOR_METHODS else "youtube"

    @property
    def source(self) -> str:
        """The original video this one is, or was made from (the target's)."""
        name = self.ids[0] + (f"__{self.scene}" if self.scene else "")
        return f"{self.people}/{name}"


def parse_ffpp(uri: str) -> FfppVideo | None:
    """``.../original_sequences/youtube/c23/videos/000.mp4`` -> FfppVideo; None when the
    file is not a video of the layout (masks, split files, other names)."""
    parts = PurePosixPath(uri.rstrip("/")).parts
    if len(parts) < 5 or parts[-5] not in (FFPP_ORIGINALS, FFPP_MANIPULATED):
        return None
    _, subset, compression, videos, name = parts[-5:]
    if videos != "videos" or compression not in FFPP_COMPRESSIONS:
        return None
    real = parts[-5] == FFPP_ORIGINALS
    head, _, rest = PurePosixPath(name).stem.partition("__")
    ids = tuple(head.split("_"))
    if not all(ids) or len(ids) != (1 if real else 2):
        return None
    return FfppVideo(real, subset, compression, ids, rest.split("__")[0] or None)


def read_ffpp_splits(
    folder: str, storage_options: Mapping[str, Any]
) -> tuple[dict[str, str], dict[frozenset[str], str]]:
    """(id -> side, pair -> side) from the official ``train/val/test.json`` files; an id
    on two sides, or a file that is not a list of id pairs, is a ConfigError."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(folder, **storage_options)
    if not fs.isdir(root):
        raise ConfigError(f"split files folder not found: {folder}")
    id_side: dict[str, str] = {}
    pair_side: dict[frozenset[str], str] = {}
    found = False
    for side in SPLIT_SIDES:
        path = f"{root.rstrip('/')}/{side}.json"
        if not fs.exists(path):
            continue
        found = True
        with fs.open(path, "r") as f:
            try:
                pairs = json.load(f)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{folder}/{side}.json is not JSON: {err.msg}") from None
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(i, str) and i for i in p)
            for p in pairs
        ):
            raise ConfigError(f'{folder}/{side}.json is not a list of id pairs like ["071", "054"]')
        for a, b in pairs:
            for person in (a, b):
                other = id_side.setdefault(person, side)
                if other != side:
                    raise ConfigError(
                        f"split files put id {person} in both {other}.json and {side}.json"
                    )
            pair_side[frozenset((a, b))] = side
    if not found:
        raise ConfigError(f"{folder} has none of {', '.join(s + '.json' for s in SPLIT_SIDES)}")
    return id_side, pair_side


def is_ffpp_root(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """A folder holding both ``original_sequences/`` and ``manipulated_sequences/``."""
    import fsspec

    from operators.list_videos import is_manifest

    if is_manifest(uri):
        return False
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    root = root.rstrip("/")
    return bool(fs.isdir(f"{root}/{FFPP_ORIGINALS}") and fs.isdir(f"{root}/{FFPP_MANIPULATED}"))


class FfppLabels(LabelSource):
    """FaceForensics++: ``original_sequences/youtube/<raw|c23|c40>/videos/000.mp4`` is
    REAL; ``manipulated_sequences/<method>/<comp>/videos/000_003.mp4`` is FAKE, made by
    ``method`` (Deepfakes, Face2Face, FaceSwap, NeuralTextures, FaceShifter, ...).

    Identities are the ids in the names (``000_003``: target 000, source 003), so a fake
    joins both people's groups. With split files, an original takes the side of the pair
    holding its id and a fake ``a_b`` the side of the pair (a, b) or (b, a); the files
    list YouTube ids only, so the actors' videos (``original_sequences/actors``,
    ``DeepFakeDetection``) are in no pair. Masks and other files are not in the layout.
    """

    kind = "ffpp"
    needs_file = False  # the root is optional: it only locates ROOT/splits
    takes_layout_options = True

    def __init__(self, path: str | None, options: LabelOptions) -> None:
        import fsspec

        super().__init__(path, options)
        self.compression = options.compression
        split_dir = options.split_files
        if path:
            fs, root = fsspec.core.url_to_fs(path, **options.storage_options)
            root = root.rstrip("/")
            if not any(fs.isdir(f"{root}/{d}") for d in (FFPP_ORIGINALS, FFPP_MANIPULATED)):
                raise ConfigError(
                    f"--labels {path} is not a FaceForensics++ folder"
                    f" (no {FFPP_ORIGINALS}/ or {FFPP_MANIPULATED}/)"
                )
            if split_dir is None and fs.isdir(f"{root}/splits"):
                split_dir = f"{path.rstrip('/')}/splits"
        self.id_side: dict[str, str] = {}
        self.pair_side: dict[frozenset[str], str] = {}
        if split_dir is not None:
            self.id_side, self.pair_side = read_ffpp_splits(split_dir, options.storage_options)
        self.split_files = split_dir

    def _video(self, uri: str) -> FfppVideo | None:
        video = parse_ffpp(uri)
        if video is None or (self.compression and video.compression != self.compression):
            return None
        return video

    def selects(self, uri: str) -> bool:
        return self._video(uri) is not None

    def lookup(self, video_id: str, source_uri: str) -> VideoLabel | None:
        video = self._video(source_uri)
        if video is None:
            return None
        split = None
        if self.fixed_split and video.people == "youtube":
            if video.real:
                split = self.id_side.get(video.ids[0])
            else:
                split = self.pair_side.get(frozenset(video.ids))
        return VideoLabel(
            label="REAL" if video.real else "FAKE",
            source=video.source,
            identities=tuple(f"{video.people}:{i}" for i in video.ids),
            method=None if video.real else video.subset,
            split=split,
        )


LABEL_SOURCES: dict[str, type[LabelSource]] = {
    c.kind: c for c in (CsvLabels, DfdcLabels, FolderLabels, FfppLabels)
}


def open_labels(kind: str, path: str | None, options: LabelOptions | None = None) -> LabelSource:
    options = options or LabelOptions()
    if kind not in LABEL_SOURCES:
        raise ConfigError(f"unknown --labels-format {kind!r}: one of {', '.join(LABEL_SOURCES)}")
    cls = LABEL_SOURCES[kind]
    if (options.split_files or options.compression) and not cls.takes_layout_options:
        raise ConfigError(
            f"--split-files and --compression are for --labels-format ffpp, not {kind}"
        )
    if cls.needs_file:
        if not path:
            raise ConfigError(f"--labels-format {kind} needs --labels FILE")
        if not Path(path).is_file():
            raise ConfigError(f"labels file not found: {path}")
    return cls(path, options)


def guess_format(
    path: str | None, videos: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> tuple[str, str | None]:
    """(format, labels path): dfdc for *.json, ffpp for a folder, csv for another file;
    without --labels, ffpp with INPUT as root when INPUT is an FF++ root, else folders."""
    if path:
        if path.lower().endswith(".json"):
            return "dfdc", path
        return ("ffpp" if Path(path).is_dir() else "csv"), path
    if videos and is_ffpp_root(videos, storage_options):
        return "ffpp", videos
    return "folders", None
