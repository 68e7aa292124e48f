"""Reading a user's YAML file (job, calibration) with one-line errors that name the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Callable

import yaml
from pydantic import BaseModel, BeforeValidator, ValidationError

from evosearch.errors import UsageError, validation_error_parts


def read_yaml_file(path: str | Path, what: str, error: type[Exception]) -> Any:
    """The parsed YAML of `path`; `error` (one line: file, line and column, problem) when it cannot be."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {what} file not found")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise error(f"{p}: not valid YAML{at}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{p}: unreadable {what} file ({type(e).__name__})") from None


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# A list of strings that a YAML file may also give as one string (`methods: ties`, `include_path: tasks/`).
OneOrMore = Annotated[list[str], BeforeValidator(_listed)]


def known(name: str, choices, what: str) -> str:
    """`name` if it is one of `choices`; else ValueError `unknown WHAT 'x'; known: a, b` (pydantic's message)."""
    if name not in choices:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(choices)}")
    return name


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def is_safe_name(name: str) -> bool:
    """Whether `name` can be a job's or calibration's name: it becomes `runs/NAME/`, which must stay in runs/."""
    return bool(_SAFE_NAME.match(name)) and ".." not in name


def safe_name(name: str, what: str) -> str:
    """`name` if `is_safe_name`; else ValueError (pydantic's message for a job or calibration file)."""
    if not is_safe_name(name):
        raise ValueError(f"{what} name {name!r} must be letters, digits, '.', '_' or '-' (no '/' or '..')")
    return name


def default_store_url(name: str) -> str:
    """A job's or calibration's store when its file names none: `runs/NAME/evosearch.db` here."""
    return f"sqlite:///{(Path('runs') / name / 'evosearch.db').resolve()}"


def name_and_store(ref: str, store: str | None, load: Callable[[str], Any], what: str) -> tuple[str, str, Any]:
    """(name, store URL, the loaded file or None) of a job or calibration given by its file (read by `load`,
    which raises its own one-line ValueError) or by its name, whose default store is `runs/NAME/evosearch.db`.
    A name that could leave runs/ is a ValueError: it names nothing."""
    if ref.endswith((".yaml", ".yml")) or Path(ref).is_file():
        spec = load(ref)
        return spec.name, store or spec.store, spec
    if not is_safe_name(ref):
        raise ValueError(f"{ref!r} is neither a {what} file nor a {what} name (letters, digits, '.', '_' or '-')")
    return ref, store or default_store_url(ref), None


SQLITE_PREFIX = "sqlite:///"


def store_url(url: str | None, name: str) -> str:
    """The store a file names, with a relative SQLite path made absolute against the current directory (where
    the user ran the command), so a submitted job or a later query from elsewhere opens the same file."""
    if url is None:
        return default_store_url(name)
    if url.startswith(SQLITE_PREFIX):
        path, _, query = url.removeprefix(SQLITE_PREFIX).partition("?")
        if path and path != ":memory:" and not Path(path).is_absolute():
            return f"{SQLITE_PREFIX}{Path(path).resolve()}" + (f"?{query}" if query else "")
    return url


def model_dirs(sources: dict[str, str], base_model: str | None) -> list[str]:
    """Every model directory workers load: the named sources, then the base if it is another."""
    paths = list(dict.fromkeys(sources.values()))
    if base_model and base_model not in paths:
        paths.append(base_model)
    return paths


def parse_section(section: type[BaseModel], field: str, data: Any, source: str, tags: Any,
                  error: type[UsageError]) -> Any:
    """One job-file section (`field` of the wrapper model `section`, a union told apart by `tags`) validated;
    `error` is one line `SOURCE.field.path: message`."""
    try:
        return getattr(section.model_validate({field: data}), field)
    except ValidationError as e:
        loc, msg = validation_error_parts(e, skip=(field, *tags))
        raise error(f"{source}{'.' + loc if loc else ''}: {msg}") from None
