"""The search driver end to end: real Ray workers, a real SQLite store, real lm-eval on the tiny zoo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from evosearch.search.driver import DriverError, run_job
from evosearch.search.job import parse_job
from evosearch.search.lease import LeaseHeld
from evosearch.optimizers.pareto import non_dominated_mask
from storage import Store
from test_job import zoo_job

pytestmark = pytest.mark.slow


def _store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}")


def _spec(zoo, tmp_path: Path, **overrides):
    return parse_job({**zoo_job(zoo, **overrides), "output_dir": str(tmp_path / overrides.get("name", "job"))})


def _front_view(store: Store, job_id: int) -> list[tuple]:
    """The front as (recipe hash, scores) with candidate ids left out, to compare two jobs."""
    return sorted((c.recipe_hash, tuple(sorted((s.objective, s.split, s.estimated, s.full) for s in c.scores)))
                  for c in store.front(job_id))


def test_ps_cmaes_full_fitness_records_every_candidate_once_and_a_front(ray_local, tiny_zoo, tmp_path):
    store = _store(tmp_path)
    events = []
    summary = run_job(_spec(tiny_zoo, tmp_path), store, on_event=events.append)

    cands = store.candidates(summary.job_id)
    assert summary.status == "finished" and summary.generations == 2 and summary.candidates == 8
    assert Counter((c.generation, c.index) for c in cands) == {(g, i): 1 for g in range(2) for i in range(4)}
    assert all(c.status == "done" for c in cands)
    # A candidate is evaluated by a worker or copied from an identical recipe, never both.
    copies = [c for c in cands if c.cached_from is not None]
    assert summary.evaluated + len(copies) == 8
    assert len({c.recipe_hash for c in cands}) == summary.evaluated
    for c in cands:
        search = [s for s in c.scores if s.split == "search"]
        assert [s.objective for s in search] == ["zoo_target"]
        assert 0.0 <= search[0].full <= 1.0 and search[0].estimated == search[0].full
        if c.cached_from is None:
            assert c.worker and c.build_seconds is not None and c.eval_seconds is not None

    for generation in range(2):
        assert store.front(summary.job_id, generation), f"no front committed for generation {generation}"
    front = store.front(summary.job_id)
    best = max(s.estimated for c in cands for s in c.scores if s.split == "search")
    assert {c.id for c in front} == set(summary.front_ids)
    assert all(s.estimated == best for c in front for s in c.scores if s.split == "search")
    # Report split, scored in full once the search is over, for every front member.
    assert all(any(s.split == "report" and s.full is not None for s in c.scores) for c in front)
    assert summary.hypervolume == pytest.approx(best)
    assert store.get_job("job").status == "finished"
    assert events[-1].phase == "finished" and events[-1].done == 8 and events[-1].best["zoo_target"] == best
    assert events[-1].front_size == len(front)


def test_nsga2_two_objectives_on_a_dfs_space(ray_local, tiny_zoo, tmp_path):
    store = _store(tmp_path)
    spec = _spec(tiny_zoo, tmp_path, name="dfs",
                 search_space={"kind": "dfs", "sources": ["math", "lang"], "num_layers": 2, "max_path": 3},
                 optimizer={"name": "nsga2", "pop_size": 4},
                 objectives=[{"task": "zoo_target", "direction": "max"},
                             {"cost": "path_length", "direction": "min"}],
                 report={"when": "every_generation"})
    summary = run_job(spec, store)
    assert summary.status == "finished" and summary.candidates == 8

    done = [c for c in store.candidates(summary.job_id, status="done") if c.cached_from is None]
    table = np.array([[next(s.estimated for s in c.scores if s.objective == o and s.split == "search")
                       for o in ("zoo_target", "path_length")] for c in done])
    expected = {done[i].id for i in np.flatnonzero(non_dominated_mask(table, ["max", "min"]))}
    assert set(summary.front_ids) == expected
    for c in done:
        assert next(s.full for s in c.scores if s.objective == "path_length") == sum(c.recipe["indicator"])
    for generation in range(2):
        front = store.front(summary.job_id, generation)
        assert front and all(any(s.split == "report" for s in c.scores) for c in front)


def test_a_generation_goes_out_longest_path_first(tiny_zoo, tmp_path):
    """LPT: the shortest DFS candidates are the last out, so a worker idles least at a generation's tell or
    the end of the run; duplicates and cache hits never go out; PS candidates keep their order."""
    from evosearch.search.driver import SearchDriver

    store = _store(tmp_path)
    spec = _spec(tiny_zoo, tmp_path, name="lpt", search_space={"kind": "dfs", "sources": ["math", "lang"],
                                                                "num_layers": 2, "repeats": 2},
                 optimizer={"name": "random", "pop_size": 8})
    driver = SearchDriver(spec, store, store.create_job(spec.name, spec.to_dict(), spec.seed, spec.output_dir))
    genomes = np.random.default_rng(0).uniform(size=(8, driver.space.dim))
    genomes[5] = genomes[2]  # a duplicate: evaluated once, as the earlier index
    _, out = driver.admit(0, genomes)
    lengths = [sum(p.recipe["indicator"]) for p in out]
    assert len(set(lengths)) > 2 and lengths == sorted(lengths, reverse=True)
    assert sorted(p.index for p in out) == [0, 1, 2, 3, 4, 6, 7]
    assert next(p for p in out if p.index == 2).duplicates == [5]
    ps = _spec(tiny_zoo, tmp_path, name="lpt-ps", optimizer={"name": "random", "pop_size": 6})
    ps_driver = SearchDriver(ps, store, store.create_job(ps.name, ps.to_dict(), ps.seed, ps.output_dir))
    _, ps_out = ps_driver.admit(0, np.random.default_rng(1).uniform(size=(6, ps_driver.space.dim)))
    assert [p.index for p in ps_out] == list(range(6))


class _Killed(Exception):
    """Stands in for the driver process dying mid-generation."""


def test_interrupted_and_resumed_run_ends_with_the_same_front(ray_local, tiny_zoo, tmp_path):
    store = _store(tmp_path)
    whole = run_job(_spec(tiny_zoo, tmp_path, name="whole", generations=3), store)

    # Stop after the first committed generation, then die in the middle of the second one.
    spec = _spec(tiny_zoo, tmp_path, name="cut", generations=3)
    first = run_job(spec, store, stop_after=1)
    assert first.status == "stopped" and first.generations == 1
    assert store.get_job("cut").status == "stopped"

    def die_after_two(event):
        if event.generation == 1 and event.evaluated >= 2:
            raise _Killed("driver killed")

    with pytest.raises(_Killed):
        run_job(spec, store, resume=True, on_event=die_after_two)
    job = store.get_job("cut")
    assert job.status == "failed" and store.last_generation(job.id).generation == 0
    partial = store.candidates(job.id, generation=1)
    assert 0 < len(partial) < 4, "the kill should leave generation 1 part-recorded"
    evaluated_before = sum(1 for c in store.candidates(job.id) if c.cached_from is None)

    resumed = run_job(spec, store, resume=True)
    assert resumed.status == "finished" and resumed.generations == 3
    cands = store.candidates(job.id)
    assert Counter((c.generation, c.index) for c in cands) == {(g, i): 1 for g in range(3) for i in range(4)}
    # Nothing evaluated twice: the two runs together did exactly the uninterrupted run's evaluations.
    assert evaluated_before + resumed.evaluated == whole.evaluated
    assert [c.genome for c in cands] == [c.genome for c in store.candidates(whole.job_id)]
    assert _front_view(store, job.id) == _front_view(store, whole.job_id)
    assert resumed.hypervolume == whole.hypervolume

    # A finished job resumes to a no-op.
    again = run_job(spec, store, resume=True)
    assert again.evaluated == 0 and len(store.candidates(job.id)) == 12


def test_budget_ends_a_job_and_a_job_name_is_not_run_twice(ray_local, tiny_zoo, tmp_path):
    store = _store(tmp_path)
    spec = _spec(tiny_zoo, tmp_path, generations=3, budget=6, report={"when": "never"})
    summary = run_job(spec, store)
    assert summary.generations == 1 and summary.candidates == 4
    assert summary.reason == "budget of 6 candidates reached after 1 generation(s)"
    assert store.get_job("job").message == summary.reason
    with pytest.raises(DriverError, match="evosearch resume job"):
        run_job(spec, store)


def test_a_job_started_from_a_merge_evaluates_that_merge_first(ray_local, tiny_zoo, tmp_path):
    store = _store(tmp_path)
    start = {"merge_method": "task_arithmetic", "base_model": "base",
             "models": [{"model": "math", "parameters": {"weight": 1.5}}, {"model": "lang", "parameters": {"weight": 0.75}}]}
    spec = _spec(tiny_zoo, tmp_path, name="started", generations=1, start_from=start, report={"when": "never"},
                 optimizer={"name": "nsga2", "pop_size": 4}, fitness={"mode": "full", "limit": 20})
    summary = run_job(spec, store)
    first = min(store.candidates(summary.job_id), key=lambda c: (c.generation, c.index))
    assert [m["parameters"]["weight"] for m in first.recipe["models"]] == [1.5, 0.75]
    assert first.status == "done" and summary.candidates == 4


def _source_with_nan_layer(src: Path, dst: Path, layer: int) -> Path:
    """A copy of a zoo model whose layer `layer` MLP outputs NaN: any path through it fails its candidate."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    name = f"model.layers.{layer}.mlp.down_proj.weight"
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_failing_candidates_are_recorded_failed_and_the_job_finishes(ray_local, tiny_zoo, tmp_path):
    broken = _source_with_nan_layer(tiny_zoo.models["lang"], tmp_path / "broken", layer=1)
    store = _store(tmp_path)
    job = zoo_job(tiny_zoo, name="broken", generations=2,
                  search_space={"kind": "dfs", "sources": ["math", "broken"], "num_layers": 2},
                  optimizer={"name": "cmaes", "popsize": 6, "sigma0": 0.4})
    job["sources"]["broken"] = str(broken)
    spec = parse_job({**job, "output_dir": str(tmp_path / "broken-run")})
    summary = run_job(spec, store)

    cands = store.candidates(summary.job_id)
    failed = [c for c in cands if c.status == "failed"]
    assert summary.status == "finished" and len(cands) == 12
    assert failed and len(failed) < len(cands), "the seed should give both failing and working paths"
    for c in failed:
        assert c.recipe["indicator"][3], "only paths through the NaN layer (slot 3) should fail"
        assert c.error and "\n" not in c.error and "NaN or infinite logits" in c.error and not c.scores
    assert all(not c.recipe["indicator"][3] for c in cands if c.status == "done")
    assert all(c.status == "done" for c in store.front(summary.job_id))


