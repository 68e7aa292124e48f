"""Job files: a good one parses with paths resolved; every bad one stops with one line naming the field."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from evosearch.search.job import JobError, JobSpec, load_job, parse_job


def zoo_job(zoo, name: str = "job", **overrides) -> dict:
    """A small PS task-arithmetic CMA-ES job over the tiny zoo, full fitness on 100 docs per task (coarser scores go flat and stop CMA-ES)."""
    job = {
        "name": name,
        "seed": 3,
        "sources": {k: str(v) for k, v in zoo.models.items()},
        "base_model": "base",
        "search_space": {"kind": "ps", "sources": ["math", "lang"], "methods": "task_arithmetic",
                         "bounds": {"weight": [0.0, 3.0]}, "fixed_per_model": {"density": 1.0}},
        "optimizer": {"name": "cmaes", "popsize": 4},
        "generations": 2,
        "objectives": [{"task": "zoo_target", "direction": "max"}],
        "fitness": {"mode": "full", "limit": 100},
        "tasks": {"include_path": str(zoo.include_path)},
    }
    for key, value in overrides.items():
        if value is None:
            job.pop(key, None)
        else:
            job[key] = value
    return job


def write_job(tmp_path: Path, job: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def test_good_job_resolves_names_paths_and_defaults(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_job(write_job(tmp_path, zoo_job(tiny_zoo)))
    math, lang, base = (str(tiny_zoo.models[k]) for k in ("math", "lang", "base"))
    assert spec.search_space.sources == [math, lang]
    assert spec.search_space.base_model == base == spec.base_model
    assert spec.output_dir == str(tmp_path / "runs" / "job")
    assert spec.store == f"sqlite:///{tmp_path / 'runs' / 'job' / 'evosearch.db'}"
    assert spec.optimizer.max_generations == 2 and spec.population_size == 4
    assert spec.objective_names == ["zoo_target"] and spec.report_tasks == ["zoo_target_report"]
    assert spec.source_paths[0] == base and set(spec.source_paths) == set(map(str, tiny_zoo.models.values()))
    assert spec.report.when == "end" and spec.workers.count == 1
    # The stored form validates back to the same spec (resume reads it from the store).
    assert type(spec).model_validate(spec.to_dict()) == spec


def test_report_split_is_the_report_twin_when_defined_else_a_hold_out(tiny_zoo, tmp_path):
    twin = parse_job(zoo_job(tiny_zoo))
    assert twin.report_tasks == ["zoo_target_report"] and twin.holdout_tasks == []
    forced = parse_job(zoo_job(tiny_zoo, objectives=[{"task": "zoo_target", "direction": "max",
                                                      "report_holdout": True}]))
    assert forced.report_tasks == ["zoo_target"] and forced.holdout_tasks == ["zoo_target"]
    assert forced.worker_tasks == ["zoo_target"] and forced.holdout.fraction == 0.2
    # A single-split task (no `_report` twin in the task set) gets its hold-out without being asked.
    single = tmp_path / "tasks"
    single.mkdir()
    config = yaml.safe_load((Path(tiny_zoo.include_path) / "zoo_math.yaml").read_text())
    (single / "qa.yaml").write_text(yaml.safe_dump({**config, "task": "qa"}))
    spec = parse_job(zoo_job(tiny_zoo, objectives=[{"task": "qa", "direction": "max"}],
                             tasks={"include_path": str(single)}))
    (objective,) = spec.task_objectives
    assert objective.report_holdout and spec.holdout_tasks == ["qa"]
    # What the store keeps re-reads the same (resume validates the stored spec without the task files).
    assert JobSpec.model_validate(spec.to_dict()).holdout_tasks == ["qa"]


def test_nsga2_with_a_cost_objective_on_a_dfs_space(tiny_zoo):
    job = zoo_job(tiny_zoo, search_space={"kind": "dfs", "sources": ["math", "lang"], "num_layers": 2},
                  optimizer={"name": "nsga2", "pop_size": 6},
                  objectives=[{"task": "zoo_target", "direction": "max"},
                              {"cost": "path_length", "direction": "min"}])
    spec = parse_job(job)
    assert spec.objective_names == ["zoo_target", "path_length"] and spec.directions == ["max", "min"]
    assert spec.population_size == 6


def _set(path: str, value):
    """An edit of the good job: set (or, with value ..., delete) a dotted field."""
    def edit(job: dict) -> dict:
        job = copy.deepcopy(job)
        *parents, last = path.split(".")
        node = job
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is ...:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return job
    return edit


UNIFORM_MERGE = {"merge_method": "task_arithmetic", "base_model": "base",
                 "models": [{"model": m, "parameters": {"weight": 0.5}} for m in ("math", "lang")]}
BAD_JOBS = [
    ("missing name", _set("name", ...), "name: required field is missing"),
    ("unsafe name", _set("name", "../evil"), "name: job name '../evil' must be"),
    ("slash in name", _set("name", "a/b"), "(no '/' or '..')"),
    ("missing source dir", _set("sources.math", "/nonexistent/model"), "sources.math: no model at /nonexistent/model"),
    ("unknown source name in space", _set("search_space.sources", ["math", "nope"]),
     "search_space.sources: 'nope' is not one of sources"),
    ("unknown base", _set("base_model", "nope"), "base_model: 'nope' is not one of sources"),
    ("unknown merge method", _set("search_space.methods", "magic"), "search_space.methods: unknown merge method 'magic'"),
    ("inverted bounds", _set("search_space.bounds", {"weight": [1.0, 0.0]}),
     "search_space.bounds.weight: range needs finite low < high, got [1.0, 0.0]"),
    ("unknown optimizer", _set("optimizer", {"name": "sgd"}), "optimizer: Input tag 'sgd' found using 'name'"),
    ("bad optimizer field", _set("optimizer.sigma0", -1), "optimizer.sigma0: Input should be greater than 0"),
    ("objective without direction", _set("objectives", [{"task": "zoo_target"}]),
     "objectives[0].direction: required (max or min)"),
    ("objective with a bad direction", _set("objectives", [{"task": "zoo_target", "direction": "up"}]),
     "objectives[0].direction: Input should be 'max' or 'min'"),
    ("cost on a PS space", _set("objectives", [{"task": "zoo_target", "direction": "max"},
                                               {"cost": "path_length", "direction": "min"}]),
     "objectives[1].cost: 'path_length' needs a dfs or ps+dfs search space, not 'ps'"),
    ("unknown cost", _set("objectives", [{"cost": "flops", "direction": "min"}]), "unknown cost term 'flops'"),
    ("unknown estimator", _set("fitness", {"mode": "reduced", "calibration": "c", "estimator": "magic"}),
     "fitness.estimator: unknown estimator 'magic'"),
    ("unknown strategy", _set("fitness", {"mode": "reduced", "calibration": "c", "strategy": "magic"}),
     "fitness.strategy: unknown anchor strategy 'magic'"),
    ("reduced without calibration", _set("fitness", {"mode": "reduced"}), "fitness: mode 'reduced' needs a calibration"),
    ("unknown fitness mode", _set("fitness", {"mode": "half"}), "fitness.mode: Input should be 'reduced' or 'full'"),
    ("missing include path", _set("tasks.include_path", "/nonexistent/tasks"),
     "tasks.include_path[0]: not found: /nonexistent/tasks"),
    ("unknown top-level field", _set("colour", "red"), "colour: unknown field"),
    ("generations twice", _set("optimizer.max_generations", 3), "generations: give either generations or"),
    ("budget below one generation", _set("budget", 2), "budget: 2 candidates is less than one generation (4)"),
    ("two objectives for cmaes without weights", _set("objectives", [{"task": "zoo_target", "direction": "max"},
                                                                    {"task": "zoo_math", "direction": "max"}]),
     "optimizer.weights: cmaes with 2 objectives needs one weight per objective"),
    ("bad worker count", _set("workers", {"count": 0}), "workers.count: Input should be greater than 0"),
    ("report task and hold-out both", _set("objectives", [{"task": "zoo_target", "direction": "max",
                                                           "report_task": "zoo_math", "report_holdout": True}]),
     "objectives[0].report_holdout: give report_task or report_holdout, not both"),
    ("report split is the search split", _set("objectives", [{"task": "zoo_target", "direction": "max",
                                                              "report_task": "zoo_target"}]),
     "objectives[0].report_task: the report split must differ from the search split (report_holdout: true"),
    ("hold-out of every doc", _set("holdout", {"fraction": 1.0}), "holdout.fraction: Input should be less than 1"),
    ("start from a method outside the space", _set("start_from", {
        "merge_method": "ties", "base_model": "base",
        "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in ("math", "lang")]}),
     "start_from: merge_method 'ties' is not among the space's methods ['task_arithmetic']"),
    ("start from other models", _set("start_from", {
        "merge_method": "task_arithmetic", "base_model": "base",
        "models": [{"model": m, "parameters": {"weight": 0.5}} for m in ("math", "strings")]}),
     "start_from: recipe models"),
    ("start from a missing file", _set("start_from", "/nonexistent/merge.yaml"), "start_from: "),
    ("start from and x0 both", lambda job: _set("optimizer.x0", 0.2)(_set("start_from", UNIFORM_MERGE)(job)),
     "start_from: sets CMA-ES's initial mean; give it or optimizer.x0, not both"),
]


@pytest.mark.parametrize("edit,expected", [(e, m) for _, e, m in BAD_JOBS], ids=[n for n, _, _ in BAD_JOBS])
def test_bad_job_files_fail_with_one_line_naming_the_field(tiny_zoo, tmp_path, edit, expected):
    path = write_job(tmp_path, edit(zoo_job(tiny_zoo)))
    with pytest.raises(JobError) as info:
        load_job(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_start_from_a_mergekit_config_by_name_or_path_is_encoded_in_the_space(tiny_zoo, tmp_path):
    recipe = {"merge_method": "task_arithmetic", "base_model": "base", "dtype": "float32",
              "models": [{"model": "math", "parameters": {"weight": 1.5}},
                         {"model": str(tiny_zoo.models["lang"]) + "/", "parameters": {"weight": 0.75}}]}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(recipe))
    spec = load_job(write_job(tmp_path, zoo_job(tiny_zoo, start_from=str(path))))
    assert [m["model"] for m in spec.start_from["models"]] == [str(tiny_zoo.models[k]) for k in ("math", "lang")]
    # weight in [0, 3]: 1.5 and 0.75 are genes 0.5 and 0.25; what the store keeps encodes the same.
    assert spec.start_genome().tolist() == [0.5, 0.25]
    assert JobSpec.model_validate(spec.to_dict()).start_genome().tolist() == [0.5, 0.25]


@pytest.mark.parametrize("text,expected", [
    ("name: [unclosed", "not valid YAML at line 1"),
    ("- just\n- a list\n", "a job file is a YAML mapping of fields, got list"),
    ("", "a job file is a YAML mapping of fields, got NoneType"),
])
def test_unreadable_job_files(tmp_path, text, expected):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(JobError, match=expected):
        load_job(path)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")


EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("job_*.yaml")) + [EXAMPLES_DIR / "demo_job.yaml"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_jobs_load_against_the_zoo(tiny_zoo, tmp_path, monkeypatch, example):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "zoo").symlink_to(tiny_zoo.root)
    monkeypatch.chdir(tmp_path)
    spec = load_job(example)
    assert spec.output_dir == str(tmp_path / "runs" / spec.name)
    assert all(Path(p).is_dir() for p in spec.source_paths)
    assert spec.population_size > 1


def test_the_example_jobs_exist():
    assert [p.name for p in EXAMPLES] == ["job_dfs.yaml", "job_ps_cmaes.yaml", "job_ps_methods.yaml", "job_psdfs_nsga2.yaml",
                                         "job_zoo_generative.yaml", "demo_job.yaml"]


@pytest.mark.parametrize("name", ["calibrate_zoo.yaml", "demo_calibrate.yaml"])
def test_example_calibrations_load_against_the_zoo(tiny_zoo, tmp_path, monkeypatch, name):
    from evosearch.search.calibration_spec import load_calibration_spec

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "zoo").symlink_to(tiny_zoo.root)
    monkeypatch.chdir(tmp_path)
    spec = load_calibration_spec(EXAMPLES_DIR / name)
    assert all(Path(p).is_dir() for p in spec.source_paths) and spec.n_random > 0 and spec.n_heldout > 0


def test_searching_on_a_public_benchmarks_test_split_is_refused_unless_allowed(tiny_zoo, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(tiny_zoo.include_path, tasks)
    (tasks / "_gsm8k_base.yaml").write_text("dataset_path: gsm8k\ntest_split: test\noutput_type: multiple_choice\n")
    (tasks / "gsm8k_mini.yaml").write_text("task: gsm8k_mini\ninclude: _gsm8k_base.yaml\n"
                                           "doc_to_text: !function utils.doc_to_text\n")
    (tasks / "gsm8k_mini_report.yaml").write_text("task: gsm8k_mini_report\ndataset_path: gsm8k\n"
                                                  "validation_split: train\n")
    job = zoo_job(tiny_zoo, objectives=[{"task": "gsm8k_mini", "direction": "max"}],
                  tasks={"include_path": str(tasks)})
    with pytest.raises(JobError, match=r"objectives\[0\].task: 'gsm8k_mini' scores a public benchmark's test split"):
        parse_job(job)
    assert parse_job({**job, "allow_test_split_fitness": True}).allow_test_split_fitness
    # The zoo's own tasks read a file named `test`, but are no public benchmark.
    assert not parse_job(zoo_job(tiny_zoo)).allow_test_split_fitness


def test_a_relative_sqlite_store_is_resolved_where_the_command_runs(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_job(zoo_job(tiny_zoo, store="sqlite:///shared/evosearch.db"))
    assert spec.store == f"sqlite:///{tmp_path / 'shared' / 'evosearch.db'}"
    url = "postgresql+psycopg://evo:secret@127.0.0.1:5432/evo"
    assert parse_job(zoo_job(tiny_zoo, store=url)).store == url
