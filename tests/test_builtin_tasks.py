"""lm-eval's own tasks by name: overrides merged into the registered config, metrics and filters, and every
bad `tasks` input refused with one line before Ray starts and before anything is stored."""

from __future__ import annotations

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from builtin_tasks import MAX_GEN_TOKS, overrides
from evosearch.errors import UsageError
from evosearch.merge.sources import load_tokenizer
from evosearch.search import driver
from evosearch.search.driver import run_job
from evosearch.search.job import JobError, parse_job
from fitness.evaluator import LmEvalEvaluator
from fitness.tasks import TaskCatalog, TaskSource
from storage import Store
from test_job import zoo_job


def _no_ray(monkeypatch) -> bool:
    """Makes starting Ray fail the test (another test may have left the session's Ray up, so that
    `ray.is_initialized()` alone cannot tell); returns whether Ray was up before."""
    def refuse(**_):
        raise AssertionError("Ray was started before the tasks were checked")
    monkeypatch.setattr(driver, "ensure_ray", refuse)
    return ray.is_initialized()


@pytest.fixture(scope="module")
def task_overrides(tmp_path_factory):
    return overrides(tmp_path_factory.mktemp("builtin-data"))


def test_overrides_merge_into_the_registered_config_through_lm_evals_factory(task_overrides):
    """Fails if an lm-eval upgrade stops merging overrides into a registered task (0.4.13's
    `TaskManager.load([{"task": ...}])` drops the registered config: no test split, no generation settings)."""
    catalog = TaskCatalog(TaskSource(overrides=task_overrides))
    gsm8k = catalog.build_task("gsm8k")
    config = gsm8k.config
    assert config.test_split == "test" and config.training_split == "train"  # gsm8k.yaml's, kept
    assert [f["name"] for f in config.filter_list] == ["strict-match", "flexible-extract"]
    assert config.generation_kwargs["until"][0] == "Question:"  # kept: the override named max_gen_toks only
    assert config.generation_kwargs["max_gen_toks"] == MAX_GEN_TOKS and config.num_fewshot == 0
    assert config.metric_list[0]["metric"] == "exact_match" and len(gsm8k.eval_docs) == 8
    derived = catalog.build_task("gsm8k_search")
    assert derived.config.task == "gsm8k_search" and derived.config.test_split == "train"
    assert [f["name"] for f in derived.config.filter_list] == ["strict-match", "flexible-extract"]
    assert derived.eval_docs[0]["question"] != gsm8k.eval_docs[0]["question"]  # the train file's items
    arc = catalog.build_task("arc_easy")
    assert arc.OUTPUT_TYPE == "multiple_choice" and list(arc.aggregation()) == ["acc", "acc_norm"]


def test_generative_and_multiple_choice_scores_per_metric_and_filter(tiny_zoo, task_overrides):
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo.models["math"])
    tokenizer = load_tokenizer(str(tiny_zoo.models["math"]))
    evaluator = LmEvalEvaluator(TaskSource(overrides=task_overrides), ["gsm8k", "mgsm_direct_ja", "arc_easy"],
                                scoring={"gsm8k": ("exact_match", "flexible-extract"), "arc_easy": ("acc_norm", None)})
    assert {t: (s.metric, s.filter) for t, s in evaluator.scoring.items()} == {
        "gsm8k": ("exact_match", "flexible-extract"), "mgsm_direct_ja": ("exact_match", "remove_whitespace"),
        "arc_easy": ("acc_norm", "none")}
    result = evaluator.evaluate(model, tokenizer)
    for task in ("gsm8k", "mgsm_direct_ja", "arc_easy"):
        assert sorted(result.correct[task]) == list(range(8))
        assert set(result.correct[task].values()) <= {0, 1}
        assert result.accuracy[task] == pytest.approx(sum(result.correct[task].values()) / 8)


def _job(zoo, tmp_path, **changes) -> dict:
    job = zoo_job(zoo, objectives=[{"task": "gsm8k_search", "report_task": "gsm8k", "direction": "max",
                                    "filter": "flexible-extract"}])
    job["tasks"] = {"overrides": overrides(tmp_path / "data", n=4)}
    job["output_dir"] = str(tmp_path / "out")
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            job[section] = {**job[section], field: value}
        else:
            job[key] = value
    return job


