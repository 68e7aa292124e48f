"""The entrypoint of `evosearch submit --max-restarts N`: runs the driver (`evosearch run`, then `evosearch
resume`) as a child process and starts it again after a crash, up to N times, recording each restart in
the store (the job's `restarts` count and message). Its drivers share one lease owner, so a restarted
driver takes its own lease back at once instead of waiting for it to expire.

Not restarted: a driver that finished (exit 0), refused bad input (exit 2) or found its job another
driver's (exit 3, `evosearch.search.lease.LEASE_EXIT`), nor one stopped on purpose (SIGTERM to the
supervisor, as `evosearch stop` sends: it is passed on to the driver).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from evosearch.errors import USAGE_EXIT
from evosearch.search.lease import LEASE_EXIT, LEASE_OWNER_ENV, driver_identity
from storage import Store, StoreError

log = logging.getLogger(__name__)

FINAL_EXITS = (0, USAGE_EXIT, LEASE_EXIT)


@dataclass(frozen=True)
class SupervisedJob:
    job_file: Path
    job_name: str
    store_url: str
    max_restarts: int
    resume: bool = False  # the first driver resumes the stored job instead of starting it


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


def _driver_command(job_file: Path, resume: bool) -> list[str]:
    evosearch = Path(sys.executable).with_name("evosearch")
    return [str(evosearch), "resume" if resume else "run", str(job_file)]


def _record_restart(job: SupervisedJob, message: str) -> None:
    try:
        with Store.open(job.store_url) as store:
            store.record_restart(store.get_job(job.job_name).id, message)
    except StoreError as e:  # the restarted driver retries the store itself; the count is what is lost
        log.warning("recording the restart of %s failed: %s", job.job_name, e)


def supervise(job: SupervisedJob, command: Sequence[str] | None = None) -> int:
    """Runs the job's driver until it ends for good; returns the driver's last exit code. `command` (the
    first driver's) is for tests; restarts always resume."""
    env = {**os.environ, LEASE_OWNER_ENV: os.environ.get(LEASE_OWNER_ENV) or driver_identity()}
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        argv = list(command or _driver_command(job.job_file, job.resume))
        restarts = 0
        while True:
            child = subprocess.Popen(argv, env=env)
            code = child.wait()
            if stopping or code in FINAL_EXITS or restarts >= job.max_restarts:
                if code not in FINAL_EXITS and not stopping:
                    print(f"supervisor: the driver of {job.job_name} {_exit_text(code)}; no restarts left "
                          f"({job.max_restarts} used)", file=sys.stderr, flush=True)
                return code
            restarts += 1
            message = (f"driver {_exit_text(code)}; restarted by its supervisor ({restarts} of "
                       f"{job.max_restarts})")
            print(f"supervisor: {job.job_name}: {message}", file=sys.stderr, flush=True)
            _record_restart(job, message)
            argv = _driver_command(job.job_file, resume=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
