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


class _Killed(Exception):
    """Stands in for the driver dying in the middle of a generation."""


def test_plot_of_a_killed_job_with_an_uncommitted_generation(ray_local, tiny_zoo, tmp_path):
    from evosearch.api import Job
    from evosearch.search.driver import run_job
    from storage import Store
    from test_driver import _spec

    def die_in_generation_one(event):
        if event.generation == 1 and event.done >= 6:  # two of generation 1's four recorded
            raise _Killed("driver killed")

    with Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}") as store:
        with pytest.raises(_Killed):
            run_job(_spec(tiny_zoo, tmp_path, name="cut"), store, on_event=die_in_generation_one)
        job = Job(store, store.get_job("cut"))
        assert store.last_generation(job.record.id).generation == 0 and job.candidates(generation=1)
        out = job.plot(tmp_path / "cut.png")
    assert out.read_bytes().startswith(_PNG)
