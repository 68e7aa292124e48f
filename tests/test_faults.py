"""Real faults during a search: a worker's process SIGKILLed mid-candidate, a whole Ray node lost mid-job.

Both run the real driver on the tiny zoo against a real SQLite store and check the one promise that matters:
the job finishes and every candidate of every generation is recorded exactly once, none lost, none twice.
Processes are found and killed by PID among the descendants of processes these tests started, never by
name across the machine (other engineers' Ray clusters run beside these tests).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil
import pytest

from evosearch.search.driver import run_job
from evosearch.search.job import parse_job
from storage import Store
from test_job import write_job, zoo_job
from test_submit import BIN, EVOSEARCH, _base_env, _free_ports

pytestmark = pytest.mark.slow

# Ray names a worker process after the actor method it is running.
EVALUATING = "ray::CandidateWorker.run"


def _evaluating_worker(root: psutil.Process) -> Optional[psutil.Process]:
    """A descendant of `root` that is inside `CandidateWorker.run` right now."""
    for proc in root.children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith(EVALUATING):
                return proc
        except psutil.Error:  # gone, or a zombie, between listing and reading
            continue
    return None


def _wait_for_evaluating_worker(root: psutil.Process, going_on: Callable[[], bool],
                                timeout: float = 120) -> Optional[psutil.Process]:
    """The first descendant of `root` seen evaluating, polled while the job is `going_on`."""
    deadline = time.monotonic() + timeout
    while going_on() and time.monotonic() < deadline:
        proc = _evaluating_worker(root)
        if proc is not None:
            return proc
        time.sleep(0.02)
    return None


def _assert_each_candidate_once(store: Store, job_id: int, generations: int, per_generation: int) -> list:
    """Every (generation, index) recorded exactly once and done: lost candidates = 0. Returns them."""
    cands = store.candidates(job_id)
    counts = Counter((c.generation, c.index) for c in cands)
    expected = {(g, i) for g in range(generations) for i in range(per_generation)}
    assert not expected - set(counts), f"lost candidates: {sorted(expected - set(counts))}"
    assert counts == {key: 1 for key in expected}, f"recorded twice: {[k for k, n in counts.items() if n > 1]}"
    assert [c for c in cands if c.status != "done"] == []
    return cands


def test_worker_killed_mid_candidate_is_replaced_and_its_candidate_requeued(ray_local, tiny_zoo, tmp_path):
    spec = parse_job({**zoo_job(tiny_zoo, name="kill9", generations=2, workers={"count": 2},
                                report={"when": "never"}),
                      "output_dir": str(tmp_path / "kill9")})
    store = Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}")
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_evaluating_worker() -> None:
        # ray.init started this process's Ray, so its workers are descendants of this process.
        proc = _wait_for_evaluating_worker(psutil.Process(), lambda: not stop.is_set())
        if proc is not None:
            killed.append(proc.pid)
            proc.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_one_evaluating_worker, daemon=True)
    killer.start()
    try:
        summary = run_job(spec, store)
    finally:
        stop.set()
        killer.join()
    assert killed, "the job ended before a worker could be killed"
    assert summary.status == "finished" and summary.generations == 2

    cands = _assert_each_candidate_once(store, summary.job_id, generations=2, per_generation=4)
    requeued = [c for c in cands if c.attempts > 1]
    assert len(requeued) == 1 and requeued[0].attempts == 2, [(c.index, c.attempts) for c in cands]
    assert not requeued[0].worker.endswith(f":{killed[0]}"), "the re-queued candidate came from the dead worker"
    assert summary.evaluated + sum(c.cached_from is not None for c in cands) == 8


@dataclass
class TwoNodes:
    gcs: str  # host:port for RAY_ADDRESS
    env: dict  # token-auth environment for drivers of this cluster (HOME holds the token)
    head: subprocess.Popen
    second: subprocess.Popen
    root: Path


def _start_node(root: Path, env: dict, name: str, *args: str) -> subprocess.Popen:
    node_manager, object_manager, agent_listen, agent_grpc, runtime_env, metrics = _free_ports(6)
    with open(root / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--num-cpus=1",
             "--node-ip-address=127.0.0.1", f"--temp-dir={root / 'ray'}", f"--node-manager-port={node_manager}",
             f"--object-manager-port={object_manager}", f"--dashboard-agent-listen-port={agent_listen}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
             f"--metrics-export-port={metrics}", *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL a node's `ray start` and everything under it (Ray workers run in their own process groups)."""
    if proc.poll() is None:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGKILL)
        for member in family:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
    proc.wait()


