"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium through /usr/bin/chromedriver
(installed by `scripts/install.sh --test`; Selenium Manager is pointed at nothing, so no browser build is ever
downloaded). A finished job of the tiny zoo (real Ray, lm-eval, SQLite), and jobs written while the page is open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dashboard_store import SyntheticSearch, running_dashboard
from evosearch.cli import app
from storage import Store
from test_job_export import dfs_store  # noqa: F401  (a finished two-objective DFS job, run once per session)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCRIPT_ERROR = "<script>window.__pwned = 1</script><b>RuntimeError</b>: CUDA out of memory"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Debian's chromium and chromium-driver are not installed: run scripts/install.sh --test",
                    pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_MANAGER_PATH"] = "/nonexistent/selenium-manager"  # should Selenium want to fetch anything, it fails
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,2000", "--disable-background-networking", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, url: str, page: str) -> None:
    driver.get(url)
    _wait_ready(driver, page)


def _wait_ready(driver, page: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return document.body.dataset.page === arguments[0] && document.body.dataset.ready === '1'", page))


def _wait(driver, condition, timeout: float = 60, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message)


def _no_console_errors(driver) -> None:
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors  # a blocked script (the CSP), a failed fetch or a JavaScript error


def _as_shown(value: float) -> str:
    """As the page's `fmt` writes a number: whole numbers bare, others with 4 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def _front_points(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#front-plot .scatterlayer .trace:last-of-type path.point")


def test_finished_job_front_matches_evosearch_front_and_a_click_opens_the_candidate(browser, dfs_store):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    listed = CliRunner().invoke(app, ["front", "dfs", "--json", "--store", dfs_store])
    assert listed.exit_code == 0, listed.output
    front_rows = json.loads(listed.output)["front"]
    with Store.open(dfs_store) as store:
        job_id = store.get_job("dfs").id
        every = {c.id: c for c in store.candidates(job_id)}
    with running_dashboard(dfs_store) as base:
        _open(browser, f"{base}/", "jobs")
        row = browser.find_element(By.CSS_SELECTOR, "#jobs tr[data-job='dfs']")
        assert "finished" in row.text and f"{sum(c.status == 'done' for c in every.values())}" in row.text
        row.find_element(By.LINK_TEXT, "dfs").click()
        _wait_ready(browser, "job")

        points = _front_points(browser)
        assert len(points) == len(front_rows) == int(browser.find_element(By.ID, "front-plot").get_attribute(
            "data-front-points"))
        assert f"{len(front_rows)} candidate(s) on the front" in browser.find_element(By.ID, "front-count").text
        assert browser.find_element(By.ID, "candidate-count").get_attribute("data-count") == str(len(every))
        time.sleep(1.0)  # let Plotly finish its transitions before the picture
        browser.save_screenshot(str(ROOT / "docs" / "dashboard.png"))
        _no_console_errors(browser)

        clicked = browser.execute_script("return document.getElementById('front-plot').data.at(-1).customdata[0]")
        ActionChains(browser).move_to_element(points[0]).click().perform()
        _wait(browser, lambda d: "/candidates/" in d.current_url, message="the click opened no candidate")
        _wait_ready(browser, "candidate")
        opened = every[int(browser.current_url.rsplit("/", 1)[1])]
        search = {s.objective: s.estimated for s in opened.scores if s.split == "search"}
        assert search == {s.objective: s.estimated for s in every[clicked].scores if s.split == "search"}
        facts = browser.find_element(By.ID, "facts").text
        assert opened.recipe_hash in facts and "DFS (layer path)" in facts
        scores = browser.find_element(By.ID, "scores").text
        for score in opened.scores:
            value = score.estimated if score.split == "search" else score.full
            assert _as_shown(value) in scores, (score, scores)
        assert "zoo_target_report" in scores and "acc" in scores  # the report split's task and the metric
        assert browser.find_element(By.ID, "export-command").text.startswith(
            f"evosearch export dfs out/dfs-c{opened.id} --candidate {opened.id} --store")
        assert browser.find_elements(By.CSS_SELECTOR, "#picture .plot .scatterlayer path.point")  # the layer path
        time.sleep(0.5)
        browser.save_screenshot(str(ROOT / "docs" / "dashboard-candidate.png"))
        _no_console_errors(browser)

        _open(browser, f"{base}/jobs/store/dfs/workers", "workers")
        rows = browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")
        workers = {c.worker for c in every.values() if c.worker and c.cached_from is None}
        assert len(rows) == len(workers) >= 1
        for row in rows:
            busy = row.find_elements(By.TAG_NAME, "td")[-1].text
            assert 0 < float(busy.rstrip("%")) <= 100, busy
        _no_console_errors(browser)


def test_store_strings_render_as_text(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url = f"sqlite:///{tmp_path / 'evosearch.db'}"
    with Store.open(url) as store:
        SyntheticSearch(store, "esc", tmp_path, per_generation=6, failure_every=3, error=SCRIPT_ERROR).run(2)
        failed = next(c for c in store.candidates(store.get_job("esc").id) if c.status == "failed")
    with running_dashboard(url) as base:
        _open(browser, f"{base}/jobs/store/esc", "job")
        Select(browser.find_element(By.ID, "status-filter")).select_by_value("failed")
        cells = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody td.error-cell")
        assert len(cells) == 4 and all(cell.get_attribute("textContent") == SCRIPT_ERROR for cell in cells)
        assert not browser.find_elements(By.CSS_SELECTOR, "#candidates tbody b, #candidates tbody script")
        _open(browser, f"{base}/jobs/store/esc/candidates/{failed.id}", "candidate")
        assert browser.find_element(By.ID, "error").get_attribute("textContent") == SCRIPT_ERROR
        assert browser.execute_script("return window.__pwned") is None
        _no_console_errors(browser)


def test_a_running_job_grows_on_the_page_without_a_reload(browser, tmp_path):
    from selenium.webdriver.common.by import By

    url = f"sqlite:///{tmp_path / 'evosearch.db'}"
    store = Store.open(url)
    search = SyntheticSearch(store, "live", tmp_path, per_generation=8)
    search.run(1, finish=False)
    try:
        with running_dashboard(url) as base:
            _open(browser, f"{base}/jobs/store/live", "job")
            count = lambda d: int(d.find_element(By.ID, "candidate-count").get_attribute("data-count"))  # noqa: E731
            assert count(browser) == 8 and "running" in browser.find_element(By.ID, "status").text
            browser.execute_script("window.__samePage = 42")
            seen = [count(browser)]

            def more_generations() -> None:
                for generation in (1, 2):
                    for index in range(8):
                        search.record(generation, index)
                        time.sleep(0.15)
                    search.commit(generation)

            writer = threading.Thread(target=more_generations)
            writer.start()
            deadline = time.monotonic() + 60
            while count(browser) < 24 and time.monotonic() < deadline:
                seen.append(count(browser))
                time.sleep(0.3)
            writer.join()
            _wait(browser, lambda d: count(d) == 24, message="the page never showed all 24 candidates")
            assert len(set(seen + [24])) >= 3, seen  # it grew in steps while the job wrote, not only at the end
            assert browser.execute_script("return window.__samePage") == 42  # the same document: no reload
            _wait(browser, lambda d: len(_front_points(d)) == len(search.front_ids))
            assert browser.find_element(By.ID, "generation").text.count("\n") >= 3  # generations 2, 1, 0 offered
            _no_console_errors(browser)
    finally:
        store.close()


def test_load_bench_smoke_times_every_endpoint_and_page(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "dashboard_load.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "dashboard_load.json").read_text())
    assert result["settings"]["candidates"] == 300 and result["machine"]["cpu_count"] >= 1
    assert len(result["endpoints"]) == 7 and all(r["median_ms"] > 0 and r["bytes"] > 0 for r in result["endpoints"])
    assert [r["page"] for r in result["pages"]] == ["jobs", "job", "candidate", "workers"]
    assert all(r["first_s"] > 0 and r["median_s"] > 0 for r in result["pages"])
    assert (tmp_path / "dashboard_load_job_page.png").stat().st_size > 10_000
    assert "| /api/jobs/store/load/candidates |" in done.stdout
