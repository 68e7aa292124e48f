"""`evosearch dashboard` over plain HTTP: every JSON endpoint against the store it reads, the token gate,
escaping, liveness, read-only opening (SQLite, and PostgreSQL with a SELECT-only role) and the verb itself.
Stores are real SQLite / PostgreSQL files written the way the driver writes them (`dashboard_store`)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from dashboard_store import SyntheticSearch, fetch, fetch_json, running_dashboard
from evosearch.cli import app
from evosearch.views.dashboard.liveness import LivenessRule, driver_seems_dead, typical_candidate_seconds
from pg import PG_PASSWORD, PG_USER
from storage import Store, StoreError

SCRIPT_ERROR = "<script>window.__pwned = 1</script><b>RuntimeError</b>: CUDA out of memory"
JOB = "syn"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("dashboard") / JOB
    url = f"sqlite:///{folder / 'evosearch.db'}"
    with Store.open(url) as store:
        SyntheticSearch(store, JOB, folder, per_generation=8, failure_every=5, error=SCRIPT_ERROR).run(4)
    return url


@pytest.fixture(scope="module")
def base(store_url):
    with running_dashboard(store_url) as url:
        yield url


def _api(base: str, suffix: str = ""):
    return fetch_json(f"{base}/api/jobs/store/{JOB}{suffix}")


def test_jobs_endpoint_matches_the_store_progress(base, store_url):
    data = fetch_json(f"{base}/api/jobs")
    with Store.open(store_url) as store:
        record = store.get_job(JOB)
        progress = store.progress(record.id)
    [job] = data["jobs"]
    assert (job["job"], job["store"], job["status"], job["generation"]) == (JOB, "store", "finished", 3)
    assert (job["done"], job["failed"]) == (progress.done, progress.failed) == (26, 6)
    assert job["best_search"] == pytest.approx(progress.best)
    assert job["objectives"] == {"zoo_target": "max", "zoo_math": "max"}
    assert job["dead_suspected"] is False and job["seconds_since_last_write"] >= 0
    assert job["typical_candidate_seconds"] == pytest.approx(4.1, abs=1.0)
    assert data["stores"] == [{"key": "store", "url": store_url}]
    assert fetch_json(f"{base}/api/calibrations") == {"calibrations": []}


def test_job_candidates_front_convergence_and_workers_endpoints(base, store_url):
    with Store.open(store_url) as store:
        job_id = store.get_job(JOB).id
        every = store.candidates(job_id)
        front = store.front(job_id)
        generations = store.generations(job_id)
    summary = _api(base)
    assert [o["name"] for o in summary["objectives"]] == ["zoo_target", "zoo_math"]
    assert summary["space"] == "ps" and summary["committed_generations"] == 4
    assert summary["gene_names"][:2] == ["m0.weight.L0-1", "m0.weight.L2-3"]

    rows = _api(base, "/candidates")["candidates"]
    assert [r["id"] for r in rows] == [c.id for c in every]
    by_id = {c.id: c for c in every}
    for row in rows:
        c = by_id[row["id"]]
        assert (row["status"], row["recipe_hash"], row["worker"]) == (c.status, c.recipe_hash, c.worker)
        assert row["search"] == {s.objective: s.estimated for s in c.scores if s.split == "search"}
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 6 and all(r["error"] == SCRIPT_ERROR for r in failed)

    shown = _api(base, "/front")
    assert shown["ids"] == [c.id for c in front] and shown["generation"] == 3
    assert [c["genome"] for c in shown["candidates"]] == [c.genome for c in front]
    first = _api(base, "/front?generation=0")
    assert first["ids"] == generations[0].front_candidate_ids and first["generation"] == 0
    assert fetch(f"{base}/api/jobs/store/{JOB}/front?generation=9")[0] == 404
    assert fetch(f"{base}/api/jobs/store/{JOB}/front?generation=x")[0] == 404

    convergence = _api(base, "/convergence")
    assert convergence["generations"] == [0, 1, 2, 3]
    target = convergence["objectives"][0]
    assert target["search_best_so_far"] == sorted(target["search_best_so_far"])  # maximised: never goes down
    assert target["search_best_so_far"][-1] == pytest.approx(max(
        s.estimated for c in every for s in c.scores if s.objective == "zoo_target" and s.split == "search"))
    assert all(value is not None for value in target["report_front_best"])
    assert [g["hypervolume"] for g in convergence["hypervolume"]] == pytest.approx([g.hypervolume for g in generations])

    workers = _api(base, "/workers")
    assert sum(w["candidates"] for w in workers["workers"]) == len(every)
    assert sum(w["failed"] for w in workers["workers"]) == 6
    assert sum(len(w["segments"]) for w in workers["workers"]) == 26
    for worker in workers["workers"]:
        assert worker["busy_share"] == pytest.approx(
            (worker["build_seconds"] + worker["eval_seconds"]) / workers["window_seconds"])


def test_candidate_endpoint_has_recipe_yaml_mergekit_yaml_picture_and_export_command(base, store_url):
    with Store.open(store_url) as store:
        c = next(c for c in store.candidates(store.get_job(JOB).id) if c.status == "done")
    data = _api(base, f"/candidates/{c.id}")
    assert data["recipe_hash"] == c.recipe_hash and data["recipe"] == c.recipe
    assert yaml.safe_load(data["recipe_yaml"]) == c.recipe
    assert yaml.safe_load(data["mergekit_yaml"])["merge_method"] == "task_arithmetic"
    scores = {(s["objective"], s["split"]): s for s in data["scores"]}
    assert set(scores) == {(s.objective, s.split) for s in c.scores}
    target = scores[("zoo_target", "search")]
    assert (target["metric"], target["filter"], target["measured_on"]) == ("acc", "none", "zoo_target")
    picture = data["picture"]
    assert picture["kind"] == "ps" and picture["columns"] == ["L0", "L1", "L2", "L3", "rest"]
    weight = next(p for p in picture["parameters"] if p["name"] == "weight")
    assert [r["label"] for r in weight["rows"]] == ["math", "lang"]
    # the genome's weights decoded onto [0, 1.5], one gene per 2-layer block and one for the rest
    genes = [g["value"] for g in data["genome"]]
    assert weight["rows"][0]["values"] == pytest.approx([1.5 * genes[0]] * 2 + [1.5 * genes[1]] * 2 + [1.5 * genes[2]],
                                                        abs=1e-5)
    assert data["export_command"] == (f"evosearch export {JOB} out/{JOB}-c{c.id} --candidate {c.id} "
                                      f"--store {store_url}")


def test_a_failed_candidate_has_no_export_command_and_its_error_in_full(base, store_url):
    with Store.open(store_url) as store:
        c = next(c for c in store.candidates(store.get_job(JOB).id) if c.status == "failed")
    data = _api(base, f"/candidates/{c.id}")
    assert data["export_command"] is None and data["error"] == SCRIPT_ERROR


def test_every_page_is_served_and_names_from_the_url_are_escaped(base, store_url):
    with Store.open(store_url) as store:
        candidate_id = store.candidates(store.get_job(JOB).id)[0].id
    for path in ("/", f"/jobs/store/{JOB}", f"/jobs/store/{JOB}/workers", f"/jobs/store/{JOB}/candidates/{candidate_id}"):
        status, headers, body = fetch(base + path)
        assert status == 200, path
        assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
        assert b"<script>window" not in body  # pages hold no store strings; the scripts fetch them as JSON
    status, _, body = fetch(f"{base}/jobs/store/%3Cscript%3Ealert(1)%3Cb%3E")
    assert status == 404 and b"<script>alert(1)" not in body and b"&lt;script&gt;alert(1)" in body
    assert fetch(f"{base}/jobs/store/{JOB}/candidates/99999")[0] == 404
    assert fetch(f"{base}/api/jobs/nostore/{JOB}")[0] == 404
    status, headers, body = fetch(f"{base}/api/jobs/store/{JOB}/candidates")
    assert headers["content-type"] == "application/json" and SCRIPT_ERROR in json.loads(body)["candidates"][4]["error"]


def test_plotly_is_served_from_the_installed_package(base):
    import plotly

    status, headers, body = fetch(f"{base}/vendor/plotly.min.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert body == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    _, _, page = fetch(f"{base}/")
    assert b'src="/vendor/plotly.min.js"' in page and b"cdn" not in page.lower()


def test_the_dashboard_never_writes_to_the_store(store_url, tmp_path):
    path = store_url.removeprefix("sqlite:///")

    def dump() -> list[str]:
        with closing(sqlite3.connect(path)) as connection:
            return list(connection.iterdump())

    before = dump()
    with running_dashboard(store_url) as url:
        for suffix in ("", "/candidates", "/front", "/convergence", "/workers", "/candidates/1"):
            _api(url, suffix)
        fetch_json(f"{url}/api/jobs")
    assert dump() == before
    with Store.open_read_only(store_url) as store:
        with pytest.raises(StoreError, match="readonly"):
            store.set_job_status(1, "failed", "a viewer must not write")


def test_read_only_opening_refuses_a_store_without_the_current_schema(tmp_path):
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="no evosearch schema.*evosearch status --store URL"):
        Store.open_read_only(f"sqlite:///{empty}")
    with closing(sqlite3.connect(empty)) as connection:
        assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0  # nothing created


def test_token_is_checked_on_every_request(store_url):
    token = "tok-3f9a-secret"
    with running_dashboard(store_url, token=token) as url:
        for path in ("/", f"/jobs/store/{JOB}", "/api/jobs", "/vendor/plotly.min.js", "/static/common.js"):
            assert fetch(url + path)[0] == 401, path
            assert fetch(url + path, {"Authorization": "Bearer wrong"})[0] == 401, path
            assert fetch(url + path, {"Authorization": f"Bearer {token}"})[0] == 200, path
        assert fetch(f"{url}/api/jobs?token=wrong")[0] == 401
        status, headers, _ = fetch(f"{url}/jobs/store/{JOB}?token={token}&x=1")
        assert status == 303 and headers["location"] == f"/jobs/store/{JOB}?x=1"  # the token leaves the URL
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert fetch(f"{url}/api/jobs", {"Cookie": cookie.split(";")[0]})[0] == 200
        _, _, body = fetch(f"{url}/api/jobs", {"Authorization": f"Bearer {token}"})
        assert token.encode() not in body


def test_dead_is_suspected_once_the_driver_is_quiet_far_longer_than_a_candidate_takes(tmp_path):
    url = f"sqlite:///{tmp_path / 'evosearch.db'}"
    with Store.open(url) as store:
        search = SyntheticSearch(store, "quiet", tmp_path, per_generation=4)
        search.run(1, finish=False)  # still `running`
    with running_dashboard(url) as base:
        [job] = fetch_json(f"{base}/api/jobs")["jobs"]
        assert job["status"] == "running" and job["dead_suspected"] is False
        # the driver was SIGKILLed an hour ago: nothing written since
        hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
        with closing(sqlite3.connect(tmp_path / "evosearch.db")) as connection, connection:
            for table, column in (("jobs", "updated_at"), ("candidates", "recorded_at"), ("generations", "committed_at")):
                connection.execute(f"UPDATE {table} SET {column} = ?", (hour_ago,))
        [job] = fetch_json(f"{base}/api/jobs")["jobs"]
        assert job["dead_suspected"] is True and job["seconds_since_last_write"] > 3500
        assert job["dead_after_seconds"] == 600.0


def test_liveness_rule():
    assert typical_candidate_seconds([]) is None and typical_candidate_seconds([1.0, 9.0, 2.0]) == 2.0
    assert not driver_seems_dead("running", 599.0, None) and driver_seems_dead("running", 601.0, None)
    assert not driver_seems_dead("running", 1900.0, 100.0) and driver_seems_dead("running", 2001.0, 100.0)
    assert not driver_seems_dead("finished", 1e9, 1.0) and not driver_seems_dead("running", None, 1.0)
    assert LivenessRule(floor_seconds=10, candidate_times=2).quiet_limit(3.0) == 10


def test_runs_dir_lists_every_store_and_picks_up_a_new_one(tmp_path):
    runs = tmp_path / "runs"
    for name in ("alpha", "beta"):
        with Store.open(f"sqlite:///{runs / name / 'evosearch.db'}") as store:
            SyntheticSearch(store, name, runs / name, per_generation=4).run(1)
    with running_dashboard(runs_dir=runs) as base:
        assert {(j["store"], j["job"]) for j in fetch_json(f"{base}/api/jobs")["jobs"]} == {("alpha", "alpha"), ("beta", "beta")}
        assert len(fetch_json(f"{base}/api/jobs/beta/beta/candidates")["candidates"]) == 4
        with Store.open(f"sqlite:///{runs / 'gamma' / 'evosearch.db'}") as store:
            SyntheticSearch(store, "gamma", runs / "gamma", per_generation=4).run(1, finish=False)
        assert "gamma" in {j["job"] for j in fetch_json(f"{base}/api/jobs")["jobs"]}


def test_postgresql_role_with_select_only_suffices_and_no_password_reaches_a_response(pg_server):
    owner_url = pg_server.create_database("dashboard")
    with Store.open(owner_url) as store:
        search = SyntheticSearch(store, JOB, Path("/tmp/evosearch-dashboard-pg"), per_generation=6, failure_every=4)
        search.run(2)
        candidate_id = search.front_ids[0]
    viewer_password = "viewer-Qz8-secret"
    with psycopg.connect(host="127.0.0.1", port=pg_server.port, user=PG_USER, password=PG_PASSWORD,
                         dbname="dashboard", autocommit=True) as connection:
        connection.execute(f"CREATE ROLE viewer LOGIN PASSWORD '{viewer_password}'")
        connection.execute("GRANT CONNECT ON DATABASE dashboard TO viewer")
        connection.execute("GRANT USAGE ON SCHEMA public TO viewer")
        connection.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO viewer")
    viewer_url = owner_url.replace(f"{PG_USER}:{PG_PASSWORD}@", f"viewer:{viewer_password}@")
    with Store.open_read_only(viewer_url) as store:
        with pytest.raises(StoreError, match="permission denied|read-only"):
            store.set_job_status(store.get_job(JOB).id, "failed", "a viewer must not write")
    with Store.open_read_only(owner_url) as store:  # even a role that may write cannot, through this store
        with pytest.raises(StoreError, match="read-only transaction"):
            store.set_job_status(store.get_job(JOB).id, "failed", "a viewer must not write")

    bodies = []
    with running_dashboard(viewer_url) as base:
        for path in ("/api/jobs", "/api/calibrations", f"/api/jobs/store/{JOB}", f"/api/jobs/store/{JOB}/candidates",
                     f"/api/jobs/store/{JOB}/front", f"/api/jobs/store/{JOB}/convergence",
                     f"/api/jobs/store/{JOB}/workers", f"/api/jobs/store/{JOB}/candidates/{candidate_id}",
                     "/", f"/jobs/store/{JOB}", f"/jobs/store/{JOB}/candidates/{candidate_id}",
                     f"/jobs/store/{JOB}/workers", "/jobs/store/nope"):
            status, headers, body = fetch(base + path)
            assert status == (404 if path.endswith("nope") else 200), (path, body[:300])
            bodies.append(json.dumps(headers).encode() + body)
        jobs = fetch_json(f"{base}/api/jobs")
        command = fetch_json(f"{base}/api/jobs/store/{JOB}/candidates/{candidate_id}")["export_command"]
    assert jobs["jobs"][0]["done"] + jobs["jobs"][0]["failed"] == 12
    assert command.endswith(f"--store 'postgresql+psycopg://viewer:***@127.0.0.1:{pg_server.port}/dashboard'")
    for body in bodies:
        assert viewer_password.encode() not in body and PG_PASSWORD.encode() not in body
    with Store.open(owner_url) as store:
        assert store.get_job(JOB).status == "finished"


def test_verb_refuses_a_public_bind_without_a_token_and_a_missing_store(store_url, tmp_path):
    result = CliRunner().invoke(app, ["dashboard", "--host", "0.0.0.0", "--store", store_url], env={})
    assert result.exit_code == 2 and "--host 0.0.0.0 serves other machines: give --token" in result.output
    result = CliRunner().invoke(app, ["dashboard", "--store", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 2 and "no store at" in result.output and not (tmp_path / "none.db").exists()
    result = CliRunner().invoke(app, ["dashboard", "--store", store_url, "--runs", str(tmp_path)])
    assert result.exit_code == 2 and "not both" in result.output


def test_verb_on_a_public_bind_warns_and_serves_with_the_token(store_url, tmp_path):
    env = {**os.environ, "EVOSEARCH_DASHBOARD_TOKEN": "tok-env-81"}
    process = subprocess.Popen([sys.executable, "-c", "from evosearch.cli import app; app()", "dashboard",
                                "--host", "0.0.0.0", "--port", "0", "--store", store_url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = process.stdout.readline()
        assert "evosearch dashboard on http://0.0.0.0:" in line and "?token=TOKEN" in line, line
        port = int(line.split("http://0.0.0.0:")[1].split("/")[0])
        deadline = time.monotonic() + 20
        while fetch(f"http://127.0.0.1:{port}/api/jobs")[0] != 401 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fetch(f"http://127.0.0.1:{port}/api/jobs")[0] == 401
        assert fetch(f"http://127.0.0.1:{port}/api/jobs", {"Authorization": "Bearer tok-env-81"})[0] == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert f"warning: listening on 0.0.0.0:{port}, reachable from other machines" in stderr
    assert "tok-env-81" not in line + stderr