def _wait_for_nodes(cluster: TwoNodes, count: int, timeout: float = 120) -> None:
    probe = (f"import ray, time; ray.init(address={cluster.gcs!r}, log_to_driver=False)\n"
             f"deadline = time.monotonic() + {timeout}\n"
             f"while sum(n['Alive'] for n in ray.nodes()) < {count}:\n"
             "    assert time.monotonic() < deadline, ray.nodes()\n"
             "    time.sleep(0.2)\n")
    done = subprocess.run([sys.executable, "-c", probe], env=cluster.env, capture_output=True, text=True,
                          timeout=timeout + 60)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def two_nodes():
    """A head and a second node on this machine, one CPU each, their own temp dir, ports and token."""
    # Short: Ray's unix sockets live under the temp dir and their paths must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="esf", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    # Token auth as on a real cluster; a lost node is noticed within about 2 s, not Ray's default 15+.
    env = {**_base_env(home), "RAY_AUTH_MODE": "token", "RAY_health_check_period_ms": "500",
           "RAY_health_check_failure_threshold": "3"}
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gcs, client_server = _free_ports(2)
    head = _start_node(root, env, "head", "--head", f"--port={gcs}", "--include-dashboard=false",
                       f"--ray-client-server-port={client_server}")
    second = _start_node(root, env, "second", f"--address=127.0.0.1:{gcs}", '--resources={"second": 1}')
    cluster = TwoNodes(gcs=f"127.0.0.1:{gcs}", env=env, head=head, second=second, root=root)
    try:
        _wait_for_nodes(cluster, 2)
        yield cluster
    finally:
        _kill_node(second)
        _kill_node(head)
        shutil.rmtree(root, ignore_errors=True)


def test_second_node_lost_mid_job_the_job_finishes_on_the_head(two_nodes, tiny_zoo, tmp_path):
    job = zoo_job(tiny_zoo, name="twonodes", generations=2, workers={"count": 2}, report={"when": "never"})
    job["output_dir"] = str(tmp_path / "twonodes")
    path = write_job(tmp_path, job)
    run = subprocess.Popen([EVOSEARCH, "run", str(path)], cwd=tmp_path,
                           env={**two_nodes.env, "RAY_ADDRESS": two_nodes.gcs}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # One worker per node (one CPU each): wait until the second node's is inside a candidate.
        lost = _wait_for_evaluating_worker(psutil.Process(two_nodes.second.pid), lambda: run.poll() is None)
        assert lost is not None, "the job ended before the second node's worker was seen evaluating"
        _kill_node(two_nodes.second)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 0, output[-3000:]
    assert "twonodes: finished after 2 generation(s), 8 candidates" in output, output[-3000:]

    store = Store.open(f"sqlite:///{tmp_path / 'twonodes' / 'evosearch.db'}")
    job_id = store.get_job("twonodes").id
    assert store.get_job(job_id).status == "finished"
    cands = _assert_each_candidate_once(store, job_id, generations=2, per_generation=4)
    requeued = [c for c in cands if c.attempts > 1]
    assert len(requeued) == 1 and not requeued[0].worker.endswith(f":{lost.pid}")


def _pg_spec(zoo, tmp_path: Path, name: str, url: str):
    return parse_job({**zoo_job(zoo, name=name, generations=2, report={"when": "never"}), "store": url,
                      "output_dir": str(tmp_path / name)})


@pytest.mark.timeout(300)
def test_postgresql_stopped_and_restarted_mid_job_the_driver_retries_and_finishes(ray_local, tiny_zoo, pg_server,
                                                                                 tmp_path, caplog):
    import logging
    import uuid

    from pg import PG_PASSWORD
    from storage import RetryPolicy

    url = pg_server.create_database(f"f_{uuid.uuid4().hex[:12]}")
    spec = _pg_spec(tiny_zoo, tmp_path, "pg-outage", url)
    store = Store.open(url, retry=RetryPolicy(attempts=30, first_delay_s=0.2, max_delay_s=1.0))
    outage: list[float] = []

    def on_event(event) -> None:
        # Once the first candidate is recorded, the database goes away for 3 s while the driver writes on.
        if not outage and event.done >= 1:
            pg_server.stop()
            outage.append(time.monotonic())
            threading.Timer(3.0, pg_server.start).start()

    with caplog.at_level(logging.WARNING):
        summary = run_job(spec, store, on_event=on_event)
    assert outage, "the job ended before the database could be stopped"
    assert summary.status == "finished" and summary.generations == 2
    _assert_each_candidate_once(store, summary.job_id, generations=2, per_generation=4)
    assert len(store.front(summary.job_id)) >= 1
    assert "retrying" in caplog.text and PG_PASSWORD not in caplog.text


@pytest.mark.timeout(300)
def test_two_jobs_at_once_on_one_postgresql_both_finish_without_cross_talk(ray_local, tiny_zoo, pg_server, tmp_path):
    import uuid

    url = pg_server.create_database(f"f_{uuid.uuid4().hex[:12]}")
    specs = [_pg_spec(tiny_zoo, tmp_path, name, url) for name in ("pg-a", "pg-b")]
    summaries: dict[str, object] = {}
    errors: list[BaseException] = []

    def drive(spec) -> None:
        try:
            with Store.open(url) as store:  # each driver its own connection pool, as two processes would
                summaries[spec.name] = run_job(spec, store)
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=drive, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    with Store.open(url) as store:
        ids = {}
        for spec in specs:
            summary = summaries[spec.name]
            assert summary.status == "finished" and summary.generations == 2
            cands = _assert_each_candidate_once(store, summary.job_id, generations=2, per_generation=4)
            ids[spec.name] = {c.id for c in cands}
            assert all(c.job_id == summary.job_id for c in cands)
            front = {c.id for c in store.front(summary.job_id)}
            assert front and front <= ids[spec.name], "a job's front holds another job's candidate"
        assert not ids["pg-a"] & ids["pg-b"]
        assert {j.name: j.status for j in store.list_jobs()} == {"pg-a": "finished", "pg-b": "finished"}
