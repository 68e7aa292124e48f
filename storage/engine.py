"""From a store URL to a configured SQLAlchemy engine, with the password kept out of every message."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from storage.errors import StoreError

SUPPORTED = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
# Plain `postgresql://` would pick psycopg2, which is not a dependency; psycopg 3 is meant.
_DRIVER_ALIASES = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
                   "sqlite+pysqlite": "sqlite"}
_DRIVERS = ("sqlite", "postgresql+psycopg")
_USERINFO = re.compile(r"(://[^:/@]*:)[^@/]*@")
READ_ONLY = "storage_read_only"  # execution option: a transaction that takes no SQLite write lock


def mask_password(text: str) -> str:
    """For text that may hold a URL SQLAlchemy could not parse: `scheme://user:pw@` -> `scheme://user:***@`."""
    return _USERINFO.sub(r"\1***@", text)


def parse_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StoreError(f"store URL {mask_password(str(url))!r} is not a database URL: use {SUPPORTED}") from None
    driver = _DRIVER_ALIASES.get(parsed.drivername, parsed.drivername)
    if driver not in _DRIVERS:
        raise StoreError(f"store URL scheme {parsed.drivername!r} is not supported "
                         f"({display(parsed)}): use {SUPPORTED}")
    return parsed.set(drivername=driver)


def display(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def create_store_engine(url: URL, sqlite_busy_timeout_s: float, connect_timeout_s: float) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, sqlite_busy_timeout_s)
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": max(1, round(connect_timeout_s))}
    # pre-ping: after a server restart the pooled connections are dead; replace them instead of failing a write.
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, connect_args=connect_args)


def _sqlite_engine(url: URL, busy_timeout_s: float) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        # One connection shared by every caller, else each connection would see its own empty database.
        engine = create_engine(url, hide_parameters=True, poolclass=StaticPool,
                               connect_args={"check_same_thread": False})
    else:
        folder = Path(url.database).expanduser().resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StoreError(f"store {display(url)} cannot be created: {folder} is not a directory") from None
        except OSError as exc:
            raise StoreError(f"store {display(url)} cannot be created: {exc.strerror or exc}") from None
        engine = create_engine(url, hide_parameters=True, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see `_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            _use_wal(cursor, busy_timeout_s)  # readers (a status view) never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL keeps commits atomic and durable across crashes
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        # Writers take the lock up front: a deferred transaction that reads and then writes can fail at once
        # with SQLITE_BUSY when another process committed in between; BEGIN IMMEDIATE waits its turn instead.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _use_wal(cursor, busy_timeout_s: float) -> None:
    """WAL is a property of the file, set once. Switching needs the file to itself and SQLite reports a busy
    file at once instead of waiting, so when several processes open a fresh store together, poll until one of
    them has switched it."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
