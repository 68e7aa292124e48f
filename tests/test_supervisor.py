"""The restart policy of `evosearch supervise` (the entrypoint of `submit --max-restarts`), without Ray:
drivers that are real processes, dying as drivers die. The whole path on a cluster is in test_submit."""

from __future__ import annotations

import sys

from evosearch.search.lease import LEASE_EXIT
from evosearch.search.supervisor import SupervisedJob, supervise
from storage import Store


def _crash_with(code: int) -> list[str]:
    if code < 0:
        return [sys.executable, "-c", f"import os; os.kill(os.getpid(), {-code})"]
    return [sys.executable, "-c", f"raise SystemExit({code})"]


def _job(tmp_path, max_restarts: int) -> tuple[SupervisedJob, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'evosearch.db'}"
    with Store.open(url) as store:
        store.create_job("crashy", {}, 0, str(tmp_path))
    # A job file that is not there: the restarted driver (`evosearch resume` on it) refuses it with exit 2,
    # which ends the supervision.
    return SupervisedJob(job_file=tmp_path / "missing.yaml", job_name="crashy", store_url=url,
                         max_restarts=max_restarts), url


def test_a_killed_driver_is_restarted_and_the_restart_recorded(tmp_path, capfd):
    job, url = _job(tmp_path, max_restarts=2)
    assert supervise(job, command=_crash_with(-9)) == 2  # killed -> restarted -> the resume refused the file
    with Store.open(url) as store:
        record = store.get_job("crashy")
        assert record.restarts == 1
        assert record.message == "driver was killed by SIGKILL; restarted by its supervisor (1 of 2)"
    assert "supervisor: crashy: driver was killed by SIGKILL; restarted by its supervisor (1 of 2)" in \
        capfd.readouterr().err


def test_no_restart_after_success_bad_input_a_lease_conflict_or_with_none_left(tmp_path):
    for code in (0, 2, LEASE_EXIT):
        job, url = _job(tmp_path / str(code), max_restarts=3)
        assert supervise(job, command=_crash_with(code)) == code
        with Store.open(url) as store:
            assert store.get_job("crashy").restarts == 0
    job, url = _job(tmp_path / "none-left", max_restarts=0)
    assert supervise(job, command=_crash_with(1)) == 1
    with Store.open(url) as store:
        assert store.get_job("crashy").restarts == 0
