"""Which processes a test started, however deep: Ray's raylet and workers, Beam's
harness, decode workers. Each test sets a random tag in its environment; every process
started after that inherits it, and ``/proc/PID/environ`` shows it."""

from __future__ import annotations

import os
import time
from pathlib import Path

TAG_ENV = "DFSCAN_TEST_PROCESS_TAG"


def tagged_processes(tag: str) -> list[tuple[int, str]]:
    """Live processes (not this one) whose environment carries ``tag``: everything the
    scan started, however deep (Ray's raylet and workers, decode workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # gone, or not ours to read
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state == "Z" and int(ppid) != os.getpid():
            continue  # exited; reaping it is its own parent's business (Ray's, init's)
        if f"{TAG_ENV}={tag}".encode() in environ.split(b"\0"):
            found.append((int(entry), cmd.decode(errors="replace")[:120]))
    return found


def wait_for_no_processes(tag: str, timeout_s: float = 30.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout_s
    left = tagged_processes(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = tagged_processes(tag)
    return left
