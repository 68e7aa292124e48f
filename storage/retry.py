"""Which database errors are worth another try, and how long to keep trying."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: with the defaults 5 tries, sleeping 0.5, 1, 2 and 4 s in between."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 4.0

    def delays(self) -> Iterator[float]:
        """The sleep before each retry (attempts - 1 of them)."""
        for retry in range(self.attempts - 1):
            yield min(self.first_delay_s * 2**retry, self.max_delay_s)


def is_transient(exc: DBAPIError, backend: str) -> bool:
    """A lost or refused connection (server restarting, network blip) or, on SQLite, a lock held too long.
    Anything else (constraint violations, a missing table) fails the same way on every try."""
    if exc.connection_invalidated:
        return True
    if backend == "sqlite":
        message = str(exc.orig).lower()
        return isinstance(exc, OperationalError) and ("locked" in message or "busy" in message)
    return isinstance(exc, (OperationalError, InterfaceError))
