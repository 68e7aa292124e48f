"""`evosearch submit | status | logs | stop` against a real Ray head on 127.0.0.1 in token-auth mode.

The head is this module's own: its own temp dir, HOME (so its token never touches ~/.ray) and ports; it is
torn down by killing its own process group, never with `ray stop` (that would end every Ray on the machine,
including the local clusters of tests running beside this one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage import Store
from test_job import write_job, zoo_job

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
EVOSEARCH = str(BIN / "evosearch")


@dataclass
class Head:
    address: str
    token: str = field(repr=False)  # pytest prints a failing test's locals
    env: dict  # for client commands: HOME holds the token file; RAY_AUTH_MODE is left unset on purpose
    outputs: list  # every CLI output of the module, to check that the token never shows


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _base_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k not in ("PYTEST_CURRENT_TEST",)}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               COLUMNS="200")  # rich tables: no wrapped cells to search
    return env


def _api(head: Head, path: str) -> dict:
    request = urllib.request.Request(f"{head.address}{path}", headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def ray_head():
    # Short: Ray's unix sockets live under the temp dir and their paths must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="esh", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    env = _base_env(home)
    head_env = {**env, "RAY_AUTH_MODE": "token"}
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=head_env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    token = (home / ".ray" / "auth_token").read_text().strip()
    (gcs, dashboard, agent_listen, agent_grpc, runtime_env, metrics, node_manager, object_manager,
     client_server) = _free_ports(9)
    log = open(root / "head.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent_listen}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
         f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
         f"--object-manager-port={object_manager}", f"--ray-client-server-port={client_server}",
         f"--temp-dir={root / 'ray'}"],
        env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(address=f"http://127.0.0.1:{dashboard}", token=token, env=env, outputs=[])
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"ray start exited: {(root / 'head.log').read_text()[-2000:]}"
            try:
                _api(head, "/api/jobs/")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.monotonic() < deadline, "the Ray dashboard did not come up in 120 s"
                time.sleep(1)
        yield head
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            # A graceful head stop waits on every job and actor (30 s and more); the head's temp dir is
            # removed below, so what a SIGKILL leaves behind goes with it.
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    assert all(head.token not in out for out in head.outputs), "the auth token appeared in an output"


def _cli(head: Head, *args: str, env: dict | None = None, cwd: Path | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([EVOSEARCH, *args], env=env or head.env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    head.outputs += [done.stdout, done.stderr]
    return done


def _wait_for(head: Head, submission_id: str, states: tuple[str, ...], timeout: float = 420) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = _api(head, f"/api/jobs/{submission_id}")
        if info["status"] in states:
            return info
        assert info["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"), \
            f"{submission_id} ended {info['status']}: {info.get('message')}"
        assert time.monotonic() < deadline, f"{submission_id} still {info['status']} after {timeout} s"
        time.sleep(2)


def _small_job(zoo, tmp_path: Path, name: str, **overrides) -> tuple[Path, str]:
    """A small job whose output dir and SQLite store are absolute paths under tmp_path (the head runs here)."""
    store = f"sqlite:///{tmp_path / name / 'evosearch.db'}"
    overrides = {"generations": 1, "fitness": {"mode": "full", "limit": 40}, **overrides}
    job = {**zoo_job(zoo, name=name, **overrides),
           "output_dir": str(tmp_path / name), "store": store}
    return write_job(tmp_path, job, f"{name}.yaml"), store


def _own_task_copy(zoo, tmp_path: Path) -> Path:
    """The zoo's tasks copied with their data files, the YAMLs naming the copies by absolute path."""
    tasks = tmp_path / "my-tasks"
    shutil.copytree(zoo.include_path, tasks)
    for f in tasks.glob("*.yaml"):
        f.write_text(f.read_text().replace(str(zoo.include_path), str(tasks)))
    return tasks


