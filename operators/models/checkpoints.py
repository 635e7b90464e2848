"""The dfscan checkpoint file: weights plus the metadata needed to use them correctly.

A checkpoint carries its own preprocessing (input size, mean/std, crop scale) and its
provenance (training data and terms, metrics, code version), so a scan never has to guess
how a model expects its faces and every score row can name the exact bytes that made it
(``model_version`` = arch + sha256 prefix). Files are read with ``weights_only=True``: a
checkpoint from an object store is data, never code.

Reading the metadata does not need torch once this machine has read the same bytes: the
meta of every checkpoint loaded is kept in the cache folder under the file's sha256
(``CheckpointFile.meta``). A scan whose classifier runs in ONNX Runtime from a cached
graph therefore never imports torch, which is 1.5 s of start-up and 0.65 s of interpreter
exit per process on the benchmark machine (``benchmarks/bench_throughput.py``'s fixed cost).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import pickle
import re
import struct
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

from pipelines.config import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
CACHE_ENV = "DFSCAN_CACHE_DIR"

FORMAT = "dfscan-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointMeta:
    """What a scorer must know about a checkpoint besides its weights."""

    arch: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_scale: float = 1.3  # face box enlargement the model was trained with (FF++ convention)
    training_data: str = ""  # what it was trained on, with that data's terms
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0  # seconds since the epoch
    code_version: str = ""
    temperature: float = 1.0  # logit divisor, fitted by calibration later; 1.0 = raw
    threshold: float | None = None  # decision threshold chosen on validation data, if any
    extra: dict[str, str] = field(default_factory=dict)  # e.g. head options needed to rebuild

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so ``torch.load(weights_only=True)`` can read it back."""
        d = dataclasses.asdict(self)
        d["mean"] = [float(v) for v in self.mean]
        d["std"] = [float(v) for v in self.std]
        d["metrics"] = {str(k): float(v) for k, v in self.metrics.items()}
        d["extra"] = {str(k): str(v) for k, v in self.extra.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointMeta:
        """Rebuild from a stored dict; unknown keys from newer writers are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        missing = {"arch", "input_size", "mean", "std"} - kw.keys()
        if missing:
            raise ConfigError(f"checkpoint meta lacks {', '.join(sorted(missing))}")
        kw["mean"] = tuple(float(v) for v in kw["mean"])
        kw["std"] = tuple(float(v) for v in kw["std"])
        kw["input_size"] = int(kw["input_size"])
        kw["metrics"] = {str(k): float(v) for k, v in dict(kw.get("metrics") or {}).items()}
        kw["extra"] = {str(k): str(v) for k, v in dict(kw.get("extra") or {}).items()}
        return cls(**kw)


@dataclass(frozen=True)
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]
    meta: CheckpointMeta
    sha256: str


def model_version(meta: CheckpointMeta, sha256: str) -> str:
    """The id stored on every score row: readable arch, exact bytes."""
    return f"{meta.arch}-{sha256[:12]}"


def save_checkpoint(
    state_dict: dict[str, torch.Tensor],
    meta: CheckpointMeta,
    uri: str,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write the checkpoint to ``uri`` (local path or fsspec URI); return sha256 of its bytes.

    The bytes go to a temporary name in the same folder and are moved into place, so a
    crash mid-write never leaves a truncated file under the real name.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
    }
    import torch

    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()

    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    try:
        fs.mv(tmp, path)
    except OSError:
        fs.rm(tmp)
        raise
    return digest


def _read_bytes(uri: str, storage_options: dict[str, Any] | None) -> bytes:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"checkpoint not found: {uri}") from None
    except IsADirectoryError:
        raise ConfigError(f"checkpoint is a directory, not a file: {uri}") from None


# What torch.load raises on bytes that are not a torch file, or hold objects outside the
# weights_only allow-list: the unpickler surfaces malformed input as any of these.
UNREADABLE = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    zipfile.BadZipFile,
    ValueError,
    KeyError,
    IndexError,
    struct.error,
)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def unreadable_reason(err: BaseException) -> str:
    """What torch.load's error says about the file, in a few words.

    torch's messages run to paragraphs of advice (re-run with ``weights_only=False``,
    allow-list the class) that is wrong here: a file that is not plain tensors is refused
    on purpose. Keep the class it refused, or the first sentence of the first line.
    """
    if isinstance(err, EOFError):
        return "file ends early"
    text = _ANSI.sub("", str(err)).strip()
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return f"holds a pickled {refused.group(1)}, not only tensors"
    unpickler = re.search(r"WeightsUnpickler error: (.+)", text)
    if unpickler:
        text = unpickler.group(1)
    first = re.split(r"\.(?:\s|$)", text.splitlines()[0] if text else "", maxsplit=1)[0]
    if not first or first.isdigit() or isinstance(err, KeyError | IndexError | struct.error):
        return "not a torch file"  # the legacy reader's bare errors on a wrong magic number
    return first[:160]


def load_weights_only(data: bytes, what: str) -> object:
    """``torch.load(weights_only=True)`` on CPU; unreadable input is a one-line ConfigError
    ``{what} (<short reason>)``."""
    import torch

    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except UNREADABLE as e:
        raise ConfigError(f"{what} ({unreadable_reason(e)})") from None


def cache_dir(configured: str | None, kind: str) -> Path:
    """``kind``'s folder in the cache: under the argument, $DFSCAN_CACHE_DIR, else the
    user's cache folder; a temporary folder when that cannot be written (read-only home)."""
    base = configured or os.environ.get(CACHE_ENV)
    if base:
        path = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(xdg) / "dfscan"
    path = path / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        if base:
            raise ConfigError(f"cache folder {path} cannot be created") from None
    fallback = Path(tempfile.gettempdir()) / f"dfscan-{os.getuid()}" / kind
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def write_atomically(path: Path, write: Any) -> None:
    """``write(tmp)`` then rename: workers racing to fill the cache never read half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class CheckpointFile:
    """A checkpoint's bytes, read once: the meta without torch when these exact bytes have
    been loaded on this machine before, the weights (torch) only when asked for."""

    uri: str
    data: bytes = field(repr=False)
    sha256: str
    cache_dir: str | None = None  # None: the default cache folder (see ``cache_dir``)
    _loaded: LoadedCheckpoint | None = field(default=None, repr=False)
    _meta: CheckpointMeta | None = field(default=None, repr=False)

    def load(self) -> LoadedCheckpoint:
        """Weights and meta, validated (torch, ``weights_only``); the meta is then cached."""
        if self._loaded is None:
            self._loaded = _parse(self.data, self.uri, self.sha256)
            self._meta = self._loaded.meta
            self._remember(self._loaded.meta)
        return self._loaded

    @property
    def meta(self) -> CheckpointMeta:
        """Read once per file object: from the cache, else from the parsed checkpoint."""
        if self._meta is None:
            self._meta = self._cached_meta() or self.load().meta
        return self._meta

    def _cached_meta(self) -> CheckpointMeta | None:
        path = self._meta_path()
        try:
            return CheckpointMeta.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, AttributeError, ConfigError) as e:
            log.warning("replacing unreadable cached checkpoint meta %s: %s", path, e)
            path.unlink(missing_ok=True)  # load() writes it afresh
            return None

    def _meta_path(self) -> Path:
        # Named by the format this dfscan reads too: an entry written by a reader of
        # another format version never skips this one's version check.
        name = f"{self.sha256}-v{FORMAT_VERSION}.json"
        return cache_dir(self.cache_dir, "checkpoints") / name

    def _remember(self, meta: CheckpointMeta) -> None:
        """Keep the meta for the next read of these bytes; a cache that cannot be written
        only costs that read its torch import."""
        try:
            path = self._meta_path()
            if not path.exists():
                text = json.dumps(meta.to_dict(), sort_keys=True)
                write_atomically(path, lambda tmp: tmp.write_text(text))
        except (OSError, ConfigError) as e:
            log.warning("checkpoint meta not cached: %s", e)


def _cannot_read(uri: str) -> str:
    return f"checkpoint {uri} cannot be read: not a dfscan checkpoint"


def read_checkpoint(
    uri: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None
) -> CheckpointFile:
    """The checkpoint's bytes and sha256; nothing is parsed yet."""
    data = _read_bytes(uri, storage_options)
    if not data.startswith(ZIP_MAGIC):
        raise ConfigError(f"{_cannot_read(uri)} (not a torch zip archive)")
    return CheckpointFile(uri, data, hashlib.sha256(data).hexdigest(), cache_dir)


def load_checkpoint(uri: str, storage_options: dict[str, Any] | None = None) -> LoadedCheckpoint:
    """Read a checkpoint on CPU with ``weights_only=True``; fail with one line if it is not ours."""
    return read_checkpoint(uri, storage_options).load()


def _parse(data: bytes, uri: str, digest: str) -> LoadedCheckpoint:
    obj = load_weights_only(data, _cannot_read(uri))
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ConfigError(f"{_cannot_read(uri)} (no format={FORMAT!r} marker)")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"checkpoint {uri} has format_version {version!r}; this dfscan reads {FORMAT_VERSION}"
        )
    state_dict = obj.get("state_dict")
    meta = obj.get("meta")
    if not isinstance(state_dict, dict) or not isinstance(meta, dict):
        raise ConfigError(f"checkpoint {uri} lacks its state_dict or meta")
    return LoadedCheckpoint(
        state_dict=state_dict, meta=CheckpointMeta.from_dict(meta), sha256=digest
    )
