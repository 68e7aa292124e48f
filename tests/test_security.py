"""Security through the `evosearch` command line, on real models, Ray, SQLite and PostgreSQL: pickle
checkpoints only on request, a model's remote code never run, database passwords never shown or written,
and job names and paths that stay where the user put them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pg import PG_PASSWORD, PG_USER, free_port
from test_bad_input import (FINISHED_JOB, finished_store, invoke, make_misfits, model_copy, small_job,
                            write_yaml)

pytestmark = pytest.mark.slow

MARKER_NAME = "remote-code-ran"
CLOSED_PASSWORD = "closed-Qz9-secret"


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def files_holding(text: str, *folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def tree(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*"))


def _ta(base: str, model: str) -> dict:
    return {"merge_method": "task_arithmetic", "base_model": base,
            "models": [{"model": model, "parameters": {"weight": 0.5}}]}


# --- checkpoints ----------------------------------------------------------------------------------------
def test_pickle_only_model_is_refused_unless_allow_pickle(tiny_zoo, tmp_path):
    misfits = make_misfits(tiny_zoo, tmp_path / "models")
    base = str(tiny_zoo.models["base"])
    recipe = write_yaml(tmp_path / "recipe.yaml", _ta(base, str(misfits / "pickled")))
    refused = one_line_error(invoke("merge", recipe, tmp_path / "out"), 2)
    assert f"model {misfits / 'pickled'}: only pickle weights (pytorch_model.bin)" in refused
    assert "--allow-pickle" in refused and not (tmp_path / "out").exists()

    assert invoke("merge", recipe, tmp_path / "out", "--allow-pickle").exit_code == 0
    # The pickle holds the base's weights, so the merge equals the one over the safetensors original.
    safe = write_yaml(tmp_path / "safe.yaml", _ta(base, str(model_copy(Path(base), tmp_path / "base-copy"))))
    assert invoke("merge", safe, tmp_path / "safe").exit_code == 0
    merged, reference = load_file(tmp_path / "out" / "model.safetensors"), load_file(tmp_path / "safe" / "model.safetensors")
    assert merged.keys() == reference.keys() and all((merged[k] == reference[k]).all() for k in merged)


# --- remote code ----------------------------------------------------------------------------------------
def remote_code_model(source: Path, target: Path, marker: Path) -> Path:
    """A copy of `source` whose config and tokenizer point at custom code (auto_map) that, once imported,
    leaves `marker` behind."""
    def custom(config: dict) -> None:
        config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}

    model = model_copy(source, target, custom)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["custom.CustomTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (model / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    return model


@pytest.fixture(scope="module")
def remote_code_run(ray_local, tiny_zoo, tmp_path_factory):
    """A job whose `lang` source carries remote code, run by `evosearch run` from `here/` with the relative
    output_dir `sub/../out`, then exported with --verify (lm-eval on the export)."""
    root = tmp_path_factory.mktemp("remote-code")
    marker = root / MARKER_NAME
    remote = remote_code_model(Path(tiny_zoo.models["lang"]), root / "models" / "lang-remote", marker)
    here = root / "here"
    here.mkdir()
    job = small_job(tiny_zoo, "remote", here, sources={**{k: str(v) for k, v in tiny_zoo.models.items()},
                                                      "lang": str(remote)}, output_dir="sub/../out")
    job_file = write_yaml(root / "remote.yaml", job)
    cwd = Path.cwd()
    os.chdir(here)
    try:
        run = invoke("run", job_file)
        exported = invoke("export", "remote", root / "export", "--store", f"sqlite:///{here / 'out' / 'evosearch.db'}",
                          "--verify")
    finally:
        os.chdir(cwd)
    assert run.exit_code == 0, run.output
    assert exported.exit_code == 0, exported.output
    return {"root": root, "here": here, "marker": marker, "remote": remote}


def test_remote_code_is_never_imported_by_merge_run_export_or_evaluation(remote_code_run, tiny_zoo):
    root, marker, remote = remote_code_run["root"], remote_code_run["marker"], remote_code_run["remote"]
    recipe = write_yaml(root / "recipe.yaml", _ta(str(tiny_zoo.models["base"]), str(remote)))
    assert invoke("merge", recipe, root / "merged").exit_code == 0
    assert not marker.exists()
    for out in (root / "merged", root / "export"):
        # A plain model: no pointer left at code that was not exported.
        assert "auto_map" not in json.loads((out / "config.json").read_text())
        assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
        assert not (out / "custom.py").exists()

    # The trap is live: transformers with trust_remote_code=True does import the module.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(root / "hf-modules")}
    subprocess.run([sys.executable, "-c", "import sys; from transformers import AutoConfig\n"
                    "try: AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
                    "except Exception: pass", str(remote)], env=env, timeout=300, check=True)
    assert marker.exists()


def test_the_job_writes_only_under_its_output_dir(remote_code_run):
    here = remote_code_run["here"]
    # `sub/../out` is `out`, relative to where the job ran; nothing else appears, not even `sub`.
    assert {p.relative_to(here).parts[0] for p in here.rglob("*")} == {"out"}
    assert (here / "out" / "evosearch.db").is_file()


# --- database passwords ---------------------------------------------------------------------------------
def test_passwords_of_an_unreachable_store_are_never_shown_or_written(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"postgresql+psycopg://evosearch:{CLOSED_PASSWORD}@127.0.0.1:{free_port()}/evosearch"
    jobs = tmp_path / "jobs"  # the user's own file holds the password; nothing else may
    jobs.mkdir()
    job_file = write_yaml(jobs / "job.yaml", small_job(tiny_zoo, "pw", tmp_path, store=url))
    for args in (["run", job_file], ["status", "--store", url], ["status", "pw", "--store", url],
                 ["front", "pw", "--store", url], ["resume", job_file], ["export", "pw", tmp_path / "x", "--store", url],
                 ["status", "--store", url.replace("postgresql+psycopg", "mysql")]):
        result = invoke(*args)
        line = one_line_error(result, 2)
        assert CLOSED_PASSWORD not in result.output and "evosearch:***@127.0.0.1" in line, line
    assert files_holding(CLOSED_PASSWORD, tmp_path) == [job_file]


def test_passwords_of_a_real_postgresql_store_are_never_shown_or_written(ray_local, tiny_zoo, pg_server,
                                                                          tmp_path, monkeypatch):
    import psycopg
    import ray

    monkeypatch.chdir(tmp_path)
    url = pg_server.create_database("security")
    assert PG_PASSWORD in url
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job_file = write_yaml(jobs / "job.yaml", small_job(tiny_zoo, "pg", tmp_path, store=url))
    shown = [invoke("run", job_file)]
    shown += [invoke(*args) for args in (["status", "--store", url], ["status", "pg", "--store", url],
                                        ["front", "pg", "--store", url], ["front", "pg", "--json", "--store", url],
                                        ["export", "pg", tmp_path / "best", "--store", url])]
    assert all(r.exit_code == 0 for r in shown), [r.output for r in shown]
    assert "postgresql+psycopg://evosearch:***@127.0.0.1" in shown[0].output
    assert not [r.output for r in shown if PG_PASSWORD in r.output]
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # the Ray workers' logs of this session
    assert files_holding(PG_PASSWORD, tmp_path, logs) == [job_file]
    # Nor in the store itself: a role that may only read it must not learn how to write it.
    with psycopg.connect(host="127.0.0.1", port=pg_server.port, user=PG_USER, password=PG_PASSWORD,
                         dbname="security") as connection:
        stored = connection.execute("SELECT spec::text FROM jobs").fetchall()
    assert len(stored) == 1 and "evosearch:***@127.0.0.1" in stored[0][0] and PG_PASSWORD not in stored[0][0]
    assert (tmp_path / "best" / "model.safetensors").is_file()


# --- names and paths ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", ".."])
def test_job_names_cannot_leave_their_directory(tiny_zoo, tmp_path, monkeypatch, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    job = small_job(tiny_zoo, "ok", work)
    job.pop("output_dir")  # the default, runs/NAME, is what a name could escape from
    job_file = write_yaml(tmp_path / "job.yaml", {**job, "name": name})
    before = tree(tmp_path)
    assert f"name: job name {name!r} must be" in one_line_error(invoke("run", job_file), 2)
    for verb in ("status", "front", "resume"):
        assert f"{name!r} is neither a job file nor a job name" in one_line_error(invoke(verb, name), 2)
    assert f"{name!r} is neither a calibration file nor a calibration name" in one_line_error(
        invoke("fitness", "report", name), 2)
    from evosearch.api import QueryError, open_job

    with pytest.raises(QueryError, match="is neither a job file nor a job name"):
        open_job(name)
    assert tree(tmp_path) == before


def test_export_path_with_dotdot_is_resolved_as_written(ray_local, tiny_zoo, tmp_path_factory, tmp_path):
    store = finished_store(tiny_zoo, tmp_path_factory.getbasetemp() / "finished")
    result = invoke("export", FINISHED_JOB, tmp_path / "nowhere" / ".." / "best", "--store", store)
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith(f"exported to {tmp_path / 'best'}")
    assert (tmp_path / "best" / "model.safetensors").is_file() and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_api_export_path_with_dotdot_is_resolved_as_written(ray_local, tiny_zoo, tmp_path_factory, tmp_path):
    from evosearch.api import open_job

    job = open_job(FINISHED_JOB, store=finished_store(tiny_zoo, tmp_path_factory.getbasetemp() / "finished"))
    assert job.export(tmp_path / "nowhere" / ".." / "best") == tmp_path / "best"
    assert "Job: `done`" in (tmp_path / "best" / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
