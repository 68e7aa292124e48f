"""Running a job on a Ray cluster through the Ray Jobs API: stage, submit, find, follow, stop.

What travels with a submission (the runtime environment's `working_dir`): the job file, rewritten, and a
copy of every local task YAML directory it names. The entrypoint is `evosearch run` on that copy, so the
head validates the job again before it starts. What does NOT travel:
- model directories (`sources`): they are large; they must exist at the same absolute paths on the cluster
  (a shared filesystem) - the job file carries them resolved;
- files a task YAML names by absolute path (e.g. `dataset_kwargs.data_files`) OUTSIDE its task directory:
  same rule. Those inside it travel with the directory, and the staged YAMLs name them relative to the
  working directory, where the job and its workers run;
- the store: the job file carries its URL as resolved on this machine. A PostgreSQL URL is the one to use
  for a real cluster. A SQLite path is an absolute path that the job process opens on the HEAD node
  (fine when the head is this machine, or the path is on a shared filesystem).

Authentication: a head started with `RAY_AUTH_MODE=token` needs every request to carry its token. The
token is never read, printed or sent by evosearch itself: when a token is available the Ray way
(`RAY_AUTH_TOKEN`, the file at `RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`) and RAY_AUTH_MODE is unset,
token mode is switched on for this process so that Ray's client attaches it. It is not put in the runtime
environment either (the dashboard shows that to anyone who can list jobs).
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import yaml

from evosearch.errors import RunFailure, one_line

if TYPE_CHECKING:  # annotations only: `logs` and `stop` need no job model (torch, transformers, cma: seconds)
    from evosearch.search.job import JobSpec

SUBMISSION_PREFIX = "evosearch-"
JOB_METADATA_KEY = "evosearch_job"
STAGED_JOB_FILE = "evosearch_job.yaml"
STAGED_TASKS_DIR = "evosearch_tasks"
STAGED_DATA_DIR = "evosearch_data"  # the local data files that tasks.overrides name
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RunFailure, RuntimeError):
    """A submission or a cluster query that failed; the message is one line and never holds the token."""


@dataclass(frozen=True)
class ClusterJob:
    """A submission of an evosearch job as the Ray Jobs API reports it."""

    submission_id: str
    job_name: str
    status: str
    message: str
    start_time: Optional[int]  # ms since the epoch
    end_time: Optional[int]


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).expanduser().is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def enable_ray_token_auth() -> None:
    """Token mode for this process's Ray client when a token is available and the user chose no mode."""
    if "RAY_AUTH_MODE" in os.environ or not _token_available():
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:
        # Ray caches its config at import; re-read it so the mode set above takes effect.
        from ray._raylet import Config

        Config.initialize("")


def client(address: str):
    """A JobSubmissionClient for the dashboard at `address` (http://HEAD:8265)."""
    enable_ray_token_auth()
    from ray.job_submission import JobSubmissionClient  # only now: Ray reads RAY_AUTH_MODE when imported

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection, auth and version errors all end the command
        raise SubmitError(f"cannot reach the Ray cluster at {address}: {one_line(e)}") from None


def stage(spec: JobSpec, job_file: Path, into: Path) -> Path:
    """Writes the working directory of a submission into `into`: the job file with its local paths made
    absolute (sources, output_dir, store) or relative to the working directory (task YAMLs, copied)."""
    raw = yaml.safe_load(job_file.read_text(encoding="utf-8"))
    raw["sources"] = dict(spec.sources)
    raw["output_dir"] = spec.output_dir
    raw["store"] = spec.store
    staged_paths = []
    for i, include in enumerate(Path(p) for p in spec.tasks.include_path):
        target = into / STAGED_TASKS_DIR / str(i)
        if include.is_dir():
            shutil.copytree(include, target)
            _point_into_copy(target, include, target.relative_to(into).as_posix())
            staged_paths.append(target.relative_to(into).as_posix())
        else:
            target.mkdir(parents=True)
            shutil.copy2(include, target / include.name)
            staged_paths.append((target / include.name).relative_to(into).as_posix())
    raw["tasks"] = {**raw["tasks"], "include_path": staged_paths, "overrides": _staged_overrides(spec, into)}
    staged = into / STAGED_JOB_FILE
    staged.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return staged


def _staged_overrides(spec: JobSpec, into: Path) -> dict:
    """`tasks.overrides` with every local data file copied under `into` and named relative to it."""
    overrides = copy.deepcopy(spec.tasks.overrides)
    copies: dict[str, str] = {}
    for i, (_, path) in enumerate(spec.tasks.data_files()):
        if str(path) not in copies:
            target = into / STAGED_DATA_DIR / str(i) / path.name
            target.parent.mkdir(parents=True)
            shutil.copy2(path, target)
            copies[str(path)] = target.relative_to(into).as_posix()

    def staged(files):
        if isinstance(files, dict):
            return {k: staged(v) for k, v in files.items()}
        if isinstance(files, list):
            return [staged(v) for v in files]
        return copies.get(str(files), files)

    for override in overrides.values():
        kwargs = override.get("dataset_kwargs")
        if isinstance(kwargs, dict) and "data_files" in kwargs:
            kwargs["data_files"] = staged(kwargs["data_files"])
    return overrides


