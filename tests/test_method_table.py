"""The README's merge-method table is the registry's (`scripts/method_table.py` prints it), and a method the
table says has parity with mergekit is one that tests/test_merge_parity.py compares with mergekit."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

from evosearch.merge.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- merge-methods:begin (scripts/method_table.py) -->", "<!-- merge-methods:end -->"


def test_readme_table_is_the_registry():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert BEGIN in readme and END in readme, "README.md lacks the merge-method table markers"
    table = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    expected = runpy.run_path(str(ROOT / "scripts" / "method_table.py"))["method_table"]()
    assert table == expected, "README.md's method table is stale: paste `python scripts/method_table.py` into it"


def test_parity_claims_are_tested_against_mergekit():
    parity_cases = set(re.findall(r'"merge_method": "(\w+)"', (ROOT / "tests" / "test_merge_parity.py").read_text()))
    claimed = {name for name, m in METHODS.items() if m.verified.startswith("parity with mergekit")}
    assert claimed <= parity_cases, f"claimed without a parity test: {sorted(claimed - parity_cases)}"
    assert all(m.mergekit for m in METHODS.values() if m.name in claimed)


def test_fusionbench_claims_are_benchmarked_against_fusionbench():
    bench = (ROOT / "bench" / "subspace_methods.py").read_text()
    compared = set(re.search(r"METHODS = \(([^)]*)\)", bench).group(1).replace('"', "").replace(" ", "").split(","))
    claimed = {name for name, m in METHODS.items() if "FusionBench" in m.verified}
    assert claimed and claimed <= compared - {""}
    assert not any(m.mergekit for m in METHODS.values() if m.name in claimed)
