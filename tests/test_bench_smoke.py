"""Every benchmark still runs end to end in its `--smoke` mode and writes sane JSON (merge speed, build
bandwidth, worker scaling, ...; search quality: tests/test_search_quality_bench.py; chaos:
tests/test_chaos_smoke.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _smoke(script: str, tmp_path) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke", "--out", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / script.replace(".py", ".json")).read_text())
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and len(machine["load_average_when_written"]) == 3, machine
    assert machine["torch"] and result["date"]
    return result, done.stdout


def test_merge_speed_smoke_times_both_tools_and_checks_parity(tmp_path):
    result, stdout = _smoke("merge_speed.py", tmp_path)
    rows = {r["method"]: r for r in result["summary"]}
    assert set(rows) == {"ties", "task_arithmetic", "dare_ties"}
    for method, r in rows.items():
        assert r["evosearch_seconds"] > 0 and r["mergekit_seconds"] > 0, method
        assert r["speedup"] == pytest.approx(r["mergekit_seconds"] / r["evosearch_seconds"])
        # A Python process that imported torch holds well over 50 MiB: a smaller figure is not a child's RSS.
        assert r["evosearch_peak_rss_bytes"] > 50 << 20 and r["mergekit_peak_rss_bytes"] > 50 << 20, method
    for method in ("ties", "task_arithmetic"):  # deterministic: the two tools must agree
        assert rows[method]["parity_checked"] and rows[method]["max_abs_difference"] <= 1e-5, rows[method]
    assert not rows["dare_ties"]["parity_checked"] and rows["dare_ties"]["max_abs_difference"] is None
    assert len(result["runs"]) == 2 * 3 * result["settings"]["repeats"]
    assert all(seconds > 0 for seconds in result["startup_cpu_seconds"].values()), result["startup_cpu_seconds"]
    assert "| ties |" in stdout and "n/a (random drop)" in stdout


def test_build_bandwidth_smoke_reports_a_share_of_the_measured_copy_bandwidth(tmp_path):
    result, stdout = _smoke("build_bandwidth.py", tmp_path)
    bandwidth = result["copy_bandwidth_gb_per_s"]
    assert 0.1 < bandwidth < 10_000, bandwidth
    model_bytes = result["settings"]["model_bytes"]
    assert {r["method"] for r in result["summary"]} == {"ties", "task_arithmetic", "dare_ties", "dare_linear",
                                                         "breadcrumbs", "della"}
    for r in result["summary"]:
        assert r["bytes_moved"] == (r["sources"] + 1) * model_bytes, r
        assert 0 < r["merge_seconds"] <= r["build_seconds"], r
        assert r["build_gb_per_s"] == pytest.approx(r["bytes_moved"] / r["build_seconds"] / 1e9)
        assert r["share_of_bandwidth"] == pytest.approx(r["build_gb_per_s"] / bandwidth)
    assert "share of copy bandwidth" in stdout


def test_worker_scaling_smoke_measures_one_and_two_workers(tmp_path):
    result, stdout = _smoke("worker_scaling.py", tmp_path)
    runs = {r["workers"]: r for r in result["runs"]}
    assert set(runs) == {1, 2}
    for workers, r in runs.items():
        assert r["candidates"] == result["settings"]["candidates"] and r["workers_seen"] == workers, r
        assert r["candidates_per_minute"] == pytest.approx(60 * r["candidates"] / r["wall_seconds"])
        assert sum(r["share"].values()) == pytest.approx(1.0)
        assert all(0 <= s <= 1 for s in r["share"].values()) and r["share"]["forward"] > 0, r
        assert r["forward_plus_build_share"] == pytest.approx(r["share"]["forward"] + r["share"]["build"])
    ratio = runs[2]["candidates_per_minute"] / runs[1]["candidates_per_minute"]
    assert result["scaling_2_over_1"] == pytest.approx(ratio)
    assert "scaling 2 workers / 1 worker" in stdout


def test_fitness_cost_smoke_times_anchors_against_full_tasks(tmp_path):
    result, stdout = _smoke("fitness_cost.py", tmp_path)
    items = result["items_per_candidate"]
    assert items["anchors"] == 4 * result["k_per_task"] and items["full"] > items["anchors"]
    seconds = result["median_seconds"]
    for side in ("anchors", "full"):
        assert all(seconds[side][key] >= 0 for key in ("build", "forward", "overhead")), seconds[side]
        assert seconds[side]["wall"] >= seconds[side]["forward"] > 0, seconds[side]
    assert seconds["full"]["forward"] > seconds["anchors"]["forward"]
    assert result["speedup_wall"] == pytest.approx(seconds["full"]["wall"] / seconds["anchors"]["wall"])
    assert "| anchors | 20 |" in stdout and "x faster per candidate" in stdout
    generated = result["generative_vs_multiple_choice"]
    for kind in ("multiple_choice", "generative"):
        assert generated[kind]["wall"] >= generated[kind]["forward"] > 0 and 0 < generated[kind]["model_share"] <= 1
    assert "| generative | zoo_target_gen |" in stdout


def test_cli_startup_smoke_times_every_verb(tmp_path):
    result, stdout = _smoke("cli_startup.py", tmp_path)
    assert set(result["rows"]) == {"--help", "status", "status job"} and "evosearch --help" in stdout
    assert all(0 < r["best_s"] <= r["median_s"] for r in result["rows"].values())


def test_subspace_methods_smoke_times_every_method(tmp_path):
    result, stdout = _smoke("subspace_methods.py", tmp_path)
    assert set(result["seconds_per_tensor"]) == {"iso_c", "iso_cts", "tsv_m"}
    assert all(s > 0 for s in result["seconds_per_tensor"].values())
    assert set(result["cpu_seconds_per_tensor"]) == set(result["seconds_per_tensor"])
    assert "skipped" in result["fusion_bench"] or set(result["fusion_bench"]["methods"]) == {"iso_c", "iso_cts", "tsv_m"}
    assert "| tsv_m |" in stdout
