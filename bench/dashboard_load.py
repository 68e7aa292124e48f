"""How fast the dashboard loads on a big store: a job of 5,000 candidates (50 generations of 100, one in 25
failed) written into a SQLite store the way the driver writes it (`tests/dashboard_store.py`), served by the
dashboard on 127.0.0.1, and timed two ways:

- each JSON endpoint over HTTP (median of `--repeats` GETs, and the size of its body);
- each page in Debian's headless Chromium (Selenium through /usr/bin/chromedriver): from `driver.get` until
  the page has fetched its JSON and drawn every plot and table (its `data-ready` flag), the first (cold:
  Plotly's 4.8 MB script not cached yet) and the median of the next loads.

    python bench/dashboard_load.py            # 5,000 candidates; JSON and a screenshot in bench/results/
    python bench/dashboard_load.py --smoke    # 300 candidates, one repeat, into a temp dir
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import RESULTS, ROOT, SMOKE_OUT, markdown_table, write_result

sys.path.insert(0, str(ROOT / "tests"))  # the store writer shared with the dashboard's tests

from dashboard_store import SyntheticSearch, running_dashboard  # noqa: E402
from storage import Store  # noqa: E402

JOB = "load"
PAGES = ("jobs", "job", "candidate", "workers")


def build_store(folder: Path, candidates: int, per_generation: int) -> tuple[str, float, int]:
    """(store URL, seconds it took to write, id of a front candidate)."""
    url = f"sqlite:///{folder / 'evosearch.db'}"
    started = time.perf_counter()
    with Store.open(url) as store:
        search = SyntheticSearch(store, JOB, folder, per_generation=per_generation,
                                 generations=candidates // per_generation, failure_every=25,
                                 error="RuntimeError: CUDA out of memory while building the candidate")
        search.run(candidates // per_generation)
    return url, time.perf_counter() - started, search.front_ids[0]


def time_endpoints(base: str, candidate_id: int, repeats: int) -> list[dict]:
    rows = []
    for suffix in ("", "/candidates", "/front", "/convergence", "/workers", f"/candidates/{candidate_id}"):
        path = f"/api/jobs/store/{JOB}{suffix}"
        times, size = [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=120) as response:
                size = len(response.read())
            times.append(time.perf_counter() - started)
        rows.append({"endpoint": path, "median_ms": 1000 * statistics.median(times), "bytes": size})
    jobs = []
    for _ in range(repeats):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{base}/api/jobs", timeout=120) as response:
            size = len(response.read())
        jobs.append(time.perf_counter() - started)
    return [{"endpoint": "/api/jobs", "median_ms": 1000 * statistics.median(jobs), "bytes": size}] + rows


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,2000", "--no-first-run"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def time_pages(base: str, candidate_id: int, repeats: int, screenshot: Path) -> list[dict]:
    from selenium.webdriver.support.ui import WebDriverWait

    paths = {"jobs": "/", "job": f"/jobs/store/{JOB}", "candidate": f"/jobs/store/{JOB}/candidates/{candidate_id}",
             "workers": f"/jobs/store/{JOB}/workers"}
    driver = browser()
    rows = []
    try:
        for page in PAGES:
            times = []
            for _ in range(1 + repeats):
                started = time.perf_counter()
                driver.get(base + paths[page])
                WebDriverWait(driver, 300).until(lambda d: d.execute_script(
                    "return document.body.dataset.page === arguments[0] && document.body.dataset.ready === '1'", page))
                times.append(time.perf_counter() - started)
            if page == "job":
                time.sleep(1.0)
                driver.save_screenshot(str(screenshot))
            rows.append({"page": page, "path": paths[page], "first_s": times[0],
                         "median_s": statistics.median(times[1:]), "loads": len(times)})
    finally:
        driver.quit()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=5000)
    p.add_argument("--per-generation", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5, help="timed loads per endpoint and page (after the first)")
    p.add_argument("--out", default=None, help="where the JSON goes (default bench/results; --smoke: a temp dir)")
    p.add_argument("--smoke", action="store_true", help="300 candidates, one repeat")
    args = p.parse_args()
    if args.smoke:
        args.candidates, args.per_generation, args.repeats = 300, 50, 1
    out = Path(args.out or (SMOKE_OUT if args.smoke else RESULTS))
    with tempfile.TemporaryDirectory(prefix="evosearch-dashboard-load-") as folder:
        url, write_seconds, candidate_id = build_store(Path(folder), args.candidates, args.per_generation)
        with running_dashboard(url) as base:
            endpoints = time_endpoints(base, candidate_id, args.repeats)
            out.mkdir(parents=True, exist_ok=True)
            pages = time_pages(base, candidate_id, args.repeats, out / "dashboard_load_job_page.png")
    settings = {"candidates": args.candidates, "per_generation": args.per_generation, "repeats": args.repeats,
                "store": "sqlite (WAL), served on 127.0.0.1", "store_write_seconds": write_seconds}
    path = write_result(out, "dashboard_load", {"settings": settings, "endpoints": endpoints, "pages": pages})
    print(f"{args.candidates} candidates ({args.candidates // args.per_generation} generations), store written in "
          f"{write_seconds:.1f} s\n")
    print(markdown_table(["endpoint", "median ms", "KiB"],
                         [[r["endpoint"], f"{r['median_ms']:.0f}", f"{r['bytes'] / 1024:.0f}"] for r in endpoints]))
    print()
    print(markdown_table(["page", "first load s (cold)", f"median of {args.repeats} s"],
                         [[r["page"], f"{r['first_s']:.2f}", f"{r['median_s']:.2f}"] for r in pages]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
