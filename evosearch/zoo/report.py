"""Score every zoo model on every zoo task (report split) and check the bars of its bed.

The ``skills`` bed (presets ``full``, ``tiny``): three mergeability figures:

1. **specialist gain** - each specialist's accuracy on its own task minus the base's;
2. **skill-merge retention** - a task-arithmetic merge (mergekit semantics, ``normalize: false``) of
   the two skill specialists at weight 1.0 each keeps this fraction of each specialist's gain on its
   own task (also shown at 0.5 each);
3. **cross-domain target** - the best task-arithmetic merge of the math and lang specialists over a
   weight grid, against both specialists, on the target task (an L1 sum, then an L2 reversal).

Every model and the best merge are also scored on the target answered by generation (`zoo_target_gen`,
exact match), when the zoo has it (zoos built before it was added do not).

The ``interference`` bed (presets ``interference``, ``interference-tiny``): the headroom a search can find.
The default-merge grid (36 uniform task-arithmetic and TIES merges, `default_merge_grid`) against two
hand-written recipes that take each specialist's own block: a per-block PS recipe (`layered_recipe`) and
a DFS layer path (`layer_path`). Both must beat the best default merge by ≥ 15 points and the best source
by ≥ 20 points on the target.

Every merge goes through the project's merge engine (`evosearch.merge`) with a recipe.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from evosearch.merge.dfs_model import build_dfs_model
from evosearch.merge.ps import build_merged_model
from evosearch.recipe import DFSRecipe, PSRecipe
from evosearch.zoo.build import LOWER, UPPER, ZooManifest
from evosearch.zoo.tasks import GENERATIVE_TASK, TASKS, task_name
from fitness.evaluator import LmEvalEvaluator

GRID_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
SKILL_MERGE_WEIGHTS = (1.0, 0.5)
TARGET = "zoo_target"
SPECIALISTS = ("math", "strings", "lang")
# The default-merge grid: every set of two or three specialists, each weight, task arithmetic and TIES.
DEFAULT_WEIGHTS = (0.5, 0.75, 1.0)
TIES_DENSITIES = (0.5, 0.7)
# The skills bed's bars: points of gain, percent of gain kept, points over each specialist.
SKILL_GAIN = 30.0
SKILL_KEPT = 70.0
TARGET_OVER_SPECIALIST = 10.0
# The interference bed's headroom bars, in points on the target.
OVER_BEST_DEFAULT_MERGE = 15.0
OVER_BEST_SOURCE = 20.0


@dataclass(frozen=True)
class Bar:
    """One bar a bed must clear: `measured` against `need` (both in points); the margin is the difference."""

    text: str
    measured: float
    need: float

    @property
    def margin(self) -> float:
        return self.measured - self.need

    @property
    def passed(self) -> bool:
        return self.margin >= 0


@dataclass
class ZooReport:
    split: str
    accuracy: dict[str, dict[str, float]]  # model or merge label -> base task name -> accuracy (0..1)
    gains: dict[str, float]  # specialist -> own-task accuracy minus base's (figure 1)
    retention: dict[str, dict[str, float]]  # "w=1.0" -> specialist -> kept fraction of its gain (figure 2)
    target_grid: dict[str, float] = field(default_factory=dict)  # merge label -> target accuracy
    best_target: dict[str, float | str] = field(default_factory=dict)  # figure 3, or the best default merge
    bed: str = "skills"
    bars: list[Bar] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        out["bars"] = [{**asdict(b), "margin": b.margin, "passed": b.passed} for b in self.bars]
        return out


def task_arithmetic(base: str, weights: dict[str, float]) -> PSRecipe:
    return PSRecipe(merge_method="task_arithmetic", base_model=base, parameters={"normalize": False},
                    models=[{"model": m, "parameters": {"weight": w}} for m, w in weights.items()])


def default_merge_grid(paths: dict[str, str]) -> list[tuple[str, PSRecipe]]:
    """(label, recipe): uniform task arithmetic and TIES (`normalize: false`) onto `paths["base"]` over every
    set of two or three of the specialists, each weight in DEFAULT_WEIGHTS, TIES at each of TIES_DENSITIES:
    36 merges, what a user would try by hand before any search."""
    grid = []
    subsets = [s for r in (2, 3) for s in itertools.combinations(SPECIALISTS, r)]
    for subset, w in itertools.product(subsets, DEFAULT_WEIGHTS):
        name = "+".join(subset)
        grid.append((f"TA {name} w={w}", task_arithmetic(paths["base"], {paths[m]: w for m in subset})))
        for d in TIES_DENSITIES:
            grid.append((f"TIES {name} w={w} d={d}", PSRecipe(
                merge_method="ties", base_model=paths["base"], parameters={"normalize": False},
                models=[{"model": paths[m], "parameters": {"weight": w, "density": d}} for m in subset])))
    return grid


def _block_weight(block: tuple[int, ...], num_layers: int, rest: float) -> list[dict]:
    """A weight of 1 on the decoder layers of `block`, 0 on the other layers, `rest` on the tensors outside
    the layer stack (embeddings, final norm, head)."""
    return [*({"filter": f"layers.{i}.", "value": 1.0 if i in block else 0.0} for i in range(num_layers)),
            {"value": rest}]


def layered_recipe(paths: dict[str, str], num_layers: int) -> PSRecipe:
    """The hand-written per-block recipe of the interference bed: task arithmetic onto the base taking lang's
    lower block and embeddings (weight 1) and math's upper block (weight 1), each other block at weight 0,
    i.e. each specialist's own skill block and neither one's habit block."""
    return PSRecipe(merge_method="task_arithmetic", base_model=paths["base"], parameters={"normalize": False},
                    models=[{"model": paths["lang"], "parameters": {"weight": _block_weight(LOWER, num_layers, 1.0)}},
                            {"model": paths["math"], "parameters": {"weight": _block_weight(UPPER, num_layers, 0.0)}}])


def layer_path(paths: dict[str, str], num_layers: int) -> DFSRecipe:
    """The hand-written DFS path of the interference bed: sources [lang, math], lang's lower layers then
    math's upper ones (slots LOWER and L + UPPER), lang's embeddings and head, every scale 1."""
    on = {*LOWER, *(num_layers + i for i in UPPER)}
    return DFSRecipe(sources=[paths["lang"], paths["math"]], num_layers=num_layers,
                     indicator=[j in on for j in range(2 * num_layers)], scales=[[1.0, 1.0], [1.0, 1.0]],
                     embed_source=0)


def anchored_layer_path(paths: dict[str, str], num_layers: int) -> DFSRecipe:
    """`layer_path` as Sakana's anchored DFS space can write it (sources [math, lang], two repeats, the path
    starting at math's first layer and ending at its last): math 0, lang's lower layers, math's upper ones,
    lang's embeddings and head. Shown, not barred: it says what a DFS search anchored this way can reach."""
    n = num_layers
    on = {0, *(n + i for i in LOWER), *(2 * n + i for i in UPPER)}
    return DFSRecipe(sources=[paths["math"], paths["lang"]], num_layers=n, repeats=2,
                     indicator=[j in on for j in range(4 * n)], scales=[[1.0, 1.0], [1.0, 1.0]], embed_source=1)