def test_cli_run_front_status_resume_and_one_line_errors(ray_local, tiny_zoo, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from evosearch.cli import app
    from test_job import write_job

    monkeypatch.chdir(tmp_path)
    path = write_job(tmp_path, zoo_job(tiny_zoo, name="cli", generations=1))
    runner = CliRunner()
    ran = runner.invoke(app, ["run", str(path)])
    assert ran.exit_code == 0, ran.output
    assert "cli: finished after 1 generation(s), 4 candidates" in ran.output

    shown = runner.invoke(app, ["front", "cli", "--json", "--by", "report"])
    assert shown.exit_code == 0, shown.output
    front = json.loads(shown.stdout)
    assert front["objectives"] == {"zoo_target": "max"} and front["ranked_by"] == "report" and front["front"]
    reports = [row["report"]["zoo_target"] for row in front["front"]]
    assert reports == sorted(reports, reverse=True)
    assert all(set(row["search"]) == {"zoo_target"} for row in front["front"])
    assert runner.invoke(app, ["front", str(path), "--generation", "0"]).exit_code == 0

    for args in (["status", "cli"], ["status"]):
        status = runner.invoke(app, args)
        assert status.exit_code == 0 and "cli" in status.stdout and "finished" in status.stdout
    (row,) = json.loads(runner.invoke(app, ["status", "cli", "--json"]).stdout)
    assert (row["job"], row["status"], row["generation"], row["done"], row["failed"]) == ("cli", "finished", 0, 4, 0)
    assert set(row["best_search"]) == {"zoo_target"}

    resumed = runner.invoke(app, ["resume", "cli"])
    assert resumed.exit_code == 0 and "(0 evaluated this run)" in resumed.output

    again = runner.invoke(app, ["run", str(path)])
    assert again.exit_code == 1 and "evosearch resume cli" in again.output

    bad = write_job(tmp_path, zoo_job(tiny_zoo, name="../up"), "bad.yaml")
    for args, code in ((["run", str(bad)], 2), (["front", "nojob"], 2), (["status", "nojob"], 2),
                       (["front", "cli", "--by", "vibes"], 2)):
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
        assert "Traceback" not in result.output


def test_reduced_fitness_scores_anchors_with_a_stored_calibration(ray_local, tiny_zoo, tmp_path):
    from fitness.calibration import calibration_population
    from storage import CalibrationModelRecord, CalibrationRecord
    from workers.candidate import CandidateTask, CandidateWorker

    store = _store(tmp_path)
    spec = _spec(tiny_zoo, tmp_path, name="reduced", generations=1,
                 fitness={"mode": "reduced", "calibration": "zoo-target", "estimator": "gpirt", "k": 8,
                          "strategy": "random", "limit": 100})
    calibration_id = store.save_calibration(CalibrationRecord(name="zoo-target", tasks=["zoo_target"], spec={}))
    # Calibrated on the task's first 100 docs (the candidates' anchors come from those): seconds, not minutes.
    worker = CandidateWorker(spec.source_paths, spec.tasks.include_path, ["zoo_target"])
    for member in calibration_population(spec.search_space, n_random=4, seed=0):
        result = worker.run(CandidateTask(key=member.label, recipe=member.recipe,
                                          samples={"zoo_target": list(range(100))}, tasks=["zoo_target"]))
        store.add_calibration_model(calibration_id, CalibrationModelRecord(
            label=member.label, role=member.role, recipe=member.recipe, responses=result.correct,
            accuracy=result.accuracy))

    summary = run_job(spec, store)
    assert summary.status == "finished" and summary.candidates == 4
    for c in store.candidates(summary.job_id):
        (search,) = [s for s in c.scores if s.split == "search"]
        assert 0.0 <= search.estimated <= 1.0 and search.anchor_accuracy is not None and search.full is None
        # The anchor accuracy is a mean over k = 8 items.
        assert round(search.anchor_accuracy * 8, 6) == int(round(search.anchor_accuracy * 8))
    assert all(any(s.split == "report" and s.full is not None for s in c.scores) for c in store.front(summary.job_id))
    # With a carved hold-out, the anchors come from the search side only and the IRT fit never sees the rest.
    from evosearch.search.driver import SearchDriver

    carved = _spec(tiny_zoo, tmp_path, name="reduced-holdout", generations=1,
                   objectives=[{"task": "zoo_target", "direction": "max", "report_holdout": True}],
                   fitness={"mode": "reduced", "calibration": "zoo-target", "estimator": "gpirt", "k": 8,
                            "strategy": "random", "limit": 100})
    driver = SearchDriver(carved, store, store.create_job(carved.name, carved.to_dict(), carved.seed, carved.output_dir))
    driver._prepare()
    search_docs = set(driver.splits["zoo_target"].search_doc_ids)
    assert set(driver.fitness.samples["zoo_target"]) <= search_docs
    assert {int(i.rpartition("/")[2]) for i in driver.fitness.context.params.item_ids} <= search_docs
    missing = _spec(tiny_zoo, tmp_path, name="uncalibrated", objectives=[{"task": "zoo_math", "direction": "max"}],
                    fitness={"mode": "reduced", "calibration": "zoo-target"})
    with pytest.raises(DriverError, match="does not cover task 'zoo_math'"):
        run_job(missing, store)
    unknown = _spec(tiny_zoo, tmp_path, name="uncalibrated2", fitness={"mode": "reduced", "calibration": "nope"})
    with pytest.raises(DriverError, match="fitness.calibration: unknown calibration 'nope' in store .* "
                                          r"\(run `evosearch calibrate` with this store first\)"):
        run_job(unknown, store)
    assert not {"uncalibrated", "uncalibrated2"} & {j.name for j in store.list_jobs()}  # refused before stored


def _has_job(db: Path, name: str) -> bool:
    if not db.is_file():
        return False
    try:
        with closing(sqlite3.connect(db, timeout=1)) as conn:
            return conn.execute("SELECT count(*) FROM jobs WHERE name = ?", (name,)).fetchone()[0] > 0
    except sqlite3.Error:
        return False


CLI = Path(sys.executable).parent / "evosearch"


def driver_env(ray_local) -> dict[str, str]:
    """The environment of an `evosearch` process on the test session's Ray, with a short driver lease."""
    return {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
            "EVOSEARCH_LEASE_SECONDS": "4"}


def wait_for_lease_expiry(store: Store, job_id: int) -> None:
    """Sleeps until the job's driver lease has run out (the killed driver can no longer renew it)."""
    expires = store.get_job(job_id).lease_expires_at
    if expires is not None:
        time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.1)


