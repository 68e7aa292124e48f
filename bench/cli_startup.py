"""Start-up time of the command line: `evosearch --help`, `evosearch status` and `evosearch status JOB` on a
store holding one job, each run `--repeats` times as a fresh process (best and median).

    .venv/bin/python bench/cli_startup.py          # writes bench/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, SMOKE_OUT, markdown_table, write_result

EXE = Path(sys.executable).with_name("evosearch")


def timed(args: list[str], cwd: Path, repeats: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())
        seconds.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"evosearch {' '.join(args)} failed: {done.stderr.strip()}")
    return {"best_s": min(seconds), "median_s": statistics.median(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="2 repeats, results to a temp dir")
    parser.add_argument("--out", type=Path, default=None, help="result directory (default: bench/results)")
    args = parser.parse_args()
    repeats = 2 if args.smoke else args.repeats
    from storage import Store  # after common, which puts the project on sys.path

    work = Path(tempfile.mkdtemp(prefix="evosearch-startup-"))
    try:
        with Store.open(f"sqlite:///{work / 'runs' / 'job' / 'evosearch.db'}") as store:
            store.create_job("job", {}, 0, str(work / "runs" / "job"), objectives={"acc": "max"})
        rows = {" ".join(a): timed(a, work, repeats) for a in (["--help"], ["status"], ["status", "job"])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"CLI start-up, {repeats} fresh processes each")
    print(markdown_table(["command", "best (s)", "median (s)"],
                         [[f"evosearch {c}", f"{r['best_s']:.2f}", f"{r['median_s']:.2f}"] for c, r in rows.items()]))
    out = args.out or (SMOKE_OUT if args.smoke else RESULTS)
    print(f"wrote {write_result(out, 'cli_startup', {'repeats': repeats, 'rows': rows})}")


if __name__ == "__main__":
    main()
