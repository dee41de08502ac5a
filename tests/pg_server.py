"""A real PostgreSQL server for tests: ``initdb`` in a temporary folder, ``postgres`` on one address and a free
port, password authentication, stopped and removed on ``stop()`` (also after a failed start).

PostgreSQL refuses to run as root; as root the server runs as ``nobody`` (``WILSON_RAY_PG_USER`` names another
user), so nothing is added to the machine's users. ``prefix`` runs every server command through a wrapper, e.g.
``["ip", "netns", "exec", "wr-head"]`` to serve inside a network namespace.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port

USER = "wilson"  # the database role the URLs use


def have_postgres() -> bool:
    return all(shutil.which(b) for b in ("initdb", "pg_ctl", "postgres"))


class PostgresServer:
    """``start()`` -> ``url(db)``; ``stop()`` always leaves no process and no folder."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: list[str] | None = None,
        databases: tuple[str, ...] = ("mlflow", "optuna"),
        root: Path | None = None,
    ):
        self.host = host
        self.port = port or free_port("127.0.0.1" if host.startswith("127.") else "0.0.0.0")
        self.prefix = list(prefix or [])
        self.databases = databases
        self.password = secrets.token_hex(12)
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="wrpg-", dir="/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self.root / "data"
        self.proc: subprocess.Popen | None = None
        self.run_as = os.environ.get("WILSON_RAY_PG_USER", "nobody") if os.geteuid() == 0 else None

    def url(self, db: str, driver: str = "postgresql", password: bool = True) -> str:
        """The database's URL; ``password=False`` leaves it out (libpq then reads PGPASSWORD or ~/.pgpass)."""
        auth = f"{USER}:{self.password}" if password else USER
        return f"{driver}://{auth}@{self.host}:{self.port}/{db}"

    def _cmd(self, *argv: str) -> list[str]:
        # setpriv execs (runuser would fork and sit between us and postgres's signals)
        user = (
            ["setpriv", f"--reuid={self.run_as}", f"--regid={pwd.getpwnam(self.run_as).pw_gid}", "--clear-groups", "--"]
            if self.run_as
            else []
        )
        return [*self.prefix, *user, *argv]

    def start(self, timeout: float = 60) -> "PostgresServer":
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.root.chmod(0o755)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.run_as:
            ids = pwd.getpwnam(self.run_as)
            os.chown(pwfile, ids.pw_uid, ids.pw_gid)
            self.data.mkdir(mode=0o700)
            os.chown(self.data, ids.pw_uid, ids.pw_gid)
        subprocess.run(
            self._cmd(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                USER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
            cwd="/",
        )
        pwfile.unlink()
        with open(self.data / "pg_hba.conf", "a") as f:  # initdb's file covers 127.0.0.1 only
            f.write("host all all 198.18.0.0/24 scram-sha-256\n")
        self.log = self.root / "postgres.log"
        self.log.touch()
        if self.run_as:
            os.chown(self.log, pwd.getpwnam(self.run_as).pw_uid, -1)
        self.proc = subprocess.Popen(
            self._cmd(
                "postgres",
                "-D",
                str(self.data),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                "",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
            ),
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            if self._ready():
                break
            if time.time() > deadline:
                raise RuntimeError(f"postgres not ready after {timeout} s: {self.log.read_text()[-2000:]}")
            time.sleep(0.3)
        for db in self.databases:
            self.sql("postgres", f"CREATE DATABASE {db}")

    def _ready(self) -> bool:
        import psycopg  # noqa: F401 - a missing client is an error, not a server that is not ready yet

        try:
            self.sql("postgres", "SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - not accepting connections yet
            return False

    def sql(self, db: str, statement: str) -> list[tuple]:
        """Run one statement as the server's role (from this process: reachable only where the server's address
        is, i.e. not across namespaces)."""
        import psycopg

        if self.prefix:  # the server is in another network namespace: run the client there
            out = subprocess.run(
                [*self.prefix, sys.executable, "-c", _SQL_SNIPPET, self.url(db), statement],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-500:])
            import json

            return [tuple(r) for r in json.loads(out.stdout)]
        conn = psycopg.connect(
            host=self.host,
            port=self.port,
            user=USER,
            password=self.password,
            dbname=db,
            connect_timeout=5,
            autocommit=True,
        )
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def pids(self) -> list[int]:
        """The server's processes (postmaster and children), by their data folder on the command line."""
        out = subprocess.run(["pgrep", "-f", f"postgres -D {self.data}"], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in self.pids():  # children of a killed postmaster
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_SQL_SNIPPET = """
import json, sys
import psycopg
conn = psycopg.connect(sys.argv[1], connect_timeout=5, autocommit=True)
cur = conn.cursor()
cur.execute(sys.argv[2])
print(json.dumps(cur.fetchall() if cur.description else [], default=str))
"""