def run_and_kill(job: dict, tmp_path: Path, ray_local, generation: int = 1) -> Store:
    """`evosearch run` of `job` in its own process, SIGKILLed once `generation` has a candidate recorded;
    the job's store, as the dead driver left it."""
    from test_job import write_job

    name = job["name"]
    path = write_job(tmp_path, job)
    proc = subprocess.Popen([str(CLI), "run", str(path)], cwd=tmp_path, env=driver_env(ray_local),
                            start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = Path(job["output_dir"]) / "evosearch.db"
    store = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            # Open the store only once the run has migrated it and made its job: never two migrations at once.
            if store is None and _has_job(db, name):
                store = Store.open(f"sqlite:///{db}")
            if store is not None and store.list_jobs() and store.candidates(store.get_job(name).id,
                                                                            generation=generation):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert store is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return store


def test_killed_driver_process_resumes_without_reevaluating(ray_local, tiny_zoo, tmp_path):
    """The real thing: `evosearch run` in its own process, SIGKILLed in the middle of generation 1."""
    job = zoo_job(tiny_zoo, name="killed", generations=2, fitness={"mode": "full"}, report={"when": "never"})
    job["output_dir"] = str(tmp_path / "killed")
    spec = parse_job(job)
    store = run_and_kill(job, tmp_path, ray_local)
    job_id = store.get_job("killed").id
    assert store.get_job(job_id).status == "running"  # nobody had the chance to say otherwise
    # What tells a dead driver from a live one: its lease, which nobody renews once it is gone.
    from evosearch.views.progress import status_rows

    (row,) = status_rows([(store.get_job(job_id), store.progress(job_id))])
    assert row["status"] == "running" and row["driver_dead"] is False
    with pytest.raises(LeaseHeld, match="job 'killed' is being run by driver .* lease is live"):
        run_job(spec, store, resume=True)  # refused while the lease may still be live: nothing written
    resume = [str(CLI), "resume", "killed", "--store", f"sqlite:///{Path(job['output_dir']) / 'evosearch.db'}"]
    wait_for_lease_expiry(store, job_id)
    (row,) = status_rows([(store.get_job(job_id), store.progress(job_id))])
    assert row["status"] == "dead" and row["driver_dead"] is True
    before = {c.index: c for c in store.candidates(job_id, generation=1)}
    assert 0 < len(before) < 4

    # Two resumes at once on the expired lease (a user trying twice, two terminals): exactly one runs it.
    racing = [subprocess.Popen(resume, cwd=tmp_path, env=driver_env(ray_local), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    outputs = [(proc.wait(timeout=300), *proc.communicate()) for proc in racing]
    assert sorted(code for code, _, _ in outputs) == [0, 3], outputs
    (won,) = [out for code, out, _ in outputs if code == 0]
    (lost,) = [err for code, _, err in outputs if code == 3]
    assert "is being run by driver" in lost and lost.count("\n") == 1
    after = {c.index: c for c in store.candidates(job_id, generation=1)}
    assert store.get_job(job_id).status == "finished" and len(store.candidates(job_id)) == 8
    evaluated = sum(1 for c in after.values() if c.cached_from is None) - \
        sum(1 for c in before.values() if c.cached_from is None)
    assert f"({evaluated} evaluated this run)" in won
    for index, c in before.items():
        assert (after[index].id, after[index].eval_seconds, after[index].genome) == (c.id, c.eval_seconds, c.genome)


def _single_split_task(zoo, tmp_path: Path, name: str = "qa_single") -> Path:
    """A user's task with one split only: the zoo's target under another name, with no `_report` twin."""
    import yaml

    tasks = tmp_path / "single-split-tasks"
    tasks.mkdir(exist_ok=True)
    config = yaml.safe_load((Path(zoo.include_path) / "zoo_target.yaml").read_text())
    config["task"] = name
    config.pop("tag", None)
    (tasks / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return tasks


def test_single_split_task_gets_a_recorded_hold_out_the_search_never_scores(ray_local, tiny_zoo, tmp_path):
    from workers.candidate import CandidateTask, CandidateWorker

    include = _single_split_task(tiny_zoo, tmp_path)
    store = _store(tmp_path)
    spec = _spec(tiny_zoo, tmp_path, name="holdout", generations=1, holdout={"fraction": 0.25},
                 objectives=[{"task": "qa_single", "direction": "max"}], fitness={"mode": "full", "limit": 40},
                 tasks={"include_path": str(include)})
    (objective,) = spec.task_objectives
    assert objective.report_holdout and objective.report == "qa_single"
    summary = run_job(spec, store)

    splits = store.task_splits(summary.job_id)
    split = splits["qa_single"]
    assert (split.report_fraction, split.seed) == (0.25, 3)
    assert len(split.report_doc_ids) == round(0.25 * split.n_docs)
    assert not set(split.report_doc_ids) & set(split.search_doc_ids)
    # Re-score one front candidate by hand: its search score came from search docs only, its report score
    # from hold-out docs only.
    front = store.front(summary.job_id)
    cand = front[0]
    scores = {s.split: s for s in cand.scores}
    worker = CandidateWorker(spec.source_paths, spec.tasks.include_path, ["qa_single"])

    def accuracy(docs: list[int]) -> float:
        task = CandidateTask(key="check", recipe=cand.recipe, samples={"qa_single": docs}, tasks=["qa_single"])
        return worker.run(task).accuracy["qa_single"]

    assert scores["search"].full == pytest.approx(accuracy(split.search_doc_ids[:40]))
    assert scores["report"].full == pytest.approx(accuracy(split.report_doc_ids[:40]))

    # The hold-out is read back, not carved again, when the job goes on; the card names it.
    from evosearch.api import Job
    from evosearch.search.driver import SearchDriver

    assert SearchDriver(spec, store, store.get_job("holdout"))._task_splits() == splits
    job = Job(store, store.get_job("holdout"))
    out = job.export(tmp_path / "export", candidate=cand.id)
    card = (out / "README.md").read_text()
    assert f"`qa_single` hold-out ({len(split.report_doc_ids)} of {split.n_docs} docs, 25% carved with seed 3)" in card
    assert f"`qa_single` without its hold-out ({len(split.search_doc_ids)} of {split.n_docs} docs)" in card
