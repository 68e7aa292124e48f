"""A throwaway PostgreSQL server for the store tests: started once per session on 127.0.0.1 on a free port,
password authentication for a role with a password, removed at the end. Uses the server binaries that
.ci/postgres.sh installs; never a system service."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_USER = "evosearch"
PG_PASSWORD = "pw-Kx7-secret"  # distinctive, so a test can tell it never shows up in a message or log


def find_server_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, newest version first."""
    candidates = [shutil.which("initdb")] + sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                                   key=lambda path: int(Path(path).parts[-3]), reverse=True)
    for initdb in filter(None, candidates):
        bin_dir = Path(initdb).resolve().parent
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    def __init__(self, bin_dir: Path, root: Path, port: int):
        self.bin_dir, self.root, self.port = bin_dir, root, port
        self.data_dir = root / "data"
        # PostgreSQL refuses to run as root.
        self._as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def url(self, database: str = "evosearch", password: str = PG_PASSWORD) -> str:
        return f"postgresql+psycopg://{PG_USER}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as_owner, *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = (self.root / "server.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr.strip()} {tail}")

    def init(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(PG_PASSWORD + "\n")
        if self._as_owner:
            shutil.chown(self.root, "postgres")
            shutil.chown(password_file, "postgres")
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", PG_USER,
                  f"--pwfile={password_file}", "--auth-host=scram-sha-256", "--auth-local=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")

    def start(self) -> None:
        # Durability settings off: a test server, thrown away; restarts are clean (pg_ctl stop -m fast).
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
        self._run(str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l",
                  str(self.root / "server.log"), "-w", "-t", "30", "-o", options)

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")

    def create_database(self, name: str) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server():
    bin_dir = find_server_binaries()
    if bin_dir is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
                    "/usr/lib/postgresql/*/bin: run .ci/postgres.sh", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="evosearch-pg-"))  # not under pytest's 0700 root-owned tmp dir
    server = PgServer(bin_dir, root, free_port())
    try:
        server.init()
        server.start()
        server.create_database("evosearch")
        yield server
    finally:
        if (server.data_dir / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """postgresql+psycopg://evosearch:PASSWORD@127.0.0.1:PORT/evosearch on the session's server."""
    return pg_server.url()
