"""Chaos soak: a zoo search while a chaos thread SIGKILLs a random worker every ~20 s, restarts the
PostgreSQL store once and SIGKILLs the driver twice (each time resumed), compared with an uninterrupted run
of the same seed: candidates lost, evaluated twice, and whether the fronts are the same.

    .venv/bin/python bench/chaos.py                # runs/zoo, >= 320 candidates -> bench/results/chaos.json
    .venv/bin/python bench/chaos.py --smoke        # tiny zoo, 48 candidates, faults every ~8 s (a few minutes)

Every process is found and killed by PID among the descendants of processes this script started, never by
name (other Rays may run on the machine). The PostgreSQL server is this script's own (tests/pg.py).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from common import ROOT, add_zoo_arguments, resolve_zoo_arguments, write_result

sys.path.insert(0, str(ROOT / "tests"))  # the throwaway PostgreSQL server of the tests

EVOSEARCH = str(Path(sys.executable).with_name("evosearch"))
EVALUATING = "ray::CandidateWorker"
LEASE_SECONDS = 6.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_zoo_arguments(p, "tiny zoo, 48 candidates, a worker killed every ~8 s")
    p.add_argument("--candidates", type=int, default=320, help="pop_size x generations (rounded up)")
    p.add_argument("--pop-size", type=int, default=8)
    p.add_argument("--worker-kill-every", type=float, default=20.0, help="seconds between worker kills (mean)")
    p.add_argument("--limit", type=int, default=60, help="docs scored per candidate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.smoke:
        args.candidates, args.pop_size, args.worker_kill_every, args.limit = 48, 4, 8.0, 20
    return resolve_zoo_arguments(args)


def job_file(zoo, root: Path, name: str, store: str, args) -> Path:
    generations = -(-args.candidates // args.pop_size)
    job = {"name": name, "seed": args.seed, "sources": {k: str(v) for k, v in zoo.models.items()},
           "base_model": "base",
           "search_space": {"kind": "ps", "sources": ["math", "lang"], "methods": "task_arithmetic",
                            "bounds": {"weight": [0.0, 2.0]}, "fixed_per_model": {"density": 1.0}},
           # Random search never converges early: both runs ask exactly pop_size x generations candidates.
           "optimizer": {"name": "random", "pop_size": args.pop_size}, "generations": generations,
           "objectives": [{"task": "zoo_target", "direction": "max"}, {"task": "zoo_math", "direction": "max"}],
           "fitness": {"mode": "full", "limit": args.limit}, "report": {"when": "never"},
           "workers": {"count": 2, "num_cpus": 1, "max_retries": 5},
           "tasks": {"include_path": str(zoo.include_path)}, "output_dir": str(root / name), "store": store}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each driver starts a Ray of its own
    return {**env, "EVOSEARCH_LEASE_SECONDS": str(LEASE_SECONDS),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}


def _driver(verb: str, target: str, log) -> subprocess.Popen:
    return subprocess.Popen([EVOSEARCH, verb, target], env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _workers(driver: subprocess.Popen) -> list:
    import psutil

    try:
        return [p for p in psutil.Process(driver.pid).children(recursive=True)
                if EVALUATING in " ".join(p.cmdline())]
    except psutil.Error:
        return []


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _recorded(url: str, name: str) -> dict:
    from storage import Store, StoreError

    try:
        with Store.open(url) as store:
            job = store.get_job(name)
            return {(c.generation, c.index): (c.id, c.eval_seconds, c.worker)
                    for c in store.candidates(job.id) if c.status == "done" and c.cached_from is None}
    except StoreError:
        return {}


def _front(url: str, name: str) -> list:
    from storage import Store

    with Store.open(url) as store:
        job = store.get_job(name)
        return sorted((c.recipe_hash, tuple(sorted((s.objective, round(s.estimated, 9)) for s in c.scores
                                                   if s.split == "search"))) for c in store.front(job.id))


def _summary(url: str, name: str, expected: int) -> dict:
    from storage import Store

    with Store.open(url) as store:
        job = store.get_job(name)
        candidates = store.candidates(job.id)
        slots = Counter((c.generation, c.index) for c in candidates)
        return {"status": job.status, "candidates": len(candidates), "lost": expected - len(slots),
                "recorded_twice": sum(n - 1 for n in slots.values()),
                "failed": sum(c.status == "failed" for c in candidates)}


def calm_run(job: Path, root: Path) -> float:
    started = time.monotonic()
    with open(root / "calm.log", "wb") as log:
        code = _driver("run", str(job), log).wait()
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {code}); see {root / 'calm.log'}")
    return time.monotonic() - started


def chaos_run(job: Path, name: str, url: str, pg, expected: int, args, root: Path) -> dict:
    rng = random.Random(args.seed)
    faults = Counter()
    snapshots: list[dict] = []  # what was recorded before each driver kill: never to be evaluated again
    log = open(root / "chaos.log", "wb")
    driver = _driver("run", str(job), log)
    driver_kills_at = [int(expected * 0.35), int(expected * 0.7)]
    db_restart_at = int(expected * 0.5)
    started = time.monotonic()
    next_worker_kill = time.monotonic() + rng.expovariate(1 / args.worker_kill_every)
    try:
        while True:
            code = driver.poll()
            if code == 0:
                break
            if code is not None:  # e.g. the store stayed away longer than the driver's retries: resume it
                if faults["driver_failed_and_resumed"] >= 3:
                    raise SystemExit(f"the chaos driver failed {faults['driver_failed_and_resumed'] + 1} times "
                                     f"(last exit {code}); see chaos.log in {args.out}")
                faults["driver_failed_and_resumed"] += 1
                time.sleep(LEASE_SECONDS + 0.5)
                driver = _driver("resume", str(job), log)
                continue
            done = _recorded(url, name)
            if time.monotonic() >= next_worker_kill:
                workers = _workers(driver)
                if workers:
                    rng.choice(workers).kill()
                    faults["worker_sigkill"] += 1
                next_worker_kill = time.monotonic() + rng.expovariate(1 / args.worker_kill_every)
            if db_restart_at is not None and len(done) >= db_restart_at:
                pg.stop()
                time.sleep(3)
                pg.start()
                faults["database_restart"] += 1
                db_restart_at = None
            if driver_kills_at and len(done) >= driver_kills_at[0]:
                driver_kills_at.pop(0)
                before = _recorded(url, name)
                _kill_group(driver)
                faults["driver_sigkill"] += 1
                time.sleep(LEASE_SECONDS + 0.5)  # the killed driver's lease expires; resume is refused before
                driver = _driver("resume", str(job), log)
                faults["resumes"] += 1
                snapshots.append(before)
            time.sleep(0.5)
    finally:
        if driver.poll() is None:
            _kill_group(driver)
        log.close()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "chaos.log", Path(args.out) / "chaos.log")  # what the drivers said, kept
    final = _recorded(url, name)
    twice = {slot for snapshot in snapshots for slot, seen in snapshot.items() if final.get(slot) != seen}
    return {"faults": dict(faults), "seconds": time.monotonic() - started, "evaluated_twice": len(twice)}


def main(argv=None) -> int:
    import tempfile

    from evosearch.zoo import ZooManifest, build_zoo
    from pg import PgServer, find_server_binaries, free_port

    args = parse_args(argv)
    zoo = build_zoo(Path(args.zoo), preset="tiny") if args.smoke else ZooManifest.load(Path(args.zoo))
    root = Path(tempfile.mkdtemp(prefix="evosearch-chaos-"))
    root.chmod(0o755)  # the PostgreSQL server runs as `postgres` when this runs as root
    pg = PgServer(find_server_binaries(), root / "pg", free_port())
    (root / "pg").mkdir()
    pg.init()
    pg.start()
    try:
        calm_url, chaos_url = pg.create_database("calm"), pg.create_database("chaos")
        calm_job = job_file(zoo, root, "calm", calm_url, args)
        chaos_job = job_file(zoo, root, "chaos", chaos_url, args)
        expected = -(-args.candidates // args.pop_size) * args.pop_size
        calm_seconds = calm_run(calm_job, root)
        print(f"uninterrupted: {expected} candidates in {calm_seconds:.0f} s", flush=True)
        chaos = chaos_run(chaos_job, "chaos", chaos_url, pg, expected, args, root)
        calm, stormy = _summary(calm_url, "calm", expected), _summary(chaos_url, "chaos", expected)
        same_front = _front(calm_url, "calm") == _front(chaos_url, "chaos")
        result = {
            "settings": {"zoo": str(zoo.root), "candidates": expected, "pop_size": args.pop_size,
                         "worker_kill_every_s": args.worker_kill_every, "limit": args.limit, "seed": args.seed,
                         "lease_seconds": LEASE_SECONDS, "smoke": args.smoke},
            "faults_injected": chaos["faults"], "survived": stormy["status"] == "finished",
            "lost": stormy["lost"], "recorded_twice": stormy["recorded_twice"],
            "evaluated_twice": chaos["evaluated_twice"], "same_front": same_front,
            "failed_candidates": {"calm": calm["failed"], "chaos": stormy["failed"]},
            "seconds": {"uninterrupted": calm_seconds, "chaos": chaos["seconds"]}}
        path = write_result(args.out, "chaos", result)
        print(f"faults {chaos['faults']}; survived {result['survived']}; lost {result['lost']}; "
              f"evaluated twice {result['evaluated_twice']}; same front {same_front}; -> {path}", flush=True)
        ok = result["survived"] and not result["lost"] and not result["evaluated_twice"] and same_front
        return 0 if ok else 1
    finally:
        if (pg.data_dir / "postmaster.pid").exists():
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