class _Zoo:
    """The zoo's models resident in memory, and one evaluator over the chosen split."""

    def __init__(self, manifest: ZooManifest, split: str, batch_size: int):
        self.manifest, self.split = manifest, split
        self.paths = {name: str(path) for name, path in manifest.models.items()}
        self.tensors = {p: load_file(str(Path(p) / "model.safetensors")) for p in self.paths.values()}
        self.config = AutoConfig.from_pretrained(self.paths["base"])
        self.tokenizer = AutoTokenizer.from_pretrained(self.paths["base"])
        self.tasks = scored_tasks(manifest)
        self.evaluator = LmEvalEvaluator(manifest.include_path, [task_name(t, split) for t in self.tasks],
                                         batch_size=batch_size)

    def score(self, model: torch.nn.Module, tasks: list[str]) -> dict[str, float]:
        result = self.evaluator.evaluate(model, self.tokenizer, tasks=[task_name(t, self.split) for t in tasks])
        return {t: result.accuracy[task_name(t, self.split)] for t in tasks}

    def load(self, name: str) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(self.paths[name]).eval()

    def merge(self, weights: dict[str, float]) -> torch.nn.Module:
        return self.build(task_arithmetic(self.paths["base"], {self.paths[m]: w for m, w in weights.items()}))

    def build(self, recipe: Union[PSRecipe, DFSRecipe]) -> torch.nn.Module:
        if isinstance(recipe, DFSRecipe):
            by_path = {path: name for name, path in self.paths.items()}
            return build_dfs_model(recipe, [self.load(by_path[p]) for p in recipe.sources])
        return build_merged_model(recipe, self.tensors, config=self.config)


def scored_tasks(manifest: ZooManifest) -> list[str]:
    """The zoo's tasks by base name, the generative target last when the zoo has it."""
    return list(TASKS) + ([GENERATIVE_TASK] if GENERATIVE_TASK in manifest.tasks else [])


def _kept(merged: float, base: float, specialist: float) -> float:
    gain = specialist - base
    return (merged - base) / gain if gain > 0 else float("nan")


