"""The one root of every error evosearch raises on purpose, and the two ways an error ends a command.

Every domain error (a bad recipe, a missing model, a store that cannot be opened, a worker that cannot
start...) subclasses `UsageError` or `RunFailure`, and its message is ONE line naming the file, field,
model, tensor or URL at fault. The command line turns them into exit codes in one place
(`evosearch.cli.common`): a usage error is bad input the user can fix before anything runs (exit 2), a
run failure happened while running (exit 1). A layer that finds a run failure to be the user's input in
its own context (a store URL that cannot be opened, say) raises `UsageError(str(e))` from it.
"""

from __future__ import annotations

import re
from typing import Iterable

from pydantic import ValidationError

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")

USAGE_EXIT, FAILURE_EXIT = 2, 1


class EvosearchError(Exception):
    """Root of evosearch's errors; `exit_code` is what the command line exits with."""

    exit_code = FAILURE_EXIT


class UsageError(EvosearchError):
    """Bad input: a file, flag, name, model set or URL the user gave (exit 2)."""

    exit_code = USAGE_EXIT


class RunFailure(EvosearchError):
    """A failure while running: a worker, the cluster, the database, lm-eval (exit 1)."""

    exit_code = FAILURE_EXIT


class RecipeError(UsageError, ValueError):
    """A recipe that cannot be built; the message is one line naming the field, model or tensor."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """`Type: first line` of an exception: how a failure foreign to evosearch is stored and shown."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def validation_error_parts(error: ValidationError, *, skip: Iterable[str] = ()) -> tuple[str, str]:
    """pydantic's first complaint as (`field.path[0].sub`, message).

    A union member shows up in pydantic's location as its tag (`ps`, `cmaes`) or its class name; those
    name no field, so tags listed in `skip` and capitalised class names are left out, as are the
    `function-...` parts of wrapped validators."""
    skipped = set(skip)
    err = error.errors()[0]
    loc = ""
    for part in err["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif not (part in skipped or part[:1].isupper() or part.startswith("function-")):
            # A key from the user's file may hold a newline or be empty: quoted, the error stays one line.
            name = part if _PLAIN_KEY.fullmatch(part) else repr(part)
            loc += f".{name}" if loc else name
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    return loc, msg.splitlines()[0]


def validation_error_line(error: ValidationError, *, where: str, skip: Iterable[str] = ()) -> str:
    """`WHERE: field.path: message` (or `WHERE: message` when no field is at fault)."""
    loc, msg = validation_error_parts(error, skip=skip)
    return f"{where}: {loc + ': ' if loc else ''}{msg}"
