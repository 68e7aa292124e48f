"""The offline model zoo: deterministic, cached, plain HF directories, lm-eval tasks with two splits."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from evosearch.cli import app
from evosearch.zoo import PRESETS, ZooError, ZooManifest, build_zoo
from evosearch.zoo.tasks import (BASE_LETTERS, BASE_MAX_SHIFT, GENERATIVE_TASK, JOIN, SPLITS, STREAMS, TASKS,
                                 make_eval_items, task_name, to_l1, to_l2, training_texts)
from fitness.evaluator import EvaluationError, LmEvalEvaluator


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_zoo_is_plain_hf_and_has_both_splits(tiny_zoo):
    assert set(tiny_zoo.models) == {"base", "math", "strings", "lang"}
    for path in tiny_zoo.models.values():
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
        ids = tok("12345+3=")["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == 9  # one token per character
        assert tok.decode(ids, skip_special_tokens=True) == "12345+3="
    assert set(tiny_zoo.tasks) == {task_name(t, s) for t in (*TASKS, GENERATIVE_TASK) for s in SPLITS}
    for name, path in tiny_zoo.tasks.items():
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        data = config["dataset_kwargs"]["data_files"]["test"]
        assert config["task"] == name and sum(1 for _ in open(data, encoding="utf-8")) == 500


def test_build_is_cached_and_deterministic(tiny_zoo, tmp_path):
    started = time.perf_counter()
    again = build_zoo(tiny_zoo.root, preset="tiny")
    assert time.perf_counter() - started < 1.0
    assert again.build_seconds == tiny_zoo.build_seconds  # the manifest was reused, nothing retrained

    other = build_zoo(tmp_path / "zoo", preset="tiny")
    for name in tiny_zoo.models:
        assert _digest(other.models[name] / "model.safetensors") == _digest(tiny_zoo.models[name] / "model.safetensors")

    # A cached zoo whose task files an older version wrote gets them rewritten, nothing retrained.
    stale = other.tasks[GENERATIVE_TASK]
    right = stale.read_text()
    stale.write_text(right.replace("max_gen_toks: 5", "max_gen_toks: 17"))
    assert stale.read_text() != right
    untouched = other.tasks["zoo_math"].stat().st_mtime_ns
    refreshed = build_zoo(tmp_path / "zoo", preset="tiny")
    assert refreshed.build_seconds == other.build_seconds and stale.read_text() == right
    assert other.tasks["zoo_math"].stat().st_mtime_ns == untouched


def test_specialists_are_small_deltas_from_the_base(tiny_zoo):
    from safetensors.torch import load_file

    base = load_file(tiny_zoo.models["base"] / "model.safetensors")
    for name in ("math", "strings", "lang"):
        spec = load_file(tiny_zoo.models[name] / "model.safetensors")
        assert spec.keys() == base.keys()
        moved = sum((spec[k] - base[k]).norm() ** 2 for k in base) ** 0.5
        assert 0 < moved < 0.5 * sum(v.norm() ** 2 for v in base.values()) ** 0.5


def _questions(text: str) -> list[str]:
    """The question parts (`53917+3=`, `abcde>`) of an L1 text, also inside a target item."""
    return [part[: part.index("=") + 1] if "=" in part else part[: part.index(">") + 1]
            for part in text.split(JOIN)]


def _in_base_part(question: str) -> bool:
    if "+" in question:
        return int(question[question.index("+") + 1:-1]) <= BASE_MAX_SHIFT
    return set(question[:-1]) <= set(BASE_LETTERS)


def test_eval_items_never_appear_in_training_streams():
    items = make_eval_items(seed=0, items_per_split=500)
    asked = {q for t in TASKS for s in SPLITS for d in items.docs[t][s]
             for q in _questions(to_l1(d["prompt"] + d["choices"][d["label"]]))}
    assert len(asked) == 2 * 500 * (len(TASKS) + 1)  # the target asks two questions per item
    # Most eval items need what only a specialist learns: shifts above 4 or letters after m.
    assert 0.2 < sum(_in_base_part(q) for q in asked) / len(asked) < 0.3
    stream = training_texts({name: 1 for name in STREAMS}, items, seed=3)
    base_stream = training_texts({name: 1 for name in STREAMS if name.endswith("_base")}, items, seed=3)
    seen = [q for _ in range(5000) for q in _questions(to_l1(next(stream)))]
    assert not set(seen) & asked
    assert not all(_in_base_part(q) for q in seen)
    assert all(_in_base_part(q) for _ in range(2000) for q in _questions(to_l1(next(base_stream))))
    # the cipher is a bijection between the languages
    assert to_l1(to_l2("53917+3=86240")) == "53917+3=86240" and to_l2("abc") != "abc"


def test_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(ZooError, match="no zoo manifest"):
        ZooManifest.load(tmp_path)
    (tmp_path / "zoo.json").write_text("{not json")
    with pytest.raises(ZooError, match="unreadable zoo manifest"):
        ZooManifest.load(tmp_path)
    with pytest.raises(ZooError, match="unknown zoo preset 'huge'"):
        build_zoo(tmp_path, preset="huge")
    assert set(PRESETS) >= {"full", "tiny"}


def test_evaluator_scores_subsets_and_matches_full_run(tiny_zoo):
    evaluator = LmEvalEvaluator(tiny_zoo.include_path, ["zoo_math", "zoo_lang_report"])
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo.models["math"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_zoo.models["math"])
    full = evaluator.evaluate(model, tok)
    assert set(full.correct["zoo_math"]) == set(range(500))
    assert full.accuracy["zoo_math"] == pytest.approx(sum(full.correct["zoo_math"].values()) / 500)

    ids = [3, 17, 250, 499]
    sub = evaluator.evaluate(model, tok, samples={"zoo_math": ids})
    assert set(sub.correct) == {"zoo_math"}
    assert sub.correct["zoo_math"] == {i: full.correct["zoo_math"][i] for i in ids}
    assert 0 < sub.model_seconds <= sub.seconds

    with pytest.raises(EvaluationError, match="out of range"):
        evaluator.evaluate(model, tok, samples={"zoo_math": [500]})
    with pytest.raises(EvaluationError, match="not loaded"):
        evaluator.evaluate(model, tok, tasks=["zoo_strings"])
    with pytest.raises(EvaluationError, match="unknown lm-eval task 'zoo_nope'"):
        LmEvalEvaluator(tiny_zoo.include_path, ["zoo_nope"])


def test_evaluator_tokenizes_a_prompt_once_per_tokenizer_and_scores_the_same(tiny_zoo):
    """The second candidate on the same tokenizer calls the tokenizer for no prompt, with the same scores;
    another tokenizer object (as a vocabulary union builds per candidate) is tokenized for itself."""
    evaluator = LmEvalEvaluator(tiny_zoo.include_path, ["zoo_math", "zoo_target_gen"])
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo.models["math"]).eval()
    first_tok, other_tok = (AutoTokenizer.from_pretrained(tiny_zoo.models["math"]) for _ in range(2))
    calls: list[str] = []

    def counting(tok):
        encode = tok.encode
        tok.encode = lambda text, **kw: calls.append(text) or encode(text, **kw)
        return tok

    first = evaluator.evaluate(model, counting(first_tok))
    asked = len(calls)
    assert asked >= 2 * 500  # every prompt and prompt + answer of the multiple-choice task
    again = evaluator.evaluate(model, first_tok)
    # What is left: lm-eval's stopping criteria encode the generative task's stop strings once per batch.
    assert set(calls[asked:]) <= {JOIN, "</s>"} and len(calls) - asked <= 2 * -(-500 // 64)
    assert again.correct == first.correct and again.accuracy == first.accuracy
    del calls[asked:]
    other = evaluator.evaluate(model, counting(other_tok))
    assert len(calls) == 2 * asked and other.correct == first.correct


@pytest.mark.slow
def test_zoo_report_cli_prints_every_model_and_the_merge_figures(tiny_zoo):
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["zoo", "report", str(tiny_zoo.root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert set(report["accuracy"]) >= {"base", "math", "strings", "lang"}
    assert all("zoo_target_gen" in report["accuracy"][m] for m in ("base", "math", "strings", "lang"))
    for scores in report["accuracy"].values():
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert set(report["gains"]) == {"math", "strings", "lang"}
    assert len(report["target_grid"]) == 16 and report["best_target"]["accuracy"] == max(report["target_grid"].values())