def test_submit_runs_the_job_on_the_cluster_and_its_front_lands_in_the_store(ray_head, tiny_zoo, tmp_path):
    tasks = _own_task_copy(tiny_zoo, tmp_path)
    job_file, store_url = _small_job(tiny_zoo, tmp_path, "submitted", tasks={"include_path": str(tasks)})
    # Submitted from another directory: the job file, its task YAMLs and their data files must travel with
    # the job; the local copy is moved away while the job runs.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _cli(ray_head, "submit", str(job_file), "--address", ray_head.address, cwd=elsewhere)
    tasks.rename(tmp_path / "moved-away")
    assert done.returncode == 0, done.stderr
    submission_id = done.stdout.strip()
    assert submission_id == "evosearch-submitted"

    info = _wait_for(ray_head, submission_id, ("SUCCEEDED",))
    (tmp_path / "moved-away").rename(tasks)  # `status JOB_FILE` below validates the job file here
    assert info["metadata"] == {"evosearch_job": "submitted"}
    assert info["entrypoint"] == "evosearch run evosearch_job.yaml"

    store = Store.open(store_url)
    record = store.get_job("submitted")
    assert record.status == "finished"
    front = store.front(record.id)
    assert front and all(any(s.split == "search" and s.full is not None for s in c.scores) for c in front)
    assert len(store.candidates(record.id)) == 4

    status = _cli(ray_head, "status", str(job_file), "--address", ray_head.address)
    assert status.returncode == 0, status.stderr
    assert "SUCCEEDED" in status.stdout and "finished" in status.stdout
    as_json = json.loads(_cli(ray_head, "status", str(job_file), "--address", ray_head.address, "--json").stdout)
    assert as_json["cluster"]["ray_state"] == "SUCCEEDED" and as_json["cluster"]["submission"] == submission_id
    assert as_json["progress"]["status"] == "finished" and as_json["progress"]["done"] == 4
    logs = _cli(ray_head, "logs", "submitted", "--address", ray_head.address)
    assert logs.returncode == 0 and "submitted: finished after 1 generation(s)" in logs.stdout
    followed = _cli(ray_head, "logs", "submitted", "--address", ray_head.address, "--follow", timeout=120)
    assert followed.returncode == 0 and "submitted: finished after 1 generation(s)" in followed.stdout
    stop = _cli(ray_head, "stop", "submitted", "--address", ray_head.address)
    assert stop.returncode == 0 and "already SUCCEEDED" in stop.stdout


def _committed_generation(store_url: str, name: str):
    """The job's highest committed generation, None before the first commit (or before the store exists)."""
    if not Path(store_url.removeprefix("sqlite:///")).is_file():
        return None
    store = Store.open(store_url)
    try:
        return store.progress(store.get_job(name).id).generation
    except Exception:  # noqa: BLE001 - the job row is not written yet
        return None


def _wait_for_generation(head: Head, store_url: str, name: str, submission_id: str, above: int = -1,
                         timeout: float = 420) -> int:
    deadline = time.monotonic() + timeout
    while (generation := _committed_generation(store_url, name)) is None or generation <= above:
        assert _api(head, f"/api/jobs/{submission_id}")["status"] in ("PENDING", "RUNNING")
        assert time.monotonic() < deadline, f"no generation above {above} committed in {timeout} s"
        time.sleep(1)
    return generation


def test_stop_leaves_a_resumable_store_and_submit_resume_continues_it(ray_head, tiny_zoo, tmp_path):
    # Random search never converges, and a generation on the tiny zoo takes well under a second once the
    # workers are up: only a generation count far out of reach keeps it running until it is stopped.
    job_file, store_url = _small_job(tiny_zoo, tmp_path, "stopped", generations=100_000,
                                     optimizer={"name": "random", "pop_size": 4})
    done = _cli(ray_head, "submit", str(job_file), "--address", ray_head.address)
    assert done.returncode == 0 and done.stdout.strip() == "evosearch-stopped", done.stderr
    again = _cli(ray_head, "submit", str(job_file), "--address", ray_head.address)
    assert again.returncode == 1 and "on the cluster as evosearch-stopped (stop it first" in again.stderr

    _wait_for_generation(ray_head, store_url, "stopped", "evosearch-stopped")
    stop = _cli(ray_head, "stop", "stopped", "--address", ray_head.address)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.startswith("evosearch-stopped: STOPPED; continue it with")
    store = Store.open(store_url)
    record = store.get_job("stopped")
    stopped_at = store.progress(record.id).generation
    assert record.status != "finished" and stopped_at is not None

    resumed = _cli(ray_head, "submit", str(job_file), "--address", ray_head.address, "--resume")
    assert resumed.returncode == 0 and resumed.stdout.strip() == "evosearch-stopped-2", resumed.stderr
    _wait_for_generation(ray_head, store_url, "stopped", "evosearch-stopped-2", above=stopped_at)
    stop = _cli(ray_head, "stop", "stopped", "--address", ray_head.address)  # by name: the latest submission
    assert stop.returncode == 0 and stop.stdout.startswith("evosearch-stopped-2: STOPPED"), stop.stderr

    # Nothing run twice across the stop: one candidate per (generation, index), every committed one complete.
    slots = Counter((c.generation, c.index) for c in store.candidates(record.id))
    assert set(slots.values()) == {1}
    committed = store.progress(record.id).generation
    assert committed > stopped_at and all((g, i) in slots for g in range(committed + 1) for i in range(4))
    status = _cli(ray_head, "status", "stopped", "--address", ray_head.address, "--store", store_url)
    assert status.returncode == 0, status.stderr
    assert "evosearch-stopped-2" in status.stdout and "STOPPED" in status.stdout and "stopped" in status.stdout


