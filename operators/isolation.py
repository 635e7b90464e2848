"""Decode+detect of untrusted bytes in a child process that a crash or a hang costs, not
the run.

FFmpeg parses attacker-controlled bytes in C: a decoder bug can segfault, abort or loop
forever. In-process that ends (or stalls) the whole scan and every video after it. Here
a ``FaceExtractor`` hands each video to one long-lived child process, the decode worker,
which loads the detector once and then takes one video at a time:

- the worker dies on a video (a signal: SIGSEGV, SIGABRT, an OOM kill) -> that video is
  ``decode_error`` "decoder crashed (signal N)"; the next video gets a new worker;
- the worker does not answer within the per-video limit (``timeout_s`` + a short grace
  for the cooperative deadline inside it to fire first) -> it is killed -> ``timeout``;
- a Python exception in the worker is a bug, as in-process: the worker exits with its
  traceback on stderr and the parent raises ``DecodeWorkerFailed``.

The worker is a fresh interpreter (``python -m operators.isolation FD``), not a fork:
the parent may run threads (ONNX Runtime, torch, Ray, Beam) and a forked child of a
threaded process can deadlock. Requests and results travel as pickles over a socket
pair; the parent unpickles only record classes, so a worker subverted by a crafted
video cannot make the parent run code through pickle. A worker whose parent is gone
ends itself: on end-of-file while idle, and by ``SIGALRM`` while stuck in a video.

Test hook: ``DFSCAN_TEST_FAULTS="abort=MARK,segv=MARK,hang=MARK,slow=MARK"`` makes the
worker abort, segfault, hang or take 2 s more on a URI containing MARK. A real decoder
crash cannot be had on demand, so the corpus tests use this to prove the isolation; it
lives only in the worker, so the in-process path ignores it.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import weakref
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from operators.errors import DecodeError, VideoTimeout
from pipelines.config import ConfigError
from schemas.records import DetectorInfo, VideoFaces, VideoRef

if TYPE_CHECKING:
    from operators.extract_faces import FaceExtractor

# The worker's own deadline is checked between frames; a single slow frame or detector
# batch can overrun it by a second or two before the parent has to kill.
KILL_GRACE_S = 2.0
# Interpreter start + imports (onnxruntime, insightface, cv2) + detector load: ~2 s idle,
# far more on a loaded 2-core machine running Ray beside it.
STARTUP_TIMEOUT_S = 120.0
FAULTS_ENV = "DFSCAN_TEST_FAULTS"

# What a worker may send back: records, nothing that runs code when unpickled.
_ALLOWED_CLASSES = {
    ("schemas.records", name)
    for name in ("VideoFaces", "VideoRef", "VideoMeta", "FaceCrop", "DetectorInfo", "VideoStatus")
}


class DecodeWorkerFailed(RuntimeError):
    """The worker failed for a reason that is not the video's: a bug or a broken setup."""


class DecoderCrashed(DecodeError):
    """The worker process died on this video (a native crash in a decoder)."""


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_CLASSES:
            raise pickle.UnpicklingError(f"decode worker sent a forbidden type {module}.{name}")
        return super().find_class(module, name)


def loads_record(data: bytes) -> Any:
    """Unpickle a worker's message, allowing only record classes."""
    return _RecordUnpickler(io.BytesIO(data)).load()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


