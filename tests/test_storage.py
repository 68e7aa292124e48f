"""The store on a real SQLite file and a real PostgreSQL server (tests/pg.py): round trips, idempotent writes,
the recipe cache, generations and fronts, progress, calibrations, one-line errors with masked passwords,
a server restart between two writes, and two jobs writing at once."""

from __future__ import annotations

import logging
import pickle
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pg import PG_PASSWORD, free_port

from storage import (
    CalibrationModelRecord,
    CalibrationRecord,
    CandidateRecord,
    RetryPolicy,
    ScoreRecord,
    Store,
    StoreError,
    TaskSplitRecord,
)
from storage.migrate import alembic_config
from storage.models import Base

FAST_RETRY = RetryPolicy(attempts=3, first_delay_s=0.1, max_delay_s=0.2)


def candidate(job_id: int, generation: int, index: int, status: str = "done", value: float = 0.5,
              recipe_hash: str | None = None, **fields) -> CandidateRecord:
    return CandidateRecord(
        job_id=job_id, generation=generation, index=index, genome=[0.1 * index, 1 / 3, 1e-17],
        recipe={"kind": "ps", "merge_method": "ties", "weights": [value, 1 - value]},
        recipe_hash=recipe_hash or f"h{generation}-{index}", status=status,
        scores=[ScoreRecord("l1", "search", estimated=value, anchor_accuracy=value - 0.1),
                ScoreRecord("l2", "search", estimated=1 - value)] if status == "done" else [],
        **fields)