def test_an_invalid_job_file_exits_2_before_any_network_call(ray_head, tiny_zoo, tmp_path):
    bad = write_job(tmp_path, zoo_job(tiny_zoo, optimizer={"name": "cmaes", "popsize": 0}), "bad.yaml")
    with closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        done = _cli(ray_head, "submit", str(bad), "--address", f"http://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {bad}: optimizer") and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


def test_an_unreachable_address_or_a_wrong_token_is_one_line_exit_1(ray_head, tiny_zoo, tmp_path):
    job_file, _ = _small_job(tiny_zoo, tmp_path, "unreachable")
    (closed_port,) = _free_ports(1)
    done = _cli(ray_head, "submit", str(job_file), "--address", f"http://127.0.0.1:{closed_port}")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach the Ray cluster at") and len(done.stderr.splitlines()) == 1

    wrong = "0123456789abcdef" * 4
    done = _cli(ray_head, "submit", str(job_file), "--address", ray_head.address,
                env={**ray_head.env, "RAY_AUTH_TOKEN": wrong})
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "Authentication failed" in done.stderr and wrong not in done.stderr + done.stdout
    assert not [j for j in _api(ray_head, "/api/jobs/") if j.get("metadata", {}).get("evosearch_job") == "unreachable"]

    missing = _cli(ray_head, "logs", "no-such-job", "--address", ray_head.address)
    assert missing.returncode == 1 and missing.stderr.strip() == \
        "error: no evosearch submission of job 'no-such-job' on this cluster"


def test_a_killed_driver_of_a_job_submitted_with_max_restarts_is_restarted_and_the_job_finishes(
        ray_head, tiny_zoo, tmp_path):
    import psutil

    job_file, store_url = _small_job(tiny_zoo, tmp_path, "restarted", generations=4,
                                     optimizer={"name": "random", "pop_size": 4})
    done = _cli(ray_head, "submit", str(job_file), "--address", ray_head.address, "--max-restarts", "2")
    assert done.returncode == 0 and done.stdout.strip() == "evosearch-restarted", done.stderr
    submission_id = done.stdout.strip()
    assert _api(ray_head, f"/api/jobs/{submission_id}")["entrypoint"] == \
        "evosearch supervise evosearch_job.yaml --max-restarts 2"
    deadline = time.monotonic() + 420
    while True:  # the first candidate recorded: the driver is mid-job
        assert time.monotonic() < deadline and _api(ray_head, f"/api/jobs/{submission_id}")["status"] in (
            "PENDING", "RUNNING")
        if Path(store_url.removeprefix("sqlite:///")).is_file():
            with Store.open(store_url) as store:
                jobs = [j for j in store.list_jobs() if j.name == "restarted"]
                if jobs and jobs[0].lease_owner and store.candidates(jobs[0].id):
                    owner = jobs[0].lease_owner
                    break
        time.sleep(0.2)
    supervisor = psutil.Process(int(owner.split(":")[1]))  # the lease names the supervisor: host:pid:nonce
    assert "supervise" in supervisor.cmdline()
    (driver,) = supervisor.children()
    assert driver.cmdline()[-2:] == ["run", "evosearch_job.yaml"]
    driver.kill()

    info = _wait_for(ray_head, submission_id, ("SUCCEEDED",))
    assert info["status"] == "SUCCEEDED"
    with Store.open(store_url) as store:
        record = store.get_job("restarted")
        assert (record.status, record.restarts) == ("finished", 1)
        slots = Counter((c.generation, c.index) for c in store.candidates(record.id))
        assert slots == Counter({(g, i): 1 for g in range(4) for i in range(4)})  # none lost, none twice
    logs = _cli(ray_head, "logs", "restarted", "--address", ray_head.address).stdout
    assert "supervisor: restarted: driver was killed by SIGKILL; restarted by its supervisor (1 of 2)" in logs
    assert "restarted: finished after 4 generation(s)" in logs