def zoo_report(manifest: ZooManifest, split: str = "report", batch_size: int = 64) -> ZooReport:
    zoo = _Zoo(manifest, split, batch_size)
    all_tasks = zoo.tasks
    acc = {name: zoo.score(zoo.load(name), all_tasks) for name in manifest.models}
    base = acc["base"]
    own = manifest.own_tasks
    gains = {s: acc[s][t] - base[t] for s, t in own.items()}
    if manifest.bed == "interference":
        return _interference_report(zoo, acc, gains)

    retention: dict[str, dict[str, float]] = {}
    skills = ("math", "strings")
    for w in SKILL_MERGE_WEIGHTS:
        label = f"math+strings TA w={w}"
        acc[label] = zoo.score(zoo.merge({s: w for s in skills}), [own[s] for s in skills])
        retention[f"w={w}"] = {s: _kept(acc[label][own[s]], base[own[s]], acc[s][own[s]]) for s in skills}

    grid = {}
    for wm, wl in itertools.product(GRID_WEIGHTS, repeat=2):
        grid[f"{wm},{wl}"] = zoo.score(zoo.merge({"math": wm, "lang": wl}), [TARGET])[TARGET]
    best_w, best = max(grid.items(), key=lambda kv: kv[1])
    best_weights = dict(zip(("math", "lang"), map(float, best_w.split(","))))
    acc[f"math+lang TA w={best_w} (best of grid)"] = {
        TARGET: best, **zoo.score(zoo.merge(best_weights), [t for t in all_tasks if t == GENERATIVE_TASK])}
    best_target = {"weights (math,lang)": best_w, "accuracy": best,
                   "minus_math": best - acc["math"][TARGET], "minus_lang": best - acc["lang"][TARGET]}
    bars = [Bar(f"{s} beats the base on its own task by ≥ {SKILL_GAIN:g} points", 100 * g, SKILL_GAIN)
            for s, g in gains.items()]
    bars += [Bar(f"math+strings task arithmetic w=1.0 keeps ≥ {SKILL_KEPT:g}% of {s}'s gain", 100 * k, SKILL_KEPT)
             for s, k in retention["w=1.0"].items()]
    bars += [Bar(f"the best math+lang grid merge beats {s} on the target by ≥ {TARGET_OVER_SPECIALIST:g} points",
                 100 * best_target[f"minus_{s}"], TARGET_OVER_SPECIALIST) for s in ("math", "lang")]
    return ZooReport(split=split, accuracy=acc, gains=gains, retention=retention, target_grid=grid,
                     best_target=best_target, bars=bars)


def _interference_report(zoo: _Zoo, acc: dict[str, dict[str, float]], gains: dict[str, float]) -> ZooReport:
    all_tasks = list(TASKS)
    recipes = dict(default_merge_grid(zoo.paths))
    grid = {label: zoo.score(zoo.build(recipe), [TARGET])[TARGET] for label, recipe in recipes.items()}
    best_label, best = max(grid.items(), key=lambda kv: kv[1])  # max keeps the first of equal scores
    acc[f"best default merge: {best_label}"] = zoo.score(zoo.build(recipes[best_label]), all_tasks)
    num_layers = zoo.config.num_hidden_layers
    hand = {"hand per-block PS: lang lower + math upper": layered_recipe(zoo.paths, num_layers),
            "hand DFS path: lang 0,1 -> math 2,3": layer_path(zoo.paths, num_layers)}
    best_source_name, best_source = max(((m, acc[m][TARGET]) for m in zoo.paths), key=lambda kv: kv[1])
    bars = []
    for label, recipe in hand.items():
        acc[label] = zoo.score(zoo.build(recipe), all_tasks)
        gained = 100 * acc[label][TARGET]
        kind = label.split(":")[0]
        bars.append(Bar(f"{kind} beats the best default merge ({best_label}) on the target by ≥ "
                        f"{OVER_BEST_DEFAULT_MERGE:g} points", gained - 100 * best, OVER_BEST_DEFAULT_MERGE))
        bars.append(Bar(f"{kind} beats the best source ({best_source_name}) on the target by ≥ "
                        f"{OVER_BEST_SOURCE:g} points", gained - 100 * best_source, OVER_BEST_SOURCE))
    anchored = "anchored DFS path (shown, no bar): math 0 -> lang 0,1 -> math 2,3"
    acc[anchored] = zoo.score(zoo.build(anchored_layer_path(zoo.paths, num_layers)), all_tasks)
    return ZooReport(split=zoo.split, accuracy=acc, gains=gains, retention={}, target_grid=grid,
                     best_target={"merge": best_label, "accuracy": best, "best_source": best_source_name,
                                  "best_source_accuracy": best_source},
                     bed="interference", bars=bars)
