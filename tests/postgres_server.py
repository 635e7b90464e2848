"""A throwaway PostgreSQL server on a loopback port that a test can stop and start again.

Debian's server binaries (``apt-get install postgresql``, or ``DFSCAN_PG_BIN``), a fresh
data directory, password auth over TCP. Debian's postgres refuses to run as root, so as
root the server runs as the ``postgres`` user, in a directory under /tmp (pytest's tmp
dirs are 0700 root). ``stop()`` then ``start()`` keeps the data, port and password: a
restart as a warehouse sees it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "dfscan-test-secret"


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the server would not start."""


def postgres_bindir() -> Path:
    """Debian's server binaries, or DFSCAN_PG_BIN, newest version first."""
    env = os.environ.get("DFSCAN_PG_BIN")
    candidates = [Path(env)] if env else sorted(Path("/usr/lib/postgresql").glob("*/bin"))[::-1]
    for bindir in candidates:
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    raise PostgresUnavailable("PostgreSQL server binaries not found: apt-get install postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One server: ``init()`` once, then ``start()``/``stop()`` as often as a test needs;
    ``destroy()`` stops it and deletes its data."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="dfscan-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._uid: int | None = None
        self._gid: int | None = None
        self._groups: list[int] | None = None
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "as root, the server needs a 'postgres' user: apt-get install postgresql"
                ) from None
            self._uid, self._gid, self._groups = pw.pw_uid, pw.pw_gid, []

    @property
    def url(self) -> str:
        """The test database, ``postgresql://dfscan:SECRET@127.0.0.1:PORT/dfscan``."""
        return f"postgresql://dfscan:{PASSWORD}@127.0.0.1:{self.port}/dfscan"

    def fresh_database(self, name: str) -> str:
        """An empty database ``name`` (dropped first if a test before left one): the URL.
        Tests sharing this server must not see each other's rows."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._admin_url(), autocommit=True) as con:
            con.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql://dfscan:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def _admin_url(self) -> str:
        return f"postgresql://dfscan:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def init(self) -> PostgresServer:
        """initdb, start, and create the ``dfscan`` database."""
        (self.root / "pwfile").write_text(PASSWORD + "\n")
        (self.root / "sock").mkdir()
        if self._uid is not None and self._gid is not None:
            for path in (self.root, self.root / "pwfile", self.root / "sock"):
                os.chown(path, self._uid, self._gid)
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "dfscan", "-E", "UTF8"]
        initdb += ["--pwfile", str(self.root / "pwfile"), "--auth", "scram-sha-256", "--no-sync"]
        done = subprocess.run(
            initdb,
            capture_output=True,
            text=True,
            cwd=self.root,
            user=self._uid,
            group=self._gid,
            extra_groups=self._groups,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr[-2000:]}")
        self.start()
        import psycopg

        with psycopg.connect(self._admin_url(), autocommit=True) as con:
            con.execute("CREATE DATABASE dfscan")
        return self

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server on its port and wait until it takes connections."""
        import psycopg

        if self.proc is not None:
            raise RuntimeError("PostgresServer already running")
        server = [str(self.bindir / "postgres"), "-D", str(self.data)]
        server += ["-k", str(self.root / "sock"), "-p", str(self.port)]
        server += ["-c", "listen_addresses=127.0.0.1"]
        # Throwaway data: durability costs time and buys nothing here.
        server += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with open(self.log, "ab") as log_fh:
            self.proc = subprocess.Popen(
                server,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise PostgresUnavailable(f"postgres exited ({code}): {self.log_tail()}")
            try:
                with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresUnavailable(
                        f"postgres did not answer in {timeout_s:.0f} s: {self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, committed data is kept."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
