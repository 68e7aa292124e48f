"""What every verb shares: errors turned into one stderr line and an exit code (in `verb`, the one place
where that happens), opening a store, and finding a job by name or by its file.

Exit codes, for every verb alike: 0 ok, 2 usage (`evosearch.errors.UsageError`: a bad file, flag, name,
model set or URL), 1 a failure while running (`RunFailure`, or any other exception). Never a traceback.

The verbs' modules import only what `--help` needs at the top; the rest is imported inside each verb,
which keeps `evosearch --help` and `evosearch status` from loading torch, Ray and lm-eval.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer
from rich.console import Console

from evosearch.config_file import SQLITE_PREFIX, name_and_store
from evosearch.errors import FAILURE_EXIT, EvosearchError, UsageError, one_line

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


def verb(function: F) -> F:
    """A command whose errors end it as one line on stderr with their exit code."""
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except EvosearchError as e:
            print_error(str(e))
            raise typer.Exit(e.exit_code) from None
        except Exception as e:  # noqa: BLE001 - a torch, transformers, lm-eval or OS failure: one line too
            print_error(one_line(e))
            raise typer.Exit(FAILURE_EXIT) from None

    run.__evosearch_verb__ = True
    return run  # type: ignore[return-value]


def open_store(url: str, must_exist: bool):
    """The store at `url`; UsageError when it cannot be opened (bad URL, unreachable) or, with `must_exist`,
    when a SQLite file is not there (opening would create an empty one)."""
    from storage import Store, StoreError  # start-up time: SQLAlchemy is not needed by --help

    if must_exist and url.startswith(SQLITE_PREFIX) and not Path(url.removeprefix(SQLITE_PREFIX)).is_file():
        raise UsageError(f"no store at {url.removeprefix(SQLITE_PREFIX)} (pass --store URL)")
    try:
        return Store.open(url)
    except StoreError as e:
        raise UsageError(str(e)) from None


def load_job_file(path: str):
    """A job file validated (`evosearch.search.job.load_job`)."""
    from evosearch.search.job import load_job  # start-up time: a job given by name never loads torch

    return load_job(path)


def locate_job(job: str, store_url: Optional[str]):
    """(store, JobRecord) of a job given by name or by its job file; UsageError when there is none."""
    from storage import StoreError  # start-up time

    try:
        name, url, _ = name_and_store(job, store_url, load_job_file, "job")
    except ValueError as e:  # JobError is one, and so is a name that could leave runs/
        raise UsageError(str(e)) from None
    store = open_store(url, must_exist=True)
    try:
        return store, store.get_job(name)
    except StoreError as e:
        raise UsageError(str(e)) from None


def load_runnable_job(job_file: Path):
    """The job file validated, and its models checked against its space (headers only, about a second),
    before anything is stored or sent; UsageError otherwise."""
    from evosearch.merge.sources import SourceError  # start-up time: torch
    from evosearch.search.preflight import check_search_models

    spec = load_job_file(job_file)
    try:
        check_search_models(spec.source_paths, spec.search_space)
    except SourceError as e:
        raise UsageError(f"{job_file}: {e}") from None
    return spec
