"""The search-quality benchmark still runs end to end (tiny zoo, tiny budget) and reports every method."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"evolved", "random", "best source", "best default merge"}

pytestmark = pytest.mark.slow


def test_search_quality_smoke_reports_every_method(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "search_quality.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((tmp_path / "search_quality.json").read_text())
    assert set(result["summary"]) == METHODS
    for method, s in result["summary"].items():
        assert 0.0 <= s["report_mean"] <= 1.0 and 0.0 <= s["search_mean"] <= 1.0, method
        assert s["search_mean"] - s["report_mean"] == pytest.approx(s["gap_mean"])
    budget = result["settings"]["budget"]
    for run in result["runs"]:
        if run["method"] in ("evolved", "random"):
            # Equal budget: every search run is charged exactly the budget, and its curve never goes down.
            assert run["candidates"] == budget and len(run["best_so_far"]) == budget
        assert run["best_so_far"] == sorted(run["best_so_far"])
        assert run["search"] == pytest.approx(run["best_so_far"][-1]), run["method"]
    assert set(result["differences_report_points"]) == {f"evolved - {m}" for m in METHODS - {"evolved"}}
    assert result["machine"]["cpu_count"] and result["machine"]["load_average_when_written"] and result["date"]
    assert (tmp_path / "search_quality.png").stat().st_size > 0
    assert "| evolved |" in done.stdout