def assert_one_line_without_password(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message and message
    assert PG_PASSWORD not in message
    return message


# jobs

def test_job_round_trip_and_lookup_by_name_or_id(store):
    spec = {"objectives": [{"name": "l1", "direction": "max"}], "nested": {"a": [1, 2.5, None, "x"]}}
    first = store.create_job("alpha", spec, seed=2**40, output_dir="/runs/alpha")
    second = store.create_job("beta", {}, seed=1, output_dir="/runs/beta")
    assert (first.name, first.spec, first.seed, first.status, first.message, first.output_dir) == (
        "alpha", spec, 2**40, "created", None, "/runs/alpha")
    assert first.created_at.tzinfo is not None
    assert store.get_job("alpha") == first == store.get_job(first.id) == store.get_job(str(first.id))
    assert [job.name for job in store.list_jobs()] == ["alpha", "beta"]

    store.set_job_status(second.id, "failed", "worker pool lost")
    updated = store.get_job("beta")
    assert (updated.status, updated.message) == ("failed", "worker pool lost")
    assert updated.updated_at >= updated.created_at


def test_job_errors_are_one_line(store):
    store.create_job("alpha", {}, 0, "/runs/alpha")
    with pytest.raises(StoreError, match="job name 'alpha' is taken") as error:
        store.create_job("alpha", {"other": 1}, 1, "/runs/other")
    assert_one_line_without_password(error)
    assert len(store.list_jobs()) == 1  # the rejected job left nothing behind
    for unknown in ("nope", 999, "999"):
        with pytest.raises(StoreError, match="unknown job") as error:
            store.get_job(unknown)
        assert_one_line_without_password(error)
    with pytest.raises(StoreError, match="unknown job id 999"):
        store.set_job_status(999, "running")
    with pytest.raises(StoreError, match="job status 'paused' is not one of"):
        store.set_job_status(1, "paused")
    with pytest.raises(StoreError, match="unknown job id 999"):
        store.record_candidate(candidate(999, 0, 0))


# candidates

def test_candidate_round_trip_and_recording_again_updates_the_row(store):
    job = store.create_job("alpha", {}, 0, "/runs/alpha")
    rec = candidate(job.id, 0, 3, worker="host:12:cuda:0", attempts=2, build_seconds=1.5, eval_seconds=7.25,
                    overhead_seconds=0.125)
    candidate_id = store.record_candidate(rec)
    [stored] = store.candidates(job.id)
    rec.id = candidate_id
    assert stored == rec  # every field, scores included, floats exact

    failed = candidate(job.id, 0, 4, status="failed", error="CandidateError: NaN logits")
    failed.id = store.record_candidate(failed)

    again = candidate(job.id, 0, 3, value=0.9, worker="host:13", attempts=3)
    again.scores = [ScoreRecord("l1", "search", estimated=0.9)]
    assert store.record_candidate(again) == candidate_id
    again.id = candidate_id
    assert store.candidates(job.id) == [again, failed]
    assert store.candidates(job.id, status="failed") == [failed]
    assert store.candidates(job.id, generation=1) == []
    with pytest.raises(StoreError, match="candidate status 'running' is not one of done, failed"):
        store.record_candidate(candidate(job.id, 0, 5, status="running"))
    broken = candidate(job.id, 0, 5)
    broken.genome[1] = float("nan")
    with pytest.raises(StoreError, match=r"candidate job \d+ g0 i5 has a genome that is not finite"):
        store.record_candidate(broken)


def test_nan_scores_and_timings_are_stored_as_no_value(store):
    """Alike on both backends (SQLite turns NaN into NULL by itself)."""
    job = store.create_job("alpha", {}, 0, "/runs/alpha")
    rec = candidate(job.id, 0, 0, build_seconds=float("nan"))
    rec.scores = [ScoreRecord("l1", "search", estimated=float("nan"), anchor_accuracy=float("inf"))]
    candidate_id = store.record_candidate(rec)
    store.add_scores(candidate_id, [ScoreRecord("l1", "report", full=float("nan"))])
    [stored] = store.candidates(job.id)
    assert stored.build_seconds is None
    assert stored.scores == [ScoreRecord("l1", "search", estimated=None, anchor_accuracy=float("inf")),
                             ScoreRecord("l1", "report")]
    assert store.progress(job.id).best == {}


def test_find_by_hash_returns_a_done_candidate_of_that_job(store):
    job = store.create_job("alpha", {}, 0, "/runs/alpha")
    other = store.create_job("beta", {}, 0, "/runs/beta")
    store.record_candidate(candidate(job.id, 0, 0, status="failed", recipe_hash="same"))
    store.record_candidate(candidate(other.id, 0, 0, recipe_hash="same", value=0.1))
    assert store.find_by_hash(job.id, "same") is None  # failed ones and other jobs' are no cache hits

    original = store.record_candidate(candidate(job.id, 0, 1, recipe_hash="same", value=0.7))
    reuse = candidate(job.id, 1, 0, recipe_hash="same", value=0.7, cached_from=original)
    store.record_candidate(reuse)
    hit = store.find_by_hash(job.id, "same")
    assert (hit.id, hit.generation, hit.index, hit.scores[0].estimated) == (original, 0, 1, 0.7)
    assert store.candidates(job.id, generation=1)[0].cached_from == original


def test_add_scores_adds_and_overwrites_by_objective_and_split(store):
    job = store.create_job("alpha", {}, 0, "/runs/alpha")
    candidate_id = store.record_candidate(candidate(job.id, 0, 0, value=0.5))
    store.add_scores(candidate_id, [ScoreRecord("l1", "report", estimated=0.4, full=0.45)])
    store.add_scores(candidate_id, [ScoreRecord("l1", "report", full=0.47), ScoreRecord("l2", "report", full=0.2)])
    scores = {(score.objective, score.split): score for score in store.candidates(job.id)[0].scores}
    assert scores[("l1", "search")].estimated == 0.5
    assert scores[("l1", "report")] == ScoreRecord("l1", "report", estimated=None, full=0.47)
    assert scores[("l2", "report")].full == 0.2
    with pytest.raises(StoreError, match="unknown candidate id 999"):
        store.add_scores(999, [])
    with pytest.raises(StoreError, match="score split 'test' is not one of search, report"):
        store.add_scores(candidate_id, [ScoreRecord("l1", "test")])


# generations

def test_commit_generation_last_generation_and_front(store):
    job = store.create_job("alpha", {}, 0, "/runs/alpha")
    other = store.create_job("beta", {}, 0, "/runs/beta")
    ids = [store.record_candidate(candidate(job.id, 0, index, value=index / 10)) for index in range(4)]
    assert store.last_generation(job.id) is None and store.front(job.id) == []

    state = pickle.dumps({"mean": [0.5] * 3, "rng": b"\x00\xff" * 100})
    store.commit_generation(job.id, 0, state, [ids[2], ids[0]], hypervolume=0.25)
    last = store.last_generation(job.id)
    assert (last.job_id, last.generation, last.optimizer_state, last.front_candidate_ids, last.hypervolume) == (
        job.id, 0, state, [ids[2], ids[0]], 0.25)
    front = store.front(job.id)
    assert [rec.id for rec in front] == [ids[2], ids[0]]
    assert front[0].scores[0] == ScoreRecord("l1", "search", estimated=0.2, anchor_accuracy=0.2 - 0.1)

    store.commit_generation(job.id, 1, b"one", [ids[3]])
    store.commit_generation(job.id, 1, b"one again", [ids[3], ids[1]], hypervolume=0.5)  # replaces
    last = store.last_generation(job.id)
    assert (last.generation, last.optimizer_state, last.front_candidate_ids) == (1, b"one again", [ids[3], ids[1]])
    assert [rec.id for rec in store.front(job.id, 0)] == [ids[2], ids[0]]
    assert store.last_generation(other.id) is None

    with pytest.raises(StoreError, match=r"names candidates \[\d+\] that are not this job's") as error:
        store.commit_generation(other.id, 0, b"x", [ids[0]])
    assert_one_line_without_password(error)
    assert store.last_generation(other.id) is None  # the rejected commit left nothing behind
    with pytest.raises(StoreError, match="job .* has no committed generation 7"):
        store.front(job.id, 7)


def test_progress_figures(store):
    spec = {"objectives": [{"name": "l1", "direction": "max"}, {"name": "cost", "direction": "min"}]}
    job = store.create_job("alpha", spec, 0, "/runs/alpha", objectives={"l1": "max", "cost": "min"})
    progress = store.progress(job.id)
    assert (progress.generation, progress.done, progress.failed, progress.best) == (None, 0, 0, {})

    for index, (value, cost) in enumerate([(0.3, 12.0), (0.8, 30.0), (0.6, 9.0)]):
        rec = candidate(job.id, 0, index, value=value)
        rec.scores.append(ScoreRecord("cost", "search", estimated=cost))
        rec.scores.append(ScoreRecord("l1", "report", estimated=0.99))  # report split: not a search figure
        store.record_candidate(rec)
    store.record_candidate(candidate(job.id, 0, 3, status="failed"))
    store.commit_generation(job.id, 0, b"s", [])
    store.commit_generation(job.id, 1, b"s", [])
    store.set_job_status(job.id, "running")
    time.sleep(0.05)

    progress = store.progress(job.id)
    assert (progress.job_id, progress.status, progress.generation, progress.done, progress.failed) == (
        job.id, "running", 1, 3, 1)
    assert progress.best == pytest.approx({"l1": 0.8, "l2": 0.7, "cost": 9.0})  # l2 not in spec: maximised
    assert progress.elapsed_seconds >= 0.05
    assert progress.candidates_per_minute == pytest.approx(4 * 60 / progress.elapsed_seconds)

    store.set_job_status(job.id, "finished")
    finished = store.progress(job.id).elapsed_seconds
    time.sleep(0.05)
    assert store.progress(job.id).elapsed_seconds == finished  # a finished job's clock stopped


# calibrations

def calibration_model(label: str, role: str = "source", shift: int = 0) -> CalibrationModelRecord:
    return CalibrationModelRecord(
        label=label, role=role, recipe=None if role != "random" else {"kind": "ps", "seed": shift},
        responses={"l1": {doc: (doc + shift) % 2 for doc in range(6)}, "l2": {10: 1, 3: 0}},
        accuracy={"l1": 0.5, "l2": 0.5}, seconds=1.25)


def test_calibration_models_and_versioned_fits(store):
    rec = CalibrationRecord(name="zoo", tasks=["l1", "l2"], spec={"k": 30},
                            models=[calibration_model("m1"), calibration_model("base", "base")])
    calibration_id = store.save_calibration(rec)
    store.add_calibration_model(calibration_id, calibration_model("random-00", "random", shift=1))
    store.add_calibration_model(calibration_id, calibration_model("random-00", "random", shift=2))  # replaces

    stored = store.get_calibration("zoo")
    assert (stored.id, stored.name, stored.tasks, stored.spec, stored.irt_params, stored.fit_version) == (
        calibration_id, "zoo", ["l1", "l2"], {"k": 30}, None, 0)
    assert stored.created_at is not None
    assert stored.models == [calibration_model("m1"), calibration_model("base", "base"),
                             calibration_model("random-00", "random", shift=2)]  # int doc ids come back

    first = {"a": [[1.0, 0.5]], "b": [0.1], "items": ["l1/0"]}
    store.set_calibration_fit(calibration_id, first, 1)
    store.set_calibration_fit(calibration_id, {"a": [[2.0, 0.5]]}, 2)
    current = store.get_calibration("zoo")
    assert (current.fit_version, current.irt_params) == (2, {"a": [[2.0, 0.5]]})
    older = store.get_calibration("zoo", fit_version=1)
    assert (older.fit_version, older.irt_params) == (1, first)

    with pytest.raises(StoreError, match="calibration name 'zoo' is taken"):
        store.save_calibration(CalibrationRecord(name="zoo", tasks=[], spec={}))
    with pytest.raises(StoreError, match="unknown calibration 'nope'"):
        store.get_calibration("nope")
    with pytest.raises(StoreError, match="unknown calibration id 999"):
        store.add_calibration_model(999, calibration_model("m2"))
    with pytest.raises(StoreError, match="calibration model role 'judge' is not one of"):
        store.add_calibration_model(calibration_id, calibration_model("m2", "judge"))


def test_calibration_saved_with_a_fit(store):
    store.save_calibration(CalibrationRecord(name="fitted", tasks=["l1"], spec={}, irt_params={"a": 1},
                                             fit_version=3))
    stored = store.get_calibration("fitted")
    assert (stored.fit_version, stored.irt_params, stored.models) == (3, {"a": 1}, [])


# schema and backend settings

def test_migration_matches_the_models_and_reopening_is_a_no_op(store, store_url):
    store.create_job("alpha", {}, 0, "/runs/alpha")
    with Store.open(store_url) as reopened:
        assert [job.name for job in reopened.list_jobs()] == ["alpha"]
    with store._engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == "0005"


def test_a_store_of_the_first_schema_is_upgraded_in_place_with_its_jobs_kept(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine

    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.exec_driver_sql("INSERT INTO jobs (name, spec, seed, status, output_dir, created_at, updated_at) "
                                   "VALUES ('old', '{}', 3, 'finished', '/runs/old', '2026-11-20', '2026-11-20')")
        # A job of the first schema whose directions only its spec holds: the upgrade reads them off once.
        spec = '{"objectives": [{"name": "acc", "direction": "max"}, {"name": "cost", "direction": "min"}]}'
        connection.exec_driver_sql("INSERT INTO jobs (name, spec, seed, status, output_dir, created_at, updated_at) "
                                   f"VALUES ('two', '{spec}', 1, 'running', '/runs/two', '2026-11-20', '2026-11-20')")
    engine.dispose()
    with Store.open(f"sqlite:///{path}") as store:
        job = store.get_job("old")
        assert (job.seed, job.status, job.objectives) == (3, "finished", {})
        assert store.task_splits(job.id) == {}
        two = store.get_job("two")
        assert two.objectives == {"acc": "max", "cost": "min"}
        rec = CandidateRecord(job_id=two.id, generation=0, index=0, genome=[0.5], recipe={}, recipe_hash="h",
                              status="done", scores=[ScoreRecord("acc", "search", estimated=0.4),
                                                     ScoreRecord("cost", "search", estimated=7.0)])
        store.record_candidate(rec)
        store.record_candidate(CandidateRecord(**{**rec.__dict__, "index": 1, "recipe_hash": "i", "scores": [
            ScoreRecord("acc", "search", estimated=0.6), ScoreRecord("cost", "search", estimated=9.0)]}))
        assert store.progress(two.id).best == {"acc": 0.6, "cost": 7.0}


def test_task_splits_are_recorded_once_and_never_changed(store):
    job = store.create_job("alpha", {}, 0, "/runs/alpha")
    split = TaskSplitRecord(task="qa", n_docs=5, report_fraction=0.4, seed=7, search_doc_ids=[0, 2, 3],
                            report_doc_ids=[1, 4])
    store.record_task_splits(job.id, [split])
    store.record_task_splits(job.id, [split])  # the same hold-out again (a resume) is a no-op
    assert store.task_splits(job.id) == {"qa": split}
    moved = TaskSplitRecord(task="qa", n_docs=5, report_fraction=0.4, seed=8, search_doc_ids=[0, 1, 2],
                            report_doc_ids=[3, 4])
    with pytest.raises(StoreError, match="task 'qa' already has another hold-out recorded"):
        store.record_task_splits(job.id, [moved])
    assert store.task_splits(job.id) == {"qa": split}


def test_sqlite_uses_wal_foreign_keys_and_a_busy_timeout(tmp_path):
    path = tmp_path / "deep" / "dir" / "store.db"  # parent directories are created
    with Store.open(f"sqlite:///{path}", sqlite_busy_timeout_s=7) as store:
        with store._engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        store.create_job("alpha", {}, 0, "/runs/alpha")
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_store_that_cannot_be_opened_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StoreError, match="store sqlite:///.*/a-file/store.db cannot be created: "
                                         ".*/a-file is not a directory"):
        Store.open(f"sqlite:///{tmp_path}/a-file/store.db")
    with pytest.raises(StoreError, match="store sqlite:///.* is unreachable: unable to open database file"):
        Store.open(f"sqlite:///{tmp_path}")  # a directory


def test_database_from_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "store.db"
    Store.open(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match=r"store sqlite:///.* cannot be migrated: .*9999") as error:
        Store.open(f"sqlite:///{path}")
    assert_one_line_without_password(error)


# URLs and connection failures

@pytest.mark.parametrize("url, expected", [
    ("mysql://root:pw-Kx7-secret@db.example/evo", "scheme 'mysql' is not supported"),
    ("postgresql+asyncpg://u:pw-Kx7-secret@h/db", "scheme 'postgresql+asyncpg' is not supported"),
    ("not a url pw-Kx7-secret", "is not a database URL"),
    ("http://u:pw-Kx7-secret@host/x", "scheme 'http' is not supported"),
    ("postgresql+psycopg://u:pw-Kx7-secret@host:notaport/db", "is not a database URL"),
])
def test_bad_url_is_one_line_without_password(url, expected):
    with pytest.raises(StoreError, match=re.escape(expected)) as error:
        Store.open(url)
    message = assert_one_line_without_password(error) if "@" in url else str(error.value)
    assert "sqlite:///PATH or postgresql+psycopg://" in message


def test_unreachable_postgres_fails_fast_without_password():
    url = f"postgresql+psycopg://evosearch:{PG_PASSWORD}@127.0.0.1:{free_port()}/evosearch?connect_timeout=2"
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"store postgresql\+psycopg://evosearch:\*\*\*@127.0.0.1:\d+/evosearch"
                                         r".* is unreachable: .*") as error:
        Store.open(url)
    assert time.monotonic() - started < 5
    assert_one_line_without_password(error)