def _point_into_copy(copy: Path, original: Path, relative: str) -> None:
    """Every path under `original` that a task YAML in `copy` names becomes the same file under `relative`.
    Textual, so lm-eval's `!function` tags and the user's comments survive."""
    prefix = str(original).rstrip("/") + "/"
    for f in sorted(copy.rglob("*.yaml")) + sorted(copy.rglob("*.yml")):
        text = f.read_text(encoding="utf-8")
        if prefix in text:
            f.write_text(text.replace(prefix, relative + "/"), encoding="utf-8")


def _as_cluster_job(info) -> Optional[ClusterJob]:
    metadata = info.metadata or {}
    if not info.submission_id or JOB_METADATA_KEY not in metadata:
        return None
    return ClusterJob(submission_id=info.submission_id, job_name=metadata[JOB_METADATA_KEY],
                      status=str(getattr(info.status, "value", info.status)), message=info.message or "",
                      start_time=info.start_time, end_time=info.end_time)


def submissions(ray_client, job_name: Optional[str] = None) -> list[ClusterJob]:
    """evosearch submissions on the cluster (of one job if named), oldest first."""
    try:
        infos = ray_client.list_jobs()
    except Exception as e:  # noqa: BLE001
        raise SubmitError(f"listing the cluster's jobs failed: {one_line(e)}") from None
    jobs = [j for j in map(_as_cluster_job, infos) if j is not None and job_name in (None, j.job_name)]
    return sorted(jobs, key=lambda j: (j.start_time or 0, j.submission_id))


def find(ray_client, job: str) -> ClusterJob:
    """The latest submission of a job given by name, or the submission with that id."""
    matches = [j for j in submissions(ray_client) if job in (j.job_name, j.submission_id)]
    if not matches:
        raise SubmitError(f"no evosearch submission of job {job!r} on this cluster")
    by_id = [j for j in matches if j.submission_id == job]
    return by_id[0] if by_id else matches[-1]


def next_submission_id(job_name: str, earlier: list[ClusterJob]) -> str:
    """`evosearch-<name>`, then `-2`, `-3`... for resubmissions (Ray keeps every id it has seen)."""
    taken = {j.submission_id for j in earlier}
    candidate, n = f"{SUBMISSION_PREFIX}{job_name}", 1
    while candidate in taken:
        n += 1
        candidate = f"{SUBMISSION_PREFIX}{job_name}-{n}"
    return candidate


def entrypoint(resume: bool, max_restarts: int) -> str:
    """The command the cluster runs: the driver itself, or its supervisor (`evosearch.search.supervisor`)."""
    if max_restarts > 0:
        return f"evosearch supervise {STAGED_JOB_FILE} --max-restarts {max_restarts}" + (" --resume" if resume else "")
    return f"evosearch {'resume' if resume else 'run'} {STAGED_JOB_FILE}"


def submit(spec: JobSpec, job_file: Path, address: str, resume: bool = False, max_restarts: int = 0) -> str:
    """Submits a validated job; returns its submission id. Refuses while an earlier submission of the same
    job is still pending or running (two drivers on one store would fight over it)."""
    ray_client = client(address)
    earlier = submissions(ray_client, spec.name)
    active = [j for j in earlier if j.status not in TERMINAL_STATES]
    if active:
        raise SubmitError(f"job {spec.name!r} is already {active[-1].status} on the cluster as "
                          f"{active[-1].submission_id} (stop it first: evosearch stop {spec.name})")
    submission_id = next_submission_id(spec.name, earlier)
    with tempfile.TemporaryDirectory(prefix="evosearch-submit-") as tmp:
        stage(spec, job_file, Path(tmp))
        try:
            return ray_client.submit_job(
                entrypoint=entrypoint(resume, max_restarts), submission_id=submission_id,
                # No env_vars: the driver's own ray.init sets the offline variables for its workers, and Ray
                # refuses a job whose runtime env repeats a key the driver sets.
                runtime_env={"working_dir": tmp},
                metadata={JOB_METADATA_KEY: spec.name})
        except Exception as e:  # noqa: BLE001
            raise SubmitError(f"submitting {spec.name!r} to {address} failed: {one_line(e)}") from None


def logs(ray_client, submission_id: str) -> str:
    try:
        return ray_client.get_job_logs(submission_id)
    except Exception as e:  # noqa: BLE001
        raise SubmitError(f"reading the logs of {submission_id} failed: {one_line(e)}") from None


def follow_logs(ray_client, submission_id: str) -> Iterator[str]:
    """The job's log as it grows, until the job ends."""
    stream = ray_client.tail_job_logs(submission_id).__aiter__()
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
            except Exception as e:  # noqa: BLE001
                raise SubmitError(f"following the logs of {submission_id} failed: {one_line(e)}") from None
    finally:
        loop.close()


def stop(ray_client, submission_id: str, wait_s: float = 60.0) -> str:
    """Asks Ray to stop the job (SIGTERM, then SIGKILL) and waits until it has ended, so that a resubmission
    is not refused as still running; the store keeps every committed generation. Returns the final state."""
    try:
        ray_client.stop_job(submission_id)
        deadline = time.monotonic() + wait_s
        while True:
            status = ray_client.get_job_status(submission_id)
            state = str(getattr(status, "value", status))
            if state in TERMINAL_STATES or time.monotonic() > deadline:
                return state
            time.sleep(1)
    except Exception as e:  # noqa: BLE001
        raise SubmitError(f"stopping {submission_id} failed: {one_line(e)}") from None