def _gsm8k(job: dict, **fields) -> dict:
    job["tasks"]["overrides"]["gsm8k"].update(fields)
    return job


BAD_TASKS = [
    ("unknown task", lambda j: {**j, "objectives": [{"task": "gsm8k_nope", "direction": "max"}]},
     "objectives[0].task: unknown lm-eval task 'gsm8k_nope': not under lm-eval's own tasks"),
    ("unknown metric", lambda j: {**j, "objectives": [{**j["objectives"][0], "metric": "acc"}]},
     "objectives[0].metric: task 'gsm8k_search' has no metric 'acc' (it has exact_match)"),
    ("unknown filter", lambda j: {**j, "objectives": [{**j["objectives"][0], "filter": "loose"}]},
     "objectives[0].filter: task 'gsm8k_search' has no filter 'loose' (it has strict-match, flexible-extract)"),
    ("override field lm-eval has not", lambda j: _gsm8k(j, promt="x"),
     "objectives[0].task: tasks.overrides.gsm8k.promt: not a field of lm-eval's task config"),
    ("override value lm-eval rejects", lambda j: _gsm8k(j, output_type="essay"),
     "objectives[0].task: lm-eval could not build task 'gsm8k_search'"),
    ("dataset that cannot load", lambda j: _gsm8k(j, dataset_path="openai/gsm8k", dataset_name="main"),
     "objectives[0].task: lm-eval could not build task 'gsm8k_search'"),
    ("not 0/1 per item in reduced mode", lambda j: {**_gsm8k(j, metric_list=[{"metric": "bleu"}]),
                                                    "objectives": [{**j["objectives"][0], "filter": None}],
                                                    "fitness": {"mode": "reduced", "calibration": "c"}},
     "objectives[0].metric: 'bleu' of task 'gsm8k_search' is not 0/1 per item, which fitness mode 'reduced'"),
    ("public test split", lambda j: {**j, "objectives": [{"task": "gsm8k", "direction": "max"}]},
     "objectives[0].task: 'gsm8k' scores a public benchmark's test split (test)"),
    ("chat template the model has not", lambda j: {**j, "tasks": {**j["tasks"], "apply_chat_template": True}},
     "has no chat template, but tasks.apply_chat_template is true"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in BAD_TASKS], ids=[c[0] for c in BAD_TASKS])
def test_bad_tasks_are_one_line_before_ray_and_nothing_is_stored(tiny_zoo, tmp_path, edit, message,
                                                                  monkeypatch):
    ray_was_up = _no_ray(monkeypatch)
    spec = parse_job(edit(_job(tiny_zoo, tmp_path)))
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(UsageError) as info:
        run_job(spec, store)
    line = str(info.value)
    assert "\n" not in line and line.startswith("job job: ") and message in line, line
    assert store.list_jobs() == [] and ray.is_initialized() == ray_was_up


def test_bad_tasks_sections_found_while_reading_the_job_file(tiny_zoo, tmp_path):
    missing = _job(tiny_zoo, tmp_path)
    missing["tasks"]["overrides"]["gsm8k"]["dataset_kwargs"]["data_files"]["test"] = str(tmp_path / "no.jsonl")
    with pytest.raises(JobError, match=r"tasks\.overrides\.gsm8k\.dataset_kwargs\.data_files\.test: not found: "):
        parse_job(missing)
    turns = _job(tiny_zoo, tmp_path)
    turns["tasks"]["fewshot_as_multiturn"] = True
    with pytest.raises(JobError, match="fewshot_as_multiturn needs apply_chat_template: true"):
        parse_job(turns)
    two = _job(tiny_zoo, tmp_path)
    two["objectives"].append({"task": "gsm8k_search", "name": "strict", "direction": "max"})
    with pytest.raises(JobError, match="task 'gsm8k_search' is scored by two metric/filter pairs"):
        parse_job(two)


def test_relative_data_files_resolve_like_the_job_files_other_paths(tiny_zoo, tmp_path, monkeypatch):
    job = _job(tiny_zoo, tmp_path)
    files = job["tasks"]["overrides"]["gsm8k"]["dataset_kwargs"]["data_files"]
    monkeypatch.chdir(tmp_path)
    files["train"] = str((tmp_path / "data" / "gsm8k_train.jsonl").relative_to(tmp_path))
    spec = parse_job(job)
    resolved = spec.tasks.overrides["gsm8k"]["dataset_kwargs"]["data_files"]
    assert resolved["train"] == str(tmp_path / "data" / "gsm8k_train.jsonl")
    assert [k for k, _ in spec.tasks.data_files()] == [f"tasks.overrides.gsm8k.dataset_kwargs.data_files.{s}"
                                                        for s in ("train", "test")] + [
        f"tasks.overrides.{t}.dataset_kwargs.data_files.{s}" for t in ("mgsm_direct_ja", "arc_easy")
        for s in ("train", "test")]


