"""bench/chaos.py still runs end to end in its `--smoke` mode. A module of its own: at 220 s alone it is the
suite's longest test, and `scripts/test.sh` gives whole modules to its workers, so it starts first on one
while the other takes the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_chaos_smoke_survives_its_faults_with_nothing_lost_or_evaluated_twice(tmp_path):
    """bench/chaos.py --smoke: worker kills, a PostgreSQL restart and two driver kills on a 48-candidate job."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "chaos.json").read_text())
    assert result["faults_injected"]["driver_sigkill"] == 2 and result["faults_injected"]["database_restart"] == 1
    assert result["survived"] and result["same_front"]
    assert (result["lost"], result["recorded_twice"], result["evaluated_twice"]) == (0, 0, 0)
