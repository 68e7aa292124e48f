"""Bring a database to the newest schema with the migrations shipped inside this package."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant: PostgreSQL advisory lock that serialises concurrent `upgrade head` runs (two jobs opening at once).
_MIGRATION_LOCK_KEY = 0x65766F73
# Alembic runs env.py as a freshly loaded module; one migration at a time per process keeps two threads (two
# stores opened at once) from interleaving that with the database locks below.
_PROCESS_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(engine: Engine) -> None:
    """One transaction: on SQLite the writer lock is taken at BEGIN (see `storage.engine`), on PostgreSQL an
    advisory lock, so a second process waits and then finds the schema already at head."""
    with _PROCESS_LOCK, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        command.upgrade(alembic_config(connection), "head")


def schema_revisions(connection: Connection) -> tuple[set[str], set[str]]:
    """(the revisions the database is at, the newest ones shipped here), read without writing anything."""
    current = set(MigrationContext.configure(connection).get_current_heads())
    return current, set(ScriptDirectory.from_config(alembic_config()).get_heads())