def test_wrong_password_is_reported_without_either_password(pg_server):
    with pytest.raises(StoreError, match="password authentication failed") as error:
        Store.open(pg_server.url(password="wrong-pw-Zq9"))
    message = assert_one_line_without_password(error)
    assert "wrong-pw-Zq9" not in message


def test_url_for_display_masks_the_password(pg_url):
    with Store.open(pg_url) as store:
        assert PG_PASSWORD not in store.url_for_display
        assert store.url_for_display.startswith("postgresql+psycopg://evosearch:***@127.0.0.1:")
    with Store.open("postgres" + pg_url.removeprefix("postgresql+psycopg")) as store:  # psycopg 3 implied
        assert store.url_for_display.startswith("postgresql+psycopg://")


# faults

@pytest.mark.timeout(60)
def test_postgres_restart_between_two_writes(pg_server, caplog):
    url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    retry = RetryPolicy(attempts=8, first_delay_s=0.2, max_delay_s=1.0)
    with Store.open(url, retry=retry) as store, caplog.at_level(logging.DEBUG):
        job = store.create_job("alpha", {}, 0, "/runs/alpha")
        first = store.record_candidate(candidate(job.id, 0, 0))
        pg_server.stop()
        restart = threading.Timer(1.0, pg_server.start)
        restart.start()
        try:
            second = store.record_candidate(candidate(job.id, 0, 1))  # retried until the server is back
        finally:
            restart.join()
        store.commit_generation(job.id, 0, b"state", [first, second])
        assert [rec.id for rec in store.front(job.id)] == [first, second]
        assert len(store.candidates(job.id)) == 2
    assert "retrying" in caplog.text
    assert PG_PASSWORD not in caplog.text