def test_data_files_travel_with_submit_like_task_directories(tiny_zoo, tmp_path, monkeypatch):
    from evosearch.search.job import load_job
    from evosearch.search.submit import stage
    from test_job import write_job

    job_file = write_job(tmp_path, _job(tiny_zoo, tmp_path))
    into = tmp_path / "staged"
    into.mkdir()
    staged = stage(load_job(job_file), job_file, into)
    (tmp_path / "data").rename(tmp_path / "gone")  # the cluster has only the staged copy
    monkeypatch.chdir(into)
    spec = load_job(staged.name)
    for _, path in spec.tasks.data_files():
        assert path.is_file() and path.is_relative_to(into), path
    assert len(spec.tasks.data_files()) == 6


def test_zoo_generative_target_and_prompt_settings_reach_lm_eval(tiny_zoo):
    """The zoo's target answered by generation (exact match, greedy, the answer's length); the job's prompt
    settings go to lm-eval with every request."""
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo.models["math"])
    tokenizer = load_tokenizer(str(tiny_zoo.models["math"]))
    source = TaskSource(include_path=(str(tiny_zoo.include_path),), system_instruction="zz ")
    evaluator = LmEvalEvaluator(source, ["zoo_target_gen", "zoo_target"])
    assert (evaluator.scoring["zoo_target_gen"].metric, evaluator.scoring["zoo_target_gen"].filter) == (
        "exact_match", "none")
    result = evaluator.evaluate(model, tokenizer, samples={"zoo_target_gen": [0, 1, 2], "zoo_target": [0, 1, 2]})
    assert sorted(result.correct["zoo_target_gen"]) == [0, 1, 2]
    task = evaluator._task("zoo_target_gen")
    context, settings = task.instances[0].arguments
    assert context.startswith("zz ") and settings["max_gen_toks"] == 5 and settings["do_sample"] is False
    assert "*" in settings["until"]  # the sum ends where the target's string begins
    doc = task.instances[0].doc
    target = task.doc_to_target(doc)
    assert target == doc["choices"][doc["label"]].split("*")[0] and len(target) == 5 and target.isdigit()
    assert len(evaluator._task("zoo_target").instances[0].arguments[0]) > 0


def test_a_metric_that_is_not_0_or_1_scores_in_full(tiny_zoo, task_overrides):
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo.models["math"])
    tokenizer = load_tokenizer(str(tiny_zoo.models["math"]))
    bleu = {"gsm8k": {**task_overrides["gsm8k"],
                      "metric_list": [{"metric": "bleu", "aggregation": "bleu", "higher_is_better": True}]}}
    evaluator = LmEvalEvaluator(TaskSource(overrides=bleu), ["gsm8k"])
    assert evaluator.scoring["gsm8k"].metric == "bleu" and not evaluator.scoring["gsm8k"].binary
    result = evaluator.evaluate(model, tokenizer, samples={"gsm8k": [0, 1, 2]})
    assert result.accuracy["gsm8k"] >= 0.0 and sorted(result.correct["gsm8k"]) == [0, 1, 2]
    assert all(v != v for v in result.correct["gsm8k"].values())  # a corpus metric: no per-item value


def test_cli_prints_a_bad_override_as_one_line_and_exit_2(tiny_zoo, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from evosearch.cli import app
    from test_job import write_job

    # lm-eval logs a warning for this one (generation settings on a non-generative task): never printed.
    job_file = write_job(tmp_path, _gsm8k(_job(tiny_zoo, tmp_path), output_type="essay"))
    monkeypatch.chdir(tmp_path)
    ray_was_up = _no_ray(monkeypatch)
    result = CliRunner().invoke(app, ["run", str(job_file)])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: job job: objectives[0].task: ")
    assert "Got invalid output_type 'essay'" in result.stderr and ray.is_initialized() == ray_was_up
