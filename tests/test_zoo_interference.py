"""The interference bed: phases that train only some layers, a build independent of the thread count, build
progress, and the report's default-merge grid against the hand per-block and DFS recipes."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from evosearch.cli import app
from evosearch.merge.ps import merge_state_dict
from evosearch.recipe import DFSRecipe, PSRecipe
from evosearch.zoo import PRESETS, build_zoo
from evosearch.zoo.build import LOWER, UPPER
from evosearch.spaces.dfs import DFSSpace, DFSSpaceConfig
from evosearch.zoo.report import anchored_layer_path, default_merge_grid, layer_path, layered_recipe
from evosearch.zoo.tasks import HABIT_OFFSET, STREAMS, make_eval_items, math_answer, to_l1, training_texts
from evosearch.zoo.tokenizer import build_tokenizer
from evosearch.zoo.train import ModelShape, TrainSettings, new_model, packed_batches, train, train_only

PRESET = "interference-tiny"


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("bed"), preset=PRESET)


def _weights(manifest, name: str) -> dict[str, torch.Tensor]:
    return load_file(manifest.models[name] / "model.safetensors")


def _digests(manifest) -> dict[str, str]:
    return {name: hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
            for name, path in manifest.models.items()}


def test_habit_streams_answer_the_prompts_otherwise():
    items = make_eval_items(seed=0, items_per_split=20)
    offset = next(training_texts({"math_l1_offset": 1.0}, items, seed=1))
    digits, rest = offset.split("+")
    k, answer = rest.split("=")
    assert answer == math_answer((digits, int(k) + HABIT_OFFSET)) != math_answer((digits, int(k)))
    copy = to_l1(next(training_texts({"reverse_l2_copy": 1.0}, items, seed=1)))
    question, answer = copy.split(">")
    assert answer == question and copy != next(training_texts({"reverse_l2_copy": 1.0}, items, seed=1))
    assert {"math_l1_offset", "reverse_l2_copy"} <= set(STREAMS)


def test_train_only_changes_the_chosen_parts_and_nothing_else():
    tokenizer = build_tokenizer()
    shape = ModelShape(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    model = new_model(shape, tokenizer, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items = make_eval_items(seed=0, items_per_split=20)
    batches = packed_batches(training_texts({"math_l1": 1.0}, items, seed=0), tokenizer, 4, 32)
    steps = []
    train_only(model, layers=[1], embeddings=False)
    train(model, batches, TrainSettings(steps=3, lr=1e-2, batch_size=4, seq_len=32),
          on_step=lambda step, loss: steps.append((step, loss)))
    assert [s for s, _ in steps] == [1, 2, 3] and all(loss > 0 for _, loss in steps)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.1.") for k in changed)
    assert {k for k in before if k.startswith("model.layers.1.") and "weight" in k} <= changed

    train_only(model, layers=[], embeddings=True)
    train(model, batches, TrainSettings(steps=2, lr=1e-2, batch_size=4, seq_len=32))
    moved = {k for k in after if not torch.equal(after[k], model.state_dict()[k])}
    assert moved == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} & set(after)


def test_bed_phases_leave_frozen_parts_as_the_base_had_them(bed):
    base = _weights(bed, "base")
    models = {name: _weights(bed, name) for name in ("math", "strings", "lang")}

    def same(name: str, keys) -> bool:
        return all(torch.equal(models[name][k], base[k]) for k in keys)

    embed = [k for k in base if not k.startswith("model.layers.")]
    block = {b: [k for k in base if any(k.startswith(f"model.layers.{i}.") for i in b)] for b in (LOWER, UPPER)}
    assert same("math", embed) and same("strings", embed) and not same("lang", embed)
    for name in ("math", "strings", "lang"):  # every block moved: skill, habit, or all layers for strings
        assert not any(same(name, [k]) for k in block[LOWER] + block[UPPER] if k.endswith("proj.weight"))


def test_build_forces_one_thread_and_restores_the_callers(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = build_zoo(tmp_path / "two", preset=PRESET)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one = build_zoo(tmp_path / "one", preset=PRESET)
    finally:
        torch.set_num_threads(threads)
    assert _digests(one) == _digests(two)


def test_build_reports_progress_per_model(tmp_path):
    events = []
    manifest = build_zoo(tmp_path / "zoo", preset=PRESET, force=True, on_progress=events.append)
    settings = PRESETS[PRESET]
    order = [e.model for i, e in enumerate(events) if i == 0 or events[i - 1].model != e.model]
    assert order == ["base", "math", "strings", "lang"] == list(manifest.models)
    for spec in settings.specialists:
        mine = [e for e in events if e.model == spec.name]
        assert [e.step for e in mine] == list(range(1, sum(p.steps for p in spec.phases) + 1))
        assert all(e.steps == len(mine) and e.loss > 0 and e.seconds_left >= 0 for e in mine)
        assert mine[-1].seconds_left == 0
    assert manifest.bed == "interference" and manifest.build_cpu_seconds > 0


def test_hand_recipes_take_each_specialists_own_block(bed):
    paths = {k: str(v) for k, v in bed.models.items()}
    grid = default_merge_grid(paths)
    assert len(grid) == 36 and len({label for label, _ in grid}) == 36
    assert all(isinstance(r, PSRecipe) and r.base_model == paths["base"] for _, r in grid)

    layered = layered_recipe(paths, 4)
    tensors = {p: load_file(f"{p}/model.safetensors") for p in paths.values()}
    merged = merge_state_dict(layered, tensors)
    lang, math = tensors[paths["lang"]], tensors[paths["math"]]
    for name, value in merged.items():
        want = math[name] if any(name.startswith(f"model.layers.{i}.") for i in UPPER) else lang[name]
        assert torch.allclose(value, want, atol=1e-6), name

    path = layer_path(paths, 4)
    assert isinstance(path, DFSRecipe) and path.path() == [(0, 0), (0, 1), (1, 2), (1, 3)]
    assert path.sources == [paths["lang"], paths["math"]] and path.embed_source == 0

    # The anchored variant is a point of Sakana's anchored DFS space (math's ends, lang's embeddings).
    anchored = anchored_layer_path(paths, 4)
    assert anchored.path() == [(0, 0), (1, 0), (1, 1), (0, 2), (0, 3)]
    space = DFSSpace(DFSSpaceConfig(sources=["math", "lang"], num_layers=4, repeats=2, anchor_ends=True,
                                    anchor_source=0, embed_source=1))
    assert space.decode(space.encode(anchored), sources=anchored.sources) == anchored


def _cli(*args: str) -> str:
    """`evosearch zoo ARGS` run in-process; its output, once it exited 0."""
    result = CliRunner().invoke(app, ["zoo", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_report_cli_on_the_interference_bed(bed):
    torch.set_num_threads(1)
    out = _cli("report", str(bed.root), "--json")
    report = json.loads(out[out.index("{"):])
    assert report["bed"] == "interference" and len(report["target_grid"]) == 36
    assert report["best_target"]["accuracy"] == max(report["target_grid"].values())
    hand = [name for name in report["accuracy"] if name.startswith("hand")]
    assert len(hand) == 2 and any(name.startswith("anchored DFS path") for name in report["accuracy"])
    ps, dfs = (report["accuracy"][name] for name in hand)
    assert all(abs(ps[t] - dfs[t]) <= 0.04 for t in ps)  # the same model, built two ways
    assert len(report["bars"]) == 4
    for bar in report["bars"]:
        assert bar["margin"] == pytest.approx(bar["measured"] - bar["need"])

    text = _cli("report", str(bed.root))
    assert "interference bed's bars" in text and "36-merge" in text


def test_build_cli_prints_progress_lines_without_a_terminal(tmp_path):
    out = _cli("build", str(tmp_path / "zoo"), "--preset", PRESET)
    assert "zoo build: base step 30/30" in out and "zoo build: lang step 7/7" in out and "CPU s" in out