@pytest.mark.timeout(60)
def test_postgres_down_too_long_raises_a_resumable_store_error(pg_server, caplog):
    url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    with Store.open(url, retry=FAST_RETRY) as store, caplog.at_level(logging.DEBUG):
        job = store.create_job("alpha", {}, 0, "/runs/alpha")
        first = store.record_candidate(candidate(job.id, 0, 0))
        store.commit_generation(job.id, 0, b"state-0", [first])
        pg_server.stop()
        try:
            with pytest.raises(StoreError, match="is unreachable .* after 3 tries .* can be resumed") as error:
                store.commit_generation(job.id, 1, b"state-1", [first])
            assert_one_line_without_password(error)
        finally:
            pg_server.start()
        # Nothing half-written: generation 1 is absent, generation 0 intact, and the store works again.
        last = store.last_generation(job.id)
        assert (last.generation, last.optimizer_state) == (0, b"state-0")
        store.commit_generation(job.id, 1, b"state-1", [first])
        assert store.last_generation(job.id).generation == 1
    assert PG_PASSWORD not in caplog.text


def open_at_once(url: str, count: int) -> list[Store]:
    """`count` stores opened by as many threads at once on a fresh database: each runs `upgrade head`."""
    opened: list[Store | BaseException] = [None] * count

    def open_one(slot: int) -> None:
        try:
            opened[slot] = Store.open(url)
        except BaseException as exc:  # surfaced by the caller's assert
            opened[slot] = exc

    threads = [threading.Thread(target=open_one, args=(slot,)) for slot in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(store, Store) for store in opened), opened
    return opened


