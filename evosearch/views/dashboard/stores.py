"""The stores a dashboard shows: one URL (`--store`), or every `DIR/*/evosearch.db` (`--runs DIR`, read
again on each listing so a job started later shows up), each under a key that names it in page URLs."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from evosearch.config_file import SQLITE_PREFIX, is_safe_name
from evosearch.errors import UsageError
from storage import Store, StoreError

SINGLE_STORE_KEY = "store"
STORE_FILE = "evosearch.db"


class UnknownStore(UsageError, LookupError):
    """A store key that names no store of this dashboard."""


class StoreSet:
    """Read-only stores by key, opened on first use and kept open."""

    def __init__(self, store_url: Optional[str] = None, runs_dir: Optional[Path] = None):
        if (store_url is None) == (runs_dir is None):
            raise UsageError("give one of --store URL and --runs DIR")
        self._url, self._runs = store_url, runs_dir
        self._open: dict[str, Store] = {}
        self._lock = threading.Lock()

    def _urls(self) -> dict[str, str]:
        if self._url is not None:
            return {SINGLE_STORE_KEY: self._url}
        return {path.parent.name: f"{SQLITE_PREFIX}{path.resolve()}"
                for path in sorted(self._runs.glob(f"*/{STORE_FILE}")) if is_safe_name(path.parent.name)}

    def keys(self) -> list[str]:
        return list(self._urls())

    def get(self, key: str) -> Store:
        with self._lock:
            if key in self._open:
                return self._open[key]
            url = self._urls().get(key)
            if url is None:
                raise UnknownStore(f"no store {key!r} in this dashboard")
            store = self._open[key] = Store.open_read_only(url)
            return store

    def check(self) -> None:
        """UsageError now, before serving, when the one store given cannot be opened for reading."""
        if self._url is None:
            if not self._runs.is_dir():
                raise UsageError(f"--runs {self._runs}: not a directory")
            return
        if self._url.startswith(SQLITE_PREFIX) and not Path(self._url.removeprefix(SQLITE_PREFIX)).is_file():
            raise UsageError(f"no store at {self._url.removeprefix(SQLITE_PREFIX)} (pass --store URL)")
        try:
            self.get(SINGLE_STORE_KEY)
        except StoreError as e:
            raise UsageError(str(e)) from None

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()
