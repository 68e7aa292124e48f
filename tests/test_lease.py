"""The driver lease in the store: take, renew, release, take-over, an old store upgraded in place, and two
drivers racing for one expired lease in separate processes (SQLite and PostgreSQL): exactly one wins."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine

from evosearch.search.lease import DriverLease, LeaseHeld, LeaseLost, LeaseSettings
from evosearch.views.dashboard.liveness import driver_seems_dead
from evosearch.views.progress import status_rows, status_table
from storage import Store
from storage.migrate import alembic_config
from storage import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=3, first_delay_s=0.1, max_delay_s=0.2)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def test_a_lease_is_taken_renewed_refused_to_others_released_and_taken_over_once_expired(store):
    job = store.create_job("alpha", {}, 0, "/runs/alpha")
    assert (job.lease_owner, job.lease_expires_at, job.restarts) == (None, None, 0)
    first = store.take_lease(job.id, "a", 30)
    assert first.taken and first.owner == "a" and first.previous_owner is None
    assert timedelta(seconds=29) < first.expires_at - _now() <= timedelta(seconds=30)
    refused = store.take_lease(job.id, "b", 30)
    assert not refused.taken and refused.owner == "a" and refused.expires_at == first.expires_at
    assert store.take_lease(job.id, "a", 60).taken  # its own lease again: a restarted driver of one supervisor
    assert store.renew_lease(job.id, "a", 0.2) and not store.renew_lease(job.id, "b", 30)
    time.sleep(0.3)
    assert store.get_job(job.id).lease_live(_now()) is False
    taken = store.take_lease(job.id, "b", 30)  # expired: anyone may take it
    assert taken.taken and taken.previous_owner == "a"
    assert not store.renew_lease(job.id, "a", 30)  # "a" learns it lost the job at its next renewal
    store.release_lease(job.id, "a")  # not a's to release: nothing changes
    assert store.get_job(job.id).lease_expires_at == taken.expires_at
    forced = store.take_lease(job.id, "c", 30, force=True)
    assert forced.taken and forced.previous_owner == "b" and forced.previous_expires_at == taken.expires_at
    store.release_lease(job.id, "c")
    released = store.get_job(job.id)
    assert (released.lease_owner, released.lease_expires_at) == ("c", None)
    assert store.take_lease(job.id, "d", 30).taken
    assert store.record_restart(job.id, "driver exited -9; restart 1 of 2") == 1
    assert (store.get_job(job.id).restarts, store.get_job(job.id).message) == (1, "driver exited -9; restart 1 of 2")


def _racer(url: str, job_id: int, owner: str, rounds: int, barrier, results) -> None:
    with Store.open(url, retry=FAST_RETRY) as store:
        for _ in range(rounds):
            barrier.wait()  # everyone at once
            results.put((owner, store.take_lease(job_id, owner, 0.5).taken))
            barrier.wait()  # the round is over; the lease expires before the next one
            time.sleep(0.6)


def test_drivers_racing_for_an_expired_lease_exactly_one_wins(store, store_url):
    """Four processes, five rounds: each round they all try to take the (expired) lease at once."""
    job = store.create_job("raced", {}, 0, "/runs/raced")
    store.take_lease(job.id, "killed-driver", 0.01)
    racers, rounds = 4, 5
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(racers), context.Queue()
    processes = [context.Process(target=_racer, args=(store_url, job.id, f"driver-{i}", rounds, barrier, results))
                 for i in range(racers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0] * racers
    outcomes = [results.get(timeout=5) for _ in range(racers * rounds)]
    for start in range(0, len(outcomes), racers):
        winners = [owner for owner, taken in outcomes[start:start + racers] if taken]
        assert len(winners) == 1, outcomes[start:start + racers]
    assert len({owner for owner, taken in outcomes if taken}) >= 1


def test_the_keeper_renews_in_the_background_and_a_taken_over_driver_stops(tmp_path):
    with Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}", retry=FAST_RETRY) as store:
        job = store.create_job("kept", {}, 0, "/runs/kept")
        lease = DriverLease(store, job, LeaseSettings(seconds=1.0, renewals_per_lease=5), owner="one")
        assert lease.take() is None
        lease.start()
        time.sleep(1.5)  # longer than the lease: only renewals keep it live
        assert store.get_job(job.id).lease_live(_now())
        other = DriverLease(store, job, LeaseSettings(seconds=1.0), owner="two")
        with pytest.raises(LeaseHeld, match=r"job 'kept' is being run by driver one \(its lease is live for "
                                            r"\d s more\); .* --force"):
            other.take()
        notice = other.take(force=True)
        assert notice is not None and "took job 'kept' over from driver one" in notice and "\n" not in notice
        time.sleep(0.5)
        with pytest.raises(LeaseLost, match="job 'kept' was taken over by driver two"):
            lease.check()
        lease.release()  # no longer its lease: left alone
        assert store.get_job(job.id).lease_owner == "two" and store.get_job(job.id).lease_live(_now())
        other.release()
        assert store.get_job(job.id).lease_expires_at is None


def test_status_and_dashboard_say_dead_once_the_lease_of_a_running_job_expires(tmp_path):
    with Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}", retry=FAST_RETRY) as store:
        job = store.create_job("crashed", {}, 0, "/runs/crashed")
        store.set_job_status(job.id, "running")
        store.take_lease(job.id, "host:123:ab", 0.3)

        def row() -> dict:
            record = store.get_job(job.id)
            return status_rows([(record, store.progress(record.id))])[0]

        live = row()
        assert (live["status"], live["driver"], live["driver_dead"]) == ("running", "host:123:ab", False)
        assert not driver_seems_dead(live["status"], 1e9, None, lease_expired=live["driver_dead"])
        time.sleep(0.4)
        dead = row()
        assert (dead["status"], dead["driver_dead"]) == ("dead", True) and dead["lease_seconds_left"] < 0
        assert driver_seems_dead(dead["status"], 0.0, None, lease_expired=True)
        assert "dead (driver host:123:ab gone" in str(status_table([(store.get_job(job.id),
                                                                     store.progress(job.id))]).columns[1]._cells)
        store.set_job_status(job.id, "stopped")
        assert row()["status"] == "stopped" and row()["driver_dead"] is None


def test_a_store_of_schema_0003_with_a_running_job_is_upgraded_in_place(tmp_path):
    from alembic import command

    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0003")
        connection.exec_driver_sql(
            "INSERT INTO jobs (name, spec, seed, status, output_dir, created_at, updated_at, objectives) "
            "VALUES ('old', '{}', 3, 'running', '/runs/old', '2026-11-20', '2026-11-20', '{}')")
    engine.dispose()
    with Store.open(f"sqlite:///{path}") as store:
        old = store.get_job("old")
        assert (old.status, old.lease_owner, old.lease_expires_at, old.restarts) == ("running", None, None, 0)
        (row,) = status_rows([(old, store.progress(old.id))])
        assert row["status"] == "running" and row["driver_dead"] is None  # no lease: the write-age rule tells
        assert driver_seems_dead(row["status"], row["seconds_since_last_write"], None)  # quiet since November
        assert store.take_lease(old.id, "new-driver", 30).taken


def test_a_bad_lease_length_in_the_environment_is_a_usage_error(monkeypatch):
    from evosearch.errors import UsageError

    monkeypatch.setenv("EVOSEARCH_LEASE_SECONDS", "soon")
    with pytest.raises(UsageError, match="EVOSEARCH_LEASE_SECONDS='soon' is not a positive number"):
        LeaseSettings.from_env()
    monkeypatch.setenv("EVOSEARCH_LEASE_SECONDS", "2.5")
    assert LeaseSettings.from_env() == LeaseSettings(seconds=2.5)