@pytest.mark.timeout(60)
def test_two_jobs_write_at_once_without_cross_talk(store_url):
    """Two stores (as two job drivers would hold), one thread each, interleaving short transactions."""
    errors: list[BaseException] = []
    stores = open_at_once(store_url, 2)
    job_ids = [store.create_job(f"job-{n}", {"n": n}, n, f"/runs/{n}").id for n, store in enumerate(stores)]

    def drive(store: Store, job_id: int, n: int) -> None:
        try:
            for generation in range(3):
                ids = [store.record_candidate(candidate(job_id, generation, index, value=n + index / 100,
                                                        worker=f"w{n}", recipe_hash=f"same-{generation}-{index}"))
                       for index in range(8)]
                store.commit_generation(job_id, generation, f"state-{n}-{generation}".encode(), ids[:2])
        except BaseException as exc:  # surfaced by the main thread's assert
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(store, job_id, n))
               for n, (store, job_id) in enumerate(zip(stores, job_ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        for n, (store, job_id) in enumerate(zip(stores, job_ids)):
            rows = store.candidates(job_id)
            assert len(rows) == 24 and {row.worker for row in rows} == {f"w{n}"}
            assert {round(row.scores[0].estimated) for row in rows} == {n}
            assert store.last_generation(job_id).optimizer_state == f"state-{n}-2".encode()
            assert {rec.job_id for rec in store.front(job_id)} == {job_id}
            assert store.find_by_hash(job_id, "same-0-0").job_id == job_id
    finally:
        for store in stores:
            store.close()


@pytest.mark.timeout(60)
def test_processes_opening_a_fresh_store_at_once_all_succeed(store_url):
    """Each runs `upgrade head` on the empty database; the database's lock lets one create the schema."""
    # Imports first, then all open on the same signal: process start-up alone would stagger them past the race.
    opener = ("import sys; import storage.migrate; from storage import Store; print('ready', flush=True); "
              "sys.stdin.readline(); Store.open(sys.argv[1]).create_job(sys.argv[2], {}, 0, '.')")
    processes = [subprocess.Popen([sys.executable, "-c", opener, store_url, f"job-{n}"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(3)]
    for process in processes:
        assert process.stdout.readline() == "ready\n", process.stderr.read()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    failures = [process.stderr.read() for process in processes if process.wait() != 0]
    assert failures == []
    with Store.open(store_url) as store:
        assert sorted(job.name for job in store.list_jobs()) == ["job-0", "job-1", "job-2"]


CRASHING_WRITER = """
import sys
from storage import CandidateRecord, ScoreRecord, Store
store = Store.open(sys.argv[1])
job = store.create_job("crash", {}, 0, "/runs/crash")
ids = []
for n in range(100000):
    scores = [ScoreRecord(f"t{k}", "search", estimated=n + k / 10) for k in range(3)]
    ids.append(store.record_candidate(CandidateRecord(job.id, n // 5, n % 5, [0.5] * 64, {"n": n}, f"h{n}", "done",
                                                      scores=scores)))
    if n % 5 == 4:
        store.commit_generation(job.id, n // 5, b"state-%d" % (n // 5), ids[-5:-2])
    print(n, flush=True)
"""


@pytest.mark.timeout(60)
def test_writer_killed_mid_write_leaves_no_half_written_rows(store_url):
    writer = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, store_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(40):  # let it get well into its stride, then kill it wherever it is
            assert writer.stdout.readline(), writer.stderr.read()
        writer.kill()
    finally:
        writer.kill()
        writer.wait()
    with Store.open(store_url) as store:
        job = store.get_job("crash")
        rows = store.candidates(job.id)
        assert len(rows) >= 40
        for row in rows:
            n = row.recipe["n"]
            assert (row.generation, row.index, row.genome) == (n // 5, n % 5, [0.5] * 64)
            assert [score.estimated for score in row.scores] == [n, n + 0.1, n + 0.2]
        last = store.last_generation(job.id)
        assert last.optimizer_state == b"state-%d" % last.generation
        assert [rec.index for rec in store.front(job.id)] == [0, 1, 2]
        assert last.generation >= len(rows) // 5 - 1
