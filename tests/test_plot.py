"""`evosearch plot` on finished 1- and 2-objective jobs (real Ray, SQLite and lm-eval on the tiny zoo)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from evosearch.cli import app
from test_job_export import dfs_store, finished_job, ps_store  # noqa: F401  (finished jobs, run once per session)

pytestmark = pytest.mark.slow

_PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dfs3_store(ray_local, tiny_zoo, tmp_path_factory) -> str:
    return finished_job(tiny_zoo, tmp_path_factory.getbasetemp() / "jobs", "dfs3")


@pytest.mark.parametrize("job", ["ps", "dfs", "dfs3"])  # 1, 2 and 3 objectives
def test_plot_writes_a_png(job, request, tmp_path):
    store = request.getfixturevalue(f"{job}_store")
    out = tmp_path / "plots" / f"{job}.png"
    result = CliRunner().invoke(app, ["plot", job, str(out), "--store", store])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith(_PNG) and len(data) > 10_000


def test_api_plot_and_unknown_job(dfs_store, tmp_path):  # noqa: F811
    from evosearch.api import open_job

    out = open_job("dfs", store=dfs_store).plot(tmp_path / "api.png")
    assert out.read_bytes().startswith(_PNG)
    result = CliRunner().invoke(app, ["plot", "nojob", str(tmp_path / "x.png"), "--store", dfs_store])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
