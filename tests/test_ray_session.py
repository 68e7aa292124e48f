"""`evosearch run` without RAY_ADDRESS starts a Ray of its own, even on a machine whose `ray start` cluster
Ray's discovery would join (the address in /tmp/ray/ray_current_cluster)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RECORDED = "127.0.0.1:9"  # discard port: a cluster that answers nothing

PROBE = ("import ray; from evosearch.search.ray_session import ensure_ray; ensure_ray(num_cpus=1); "
         "print('gcs', ray.get_runtime_context().gcs_address, flush=True); ray.shutdown()")


def _in_private_tmp_ray(code: str, env: dict) -> subprocess.CompletedProcess:
    """`code` in a mount namespace whose /tmp/ray is an empty tmpfs, with a `ray start` cluster recorded
    there: other users' Rays on this machine are neither seen nor touched."""
    Path("/tmp/ray").mkdir(exist_ok=True)
    shell = (f"mount -t tmpfs tmpfs /tmp/ray && echo {RECORDED} > /tmp/ray/ray_current_cluster && "
             f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell], env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (CI has both)")
def test_no_ray_address_starts_a_ray_of_its_own_not_the_recorded_cluster():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    own = _in_private_tmp_ray(PROBE, env)
    assert own.returncode == 0, own.stderr[-2000:]
    (line,) = [ln for ln in own.stdout.splitlines() if ln.startswith("gcs ")]
    assert line.split()[1] != RECORDED  # Ray's discovery alone would have tried 127.0.0.1:9 and hung there