class DecodeWorker:
    """One child process running ``FaceExtractor.extract`` for one video at a time.

    ``extractor`` is an in-process FaceExtractor (``limits.isolate`` False), pickled to
    the child with its small settings; the child calls ``setup()`` once. ``env`` is set
    in the child's environment on top of this process's (its thread count).
    """

    def __init__(
        self, extractor: FaceExtractor, limit_s: float, env: dict[str, str] | None = None
    ) -> None:
        self.extractor = extractor
        self.limit_s = limit_s  # per-video wall clock before the worker is killed
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._finalizer: weakref.finalize | None = None
        self.info: DetectorInfo | None = None
        self.started = 0  # workers started so far (1 + replacements)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> DetectorInfo:
        """Start a worker and wait until its detector is loaded."""
        parent, child = socket.socketpair()
        # Blocking on both ends, whatever socket.setdefaulttimeout() this process had
        # (Ray, HTTP clients set one): a timeout makes the fds O_NONBLOCK, and the
        # Connection reads would fail with EAGAIN.
        parent.setblocking(True)
        child.setblocking(True)
        env = dict(os.environ)
        # The child imports what this process imports, wherever it was put on sys.path
        # (a Ray runtime_env, a Beam staging dir, pytest's rootdir).
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(self.env)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "operators.isolation", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            child.close()
        conn = Connection(parent.detach())
        self._proc, self._conn = proc, conn
        self._finalizer = weakref.finalize(self, _reap, proc, conn)
        self.started += 1
        conn.send(self.extractor)
        if not conn.poll(STARTUP_TIMEOUT_S):
            self.close(kill=True)
            raise DecodeWorkerFailed(f"decode worker did not start in {STARTUP_TIMEOUT_S:.0f} s")
        try:
            kind, value = loads_record(conn.recv_bytes())
        except (EOFError, OSError):
            code = self._reap_code()
            raise DecodeWorkerFailed(f"decode worker died while starting ({code})") from None
        if kind == "config_error":
            self.close()
            raise ConfigError(value)
        self.info = value
        return value

    def close(self, kill: bool = False) -> None:
        """Stop the worker: ask it to exit, or kill it (a hung or crashed worker)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None or conn is None:
            return
        if not kill:
            with contextlib.suppress(OSError):  # already gone: nothing to ask
                conn.send(None)
        _reap(proc, conn, grace_s=0.0 if kill else 5.0)

    def _reap_code(self) -> str:
        proc = self._proc
        self.close(kill=True)
        if proc is None or proc.returncode is None:
            return "unknown exit"
        rc = proc.returncode
        return f"signal {-rc} {_signal_name(-rc)}" if rc < 0 else f"exit code {rc}"

    # -- work --------------------------------------------------------------------------

    def extract(self, ref: VideoRef) -> VideoFaces:
        """The video's VideoFaces, or DecoderCrashed / VideoTimeout when the worker died
        on it or had to be killed (the next call starts a new worker)."""
        if self._proc is None:
            self.start()
        conn, proc = self._conn, self._proc
        assert conn is not None and proc is not None
        conn.send(ref)
        t0 = time.monotonic()
        if not conn.poll(self.limit_s):
            self.close(kill=True)
            raise VideoTimeout(
                f"decode worker killed after {time.monotonic() - t0:.1f} s"
                f" (limit {self.limit_s:.1f} s): decoder hung"
            )
        try:
            kind, value = loads_record(conn.recv_bytes())
        except (EOFError, OSError):
            proc_rc = self._wait_exit(proc)
            self.close(kill=True)
            if proc_rc is not None and proc_rc < 0:
                if -proc_rc == signal.SIGALRM:  # the worker's own backstop fired first
                    raise VideoTimeout("decode worker exceeded the per-video time limit") from None
                raise DecoderCrashed(f"decoder crashed (signal {-proc_rc})") from None
            raise DecodeWorkerFailed(
                f"decode worker exited with code {proc_rc} on {ref.uri!r}"
                " (a bug: its traceback is on stderr)"
            ) from None
        if kind != "result" or not isinstance(value, VideoFaces):
            raise DecodeWorkerFailed(f"decode worker sent {kind!r} instead of a result")
        return value

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes]) -> int | None:
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None


def _reap(proc: subprocess.Popen[bytes], conn: Connection, grace_s: float = 0.0) -> None:
    """Make sure the child is gone and waited for (no zombie, no orphan)."""
    conn.close()
    if proc.poll() is None and grace_s > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --- the worker side ------------------------------------------------------------------


def _faults() -> dict[str, str]:
    spec = os.environ.get(FAULTS_ENV, "")
    pairs = (item.partition("=") for item in spec.split(",") if "=" in item)
    return {kind.strip(): mark.strip() for kind, _, mark in pairs if mark.strip()}


def _inject_fault(faults: dict[str, str], uri: str) -> None:
    """Test-only: stand in for a decoder that crashes or hangs on this input."""
    if (mark := faults.get("abort")) and mark in uri:
        os.abort()
    if (mark := faults.get("segv")) and mark in uri:
        ctypes.string_at(0)  # a read of address 0: SIGSEGV, as a real decoder bug would
    if (mark := faults.get("hang")) and mark in uri:
        while True:
            time.sleep(3600)
    if (mark := faults.get("slow")) and mark in uri:
        time.sleep(2.0)  # then decodes it: time for the parent to go away meanwhile


def _send(conn: Connection, message: tuple[str, Any]) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def worker_main(fd: int) -> int:
    """The child: set the extractor up once, then one video per request until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.set_blocking(fd, True)
    conn = Connection(fd)
    extractor: FaceExtractor = conn.recv()
    try:
        extractor.setup()
    except ConfigError as err:
        _send(conn, ("config_error", str(err)))
        return 2
    _send(conn, ("ready", extractor.detector_info))
    faults = _faults()
    # If the parent dies while this worker is stuck in a video, nothing would ever kill
    # it: the alarm does (default action: terminate), a little after the parent would.
    alarm_s = math.ceil(extractor.limits.timeout_s + 4 * KILL_GRACE_S)
    while True:
        try:
            ref = conn.recv()
        except EOFError:
            return 0  # the parent closed the socket or died
        if ref is None:
            return 0
        signal.alarm(alarm_s)
        _inject_fault(faults, ref.uri)
        result = extractor.extract(ref)
        signal.alarm(0)
        try:
            _send(conn, ("result", result))
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the parent went away mid-video (Ctrl-C, a kill): nothing to tell


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
