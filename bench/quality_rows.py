"""The rows of the search-quality benchmark that are ours: the bed, its baselines (cached per bed build),
and the searches, each a real job through the driver (`run_job`: local Ray workers, a SQLite store).

A row picks its model on the SEARCH split of the bed's target; the pick is then scored on the REPORT split.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

GRID_WEIGHTS = (0.5, 0.75, 1.0)
TIES_DENSITIES = (0.5, 0.7)
# Bump when the baselines (sources, grid, what is scored) change, so a cached table is never reused wrongly.
BASELINE_VERSION = 2
CACHE_NAME = "search_quality_baselines.json"


@dataclass(frozen=True)
class Bed:
    """The zoo every row runs on and the tasks it is judged by."""

    zoo: object  # evosearch.zoo.ZooManifest
    target: str  # search split of the target task; `<target>_report` is its report split
    keep: str  # the specialist task NSGA-II keeps as its second objective
    specialists: tuple[str, ...]
    num_layers: int

    @property
    def target_report(self) -> str:
        return f"{self.target}_report"

    @property
    def keep_report(self) -> str:
        return f"{self.keep}_report"

    @property
    def tasks(self) -> list[str]:
        return [self.target, self.target_report, self.keep, self.keep_report]

    @property
    def baseline_tasks(self) -> list[str]:
        """What a baseline is scored on: the target's two splits (its row) and the kept task's report split
        (the grid's points for the hypervolume); the kept task's search split is never read."""
        return [self.target, self.target_report, self.keep_report]

    def cache_key(self, limit: Optional[int]) -> str:
        return f"v{BASELINE_VERSION}:{self.zoo.settings_hash}:{self.target}:{self.keep}:limit={limit}"

    @cached_property
    def weights_digest(self) -> str:
        """Read once per run: the results are written after every row and seed."""
        return weights_digest(self.zoo)


def weights_digest(zoo) -> str:
    """sha256 over every model's safetensors bytes. One settings hash builds different weights on CPUs with
    different SIMD kernels (the interference bed scores its sources 8-26 points apart on an AVX2 and an
    AVX-512 machine), so rows are comparable only on one digest."""
    h = hashlib.sha256()
    for name in sorted(zoo.models):
        for f in sorted(Path(zoo.models[name]).glob("*.safetensors")):
            h.update(f"{name}/{f.name}".encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def open_bed(zoo, target: str, keep_specialist: str) -> Bed:
    specialists = tuple(name for name in zoo.models if name != "base")
    if keep_specialist not in zoo.own_tasks:
        raise SystemExit(f"--keep {keep_specialist!r} is not a specialist of {zoo.root} ({', '.join(specialists)})")
    layers = json.loads((Path(zoo.models["base"]) / "config.json").read_text())["num_hidden_layers"]
    return Bed(zoo=zoo, target=target, keep=zoo.own_tasks[keep_specialist], specialists=specialists,
               num_layers=layers)


@dataclass
class RowRun:
    """One row on one seed (or the one deterministic run of a baseline)."""

    row: str
    seed: Optional[int]
    picked: str  # what the row chose (a recipe summary or a model name)
    search: float  # the pick's search-split accuracy on the target
    report: float  # ... and its report-split accuracy
    candidates: int  # candidates charged to the budget (identical recipes served from the cache included)
    evaluated: int  # of which actually evaluated
    seconds: float  # wall time of the row's run (a cached baseline: of the run that filled the cache)
    best_so_far: list[float] = field(default_factory=list)  # search split, after each candidate
    extra: dict = field(default_factory=dict)  # row-specific: hypervolumes, shims, why it stopped

    @property
    def gap(self) -> float:
        return self.search - self.report

    @property
    def seconds_per_candidate(self) -> Optional[float]:
        return self.seconds / self.candidates if self.candidates else None

    def to_json(self) -> dict:
        return asdict(self) | {"gap": self.gap, "seconds_per_candidate": self.seconds_per_candidate}


# --- baselines: the sources and the default merge grid, scored in this process -----------------------
class BedScorer:
    """The bed's tensors resident and one evaluator over the target's and the kept task's splits."""

    def __init__(self, bed: Bed, limit: Optional[int]):
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoTokenizer

        from fitness.evaluator import LmEvalEvaluator

        self.bed = bed
        self.paths = {name: str(path) for name, path in bed.zoo.models.items()}
        self.tensors = {p: load_file(str(Path(p) / "model.safetensors")) for p in self.paths.values()}
        self.config = AutoConfig.from_pretrained(self.paths["base"])
        self.tokenizer = AutoTokenizer.from_pretrained(self.paths["base"])
        self.evaluator = LmEvalEvaluator(bed.zoo.include_path, bed.tasks)
        self.limit = limit

    def score(self, model, task: str) -> float:
        samples = None if self.limit is None else {task: list(range(self.limit))}
        return self.evaluator.evaluate(model, self.tokenizer, tasks=[task], samples=samples).accuracy[task]

    def source(self, name: str):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.paths[name]).eval()

    def merge(self, recipe):
        from evosearch.merge.ps import build_merged_model

        return build_merged_model(recipe, self.tensors, config=self.config)

    def grid_recipe(self, method: str, weights: dict[str, float], density: float):
        from evosearch.recipe import PSRecipe

        return PSRecipe(merge_method=method, base_model=self.paths["base"], parameters={"normalize": False},
                        models=[{"model": self.paths[m], "parameters": {"weight": w, "density": density}}
                                for m, w in weights.items()])

    def build(self, recipe):
        """A PS recipe from the resident tensors; a DFS recipe over freshly loaded sources."""
        from evosearch.merge.dfs_model import build_dfs_model
        from evosearch.recipe import DFSRecipe

        if isinstance(recipe, DFSRecipe):
            by_path = {path: name for name, path in self.paths.items()}
            return build_dfs_model(recipe, [self.source(by_path[p]) for p in recipe.sources])
        return self.merge(recipe)

    def all_splits(self, model) -> dict[str, float]:
        return {task: self.score(model, task) for task in self.bed.baseline_tasks}


def default_merge_grid(specialists) -> list[tuple[str, str, dict[str, float], float]]:
    """(label, method, weights, density): uniform task arithmetic and TIES over every set of two or three
    specialists, each weight in GRID_WEIGHTS, TIES at each of TIES_DENSITIES (36 merges for 3)."""
    grid = []
    subsets = [s for r in (2, 3) for s in itertools.combinations(specialists, r)]
    for subset, w in itertools.product(subsets, GRID_WEIGHTS):
        weights = {m: w for m in subset}
        grid.append((f"TA {'+'.join(subset)} w={w}", "task_arithmetic", weights, 1.0))
        for d in TIES_DENSITIES:
            grid.append((f"TIES {'+'.join(subset)} w={w} d={d}", "ties", weights, d))
    return grid


def baseline_table(bed: Bed, scorer_factory: Callable[[], BedScorer], limit: Optional[int], log) -> dict:
    """Every source's and every grid merge's accuracy on all four splits, read from the cache in the zoo
    directory when this bed build (its settings hash), target, kept task and limit were scored before."""
    cache_path = Path(bed.zoo.root) / CACHE_NAME
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    key = bed.cache_key(limit)
    if key in cache:
        log(f"baselines: cached ({cache_path}, {key})")
        return cache[key]
    scorer = scorer_factory()
    table: dict = {"sources": {}, "grid": {}, "seconds": {}}
    started = time.monotonic()
    for name in ("base", *bed.specialists):
        table["sources"][name] = scorer.all_splits(scorer.source(name))
        log(f"baselines: source {name} {_fmt(table['sources'][name], bed)}")
    table["seconds"]["sources"] = time.monotonic() - started
    started = time.monotonic()
    grid = default_merge_grid(bed.specialists)
    for i, (label, method, weights, density) in enumerate(grid, 1):
        table["grid"][label] = scorer.all_splits(scorer.merge(scorer.grid_recipe(method, weights, density)))
        log(f"baselines: grid {i}/{len(grid)} {label} {_fmt(table['grid'][label], bed)}")
    table["seconds"]["grid"] = time.monotonic() - started
    cache[key] = table
    cache_path.write_text(json.dumps(cache, indent=2))
    return table


def _fmt(scores: dict[str, float], bed: Bed) -> str:
    return (f"target {100 * scores[bed.target]:.1f}/{100 * scores[bed.target_report]:.1f} (search/report), "
            f"{bed.keep_report} {100 * scores[bed.keep_report]:.1f}")


def baseline_row(row: str, bed: Bed, entries: dict[str, dict], seconds: float) -> RowRun:
    """Pick the entry with the best target search score (the first of equal ones), report its report score."""
    curve, best = [], float("-inf")
    for scores in entries.values():
        best = max(best, scores[bed.target])
        curve.append(best)
    label = max(entries, key=lambda k: entries[k][bed.target])
    return RowRun(row=row, seed=None, picked=label, search=entries[label][bed.target],
                  report=entries[label][bed.target_report], candidates=len(entries), evaluated=len(entries),
                  seconds=seconds, best_so_far=curve)


def hand_rows(bed: Bed, scorer: BedScorer, log) -> list[RowRun]:
    """The interference bed's hand-written recipes (evosearch.zoo.report), scored like every pick: not
    searches, but points of the PS space (`hand_ps`: lang's lower block and embeddings, math's upper block)
    and of the anchored DFS space (`hand_dfs`) that say what each space holds."""
    from evosearch.zoo.report import anchored_layer_path, layered_recipe

    rows = []
    for row, recipe in (("hand_ps", layered_recipe(scorer.paths, bed.num_layers)),
                        ("hand_dfs", anchored_layer_path(scorer.paths, bed.num_layers))):
        started = time.monotonic()
        model = scorer.build(recipe)
        search, report = scorer.score(model, bed.target), scorer.score(model, bed.target_report)
        rows.append(RowRun(row=row, seed=None, picked=recipe_summary(recipe.model_dump(mode="json")),
                           search=search, report=report, candidates=1, evaluated=1,
                           seconds=time.monotonic() - started, best_so_far=[search]))
        log(f"{row}: {rows[-1].picked} search {100 * search:.1f} report {100 * report:.1f}")
    return rows


# --- search rows: jobs through the driver ---------------------------------------------------------------
@dataclass(frozen=True)
class SearchRow:
    optimizer: str  # cmaes | random | nsga2
    space: str  # ps | dfs | ps+dfs
    two_objectives: bool = False
    anchored: bool = True  # DFS: Sakana's path from the anchor's first layer to its last
    random_twin: str = "random"  # the random-search row in the same space, the baseline it must beat


SEARCH_ROWS: dict[str, SearchRow] = {
    "random": SearchRow("random", "ps"),
    "random_dfs": SearchRow("random", "dfs"),
    "random_dfs_unanchored": SearchRow("random", "dfs", anchored=False),
    "random_ps_dfs": SearchRow("random", "ps+dfs"),
    "cmaes_ps": SearchRow("cmaes", "ps"),
    "cmaes_dfs": SearchRow("cmaes", "dfs", random_twin="random_dfs"),
    "cmaes_dfs_unanchored": SearchRow("cmaes", "dfs", anchored=False, random_twin="random_dfs_unanchored"),
    "ps_dfs": SearchRow("cmaes", "ps+dfs", random_twin="random_ps_dfs"),
    "nsga2": SearchRow("nsga2", "ps", two_objectives=True),
}
EVOLVED_ROWS = tuple(name for name, row in SEARCH_ROWS.items() if row.optimizer != "random")


@dataclass(frozen=True)
class SearchSettings:
    budget: int
    popsize: int
    workers: int
    limit: Optional[int]
    sigma0: float
    layer_groups: int
    weight_high: float
    dfs_sources: tuple[str, ...]  # DFS sources (zoo model names); the first is the anchor
    psdfs_sources: tuple[str, ...]  # the DFS part of PS+DFS: "@ps" and zoo model names; the first anchors
    dfs_repeats: int
    dfs_embed: Optional[str] = None  # the source whose embeddings and head a DFS path uses (default: the anchor)
    start: str = "centre"  # where CMA-ES and NSGA-II begin on PS: the box centre, or the uniform merge


def ps_space(bed: Bed, s: SearchSettings) -> dict:
    """Task arithmetic of the specialists onto the base, one weight per layer block and one for the rest
    (embeddings, norms, head)."""
    return {"kind": "ps", "sources": list(bed.specialists), "base_model": "base", "methods": "task_arithmetic",
            "num_layers": bed.num_layers, "layer_groups": s.layer_groups,
            "bounds": {"weight": [0.0, s.weight_high]}, "fixed_per_model": {"density": 1.0},
            "parameters": {"normalize": False}}


def dfs_space(bed: Bed, s: SearchSettings, sources, anchored: bool = True) -> dict:
    """Sakana's setting: the path starts at the first source's first layer and ends at its last, layers
    repeated, inter-model scales in [1, 2]. Unanchored, any slot may start or end the path."""
    embed = list(sources).index(s.dfs_embed) if s.dfs_embed in sources else 0
    return {"kind": "dfs", "sources": list(sources), "num_layers": bed.num_layers, "repeats": s.dfs_repeats,
            "scale_range": [1.0, 2.0], "anchor_ends": anchored, "anchor_source": 0, "embed_source": embed}


def space_config(row: SearchRow, bed: Bed, s: SearchSettings) -> dict:
    if row.space == "ps":
        return ps_space(bed, s)
    if row.space == "dfs":
        return dfs_space(bed, s, s.dfs_sources, row.anchored)
    return {"kind": "ps+dfs", "ps": ps_space(bed, s), "dfs": dfs_space(bed, s, s.psdfs_sources, row.anchored)}


def uniform_merge(bed: Bed) -> dict:
    """Task arithmetic of every specialist at weight 1/M: the merge mergekit-evolve's genome starts from."""
    weight = round(1.0 / len(bed.specialists), 6)
    return {"merge_method": "task_arithmetic", "base_model": "base", "parameters": {"normalize": False},
            "models": [{"model": m, "parameters": {"weight": weight}} for m in bed.specialists]}


def search_job(row: str, bed: Bed, s: SearchSettings, seed: int, out_dir: Path) -> dict:
    spec = SEARCH_ROWS[row]
    # Random search stays uniform in the box: it is the baseline a guided search must beat.
    start = (s.start == "uniform" and spec.space == "ps" and spec.optimizer != "random")
    optimizer = {"cmaes": {"name": "cmaes", "popsize": s.popsize, "sigma0": s.sigma0},
                 "random": {"name": "random", "pop_size": s.popsize},
                 "nsga2": {"name": "nsga2", "pop_size": s.popsize}}[spec.optimizer]
    objectives = [{"task": bed.target, "direction": "max", "report_task": bed.target_report}]
    if spec.two_objectives:
        objectives.append({"task": bed.keep, "direction": "max", "report_task": bed.keep_report})
    return {
        "name": f"{row}-s{seed}".replace("_", "-"), "seed": seed, "output_dir": str(out_dir / f"{row}-s{seed}"),
        "sources": {k: str(v) for k, v in bed.zoo.models.items()}, "base_model": "base",
        "search_space": space_config(spec, bed, s), "optimizer": optimizer,
        "generations": -(-s.budget // s.popsize), "budget": s.budget, "objectives": objectives,
        "fitness": {"mode": "full", **({"limit": s.limit} if s.limit else {})},
        "tasks": {"include_path": str(bed.zoo.include_path)},
        "workers": {"count": s.workers, "num_cpus": 1}, "report": {"when": "end"},
        **({"start_from": uniform_merge(bed)} if start else {}),
    }


def _score(cand, task: str, split: str) -> Optional[float]:
    for sc in cand.scores:
        if sc.split == split and sc.objective == task:
            return sc.full if sc.full is not None else sc.estimated
    return None


def recipe_summary(recipe: dict) -> str:
    """PS: `model=w/w/..` per source; DFS: the path as `model.layer` hops (a PS source shown as `@ps`)."""
    if recipe.get("kind") == "dfs" or "indicator" in recipe:
        names = [s if isinstance(s, str) else "@ps" for s in recipe["sources"]]
        names = [Path(s).name if s != "@ps" else s for s in names]
        m, n = len(names), recipe["num_layers"]
        path = [f"{names[(j // n) % m]}.{j % n}" for j, on in enumerate(recipe["indicator"]) if on]
        ps = [s for s in recipe["sources"] if not isinstance(s, str)]
        return " ".join(path) + (f" [@ps {recipe_summary(ps[0])}]" if ps else "")
    if recipe.get("slices"):  # mergekit's slices: form (a peer's layer blocks)
        return "; ".join(f"L{piece['sources'][0]['layer_range'][0]}-{piece['sources'][0]['layer_range'][1] - 1}: "
                         + _weights(piece["sources"]) for piece in recipe["slices"])
    return _weights(recipe["models"])


def _weights(models: list[dict]) -> str:
    parts = []
    for m in models:
        w = m["parameters"].get("weight", 1.0)
        values = [c["value"] if isinstance(c, dict) else c for c in w] if isinstance(w, list) else [w]
        parts.append(f"{Path(m['model']).name}=" + "/".join(f"{v:.2f}" for v in values))
    return " ".join(parts)


def progress_printer(label: str, budget: int, target: str, log) -> Callable:
    """A driver `on_event` that prints one line per finished candidate and per phase change."""
    seen = {"done": -1, "phase": None}

    def on_event(ev) -> None:
        if ev.done == seen["done"] and ev.phase == seen["phase"]:
            return
        seen["done"], seen["phase"] = ev.done, ev.phase
        best = ev.best.get(target)
        best_text = f"{100 * best:.1f}" if best is not None else "-"
        log(f"[{label}] {ev.phase} gen {ev.generation + 1}/{ev.max_generations} candidates {ev.done}/{budget} "
            f"(evaluated {ev.evaluated}, cached {ev.cached}, failed {ev.failed}) best {target} {best_text} "
            f"{ev.elapsed_seconds:.0f} s")

    return on_event


def start_pool(bed: Bed, s: SearchSettings, out_dir: Path):
    """One set of Ray workers for every search row (same sources, all four splits loaded): a job's own pool
    would start its actors again, 35-60 s each time on a loaded 2-core machine. Returns (pool, seconds)."""
    from evosearch.search.job import parse_job
    from evosearch.search.ray_session import ensure_ray
    from workers.candidate import candidate_pool

    spec = parse_job(search_job("nsga2", bed, s, 0, out_dir), where="worker pool")
    started = time.monotonic()
    ensure_ray(num_cpus=max(s.workers, 1))
    pool = candidate_pool(spec.workers, spec.source_paths, spec.tasks.include_path, bed.tasks).start()
    return pool, time.monotonic() - started


def run_search(row: str, bed: Bed, s: SearchSettings, seed: int, store, out_dir: Path, log, pool=None) -> RowRun:
    from evosearch.search.driver import run_job
    from evosearch.search.job import parse_job

    spec = parse_job(search_job(row, bed, s, seed, out_dir), where=f"{row}-s{seed}")
    summary = run_job(spec, store, on_event=progress_printer(f"{row} s{seed}", s.budget, bed.target, log), pool=pool)
    cands = sorted(store.candidates(summary.job_id), key=lambda c: (c.generation, c.index))
    curve, best = [], float("-inf")
    for c in cands:
        value = _score(c, bed.target, "search") if c.status == "done" else None
        best = max(best, value if value is not None else float("-inf"))
        curve.append(best)
    # The pick is decided on the search split alone; among tied front members the first one found wins
    # (never the one with the best report score: that would peek at the held-out split).
    front = store.front(summary.job_id)
    picked = sorted(front, key=lambda c: (-_score(c, bed.target, "search"), c.generation, c.index))[0]
    report = _score(picked, bed.target, "report")
    if report is None:
        raise RuntimeError(f"{row}-s{seed}: the picked candidate {picked.id} has no report-split score")
    extra: dict = {"stopped_because": summary.reason, "space": spec.search_space.kind}
    if SEARCH_ROWS[row].two_objectives:
        extra["front_report"] = [[_score(c, bed.target, "report"), _score(c, bed.keep, "report")] for c in front]
    return RowRun(row=row, seed=seed, picked=recipe_summary(picked.recipe),
                  search=_score(picked, bed.target, "search"), report=report, candidates=summary.candidates,
                  evaluated=summary.evaluated, seconds=summary.seconds, best_so_far=curve, extra=extra)


def peer_row(row: str, seed: int, result: dict, scorer: BedScorer, bed: Bed, extra: dict) -> RowRun:
    """A peer's pick (its best merge config, chosen on the search split by its own scores) scored here on
    both splits with the same evaluator as every other row."""
    import yaml

    from evosearch.recipe import parse_recipe

    recipe = parse_recipe(yaml.safe_load(result["best_config"]), source=f"{row} best config")
    model = scorer.merge(recipe)
    search, report = scorer.score(model, bed.target), scorer.score(model, bed.target_report)
    curve, best = [], float("-inf")
    for score in result["scores"]:
        best = max(best, score if score is not None else float("-inf"))
        curve.append(best)
    return RowRun(row=row, seed=seed, picked=recipe_summary(recipe.model_dump(mode="json")), search=search,
                  report=report, candidates=result["candidates"], evaluated=result["candidates"],
                  seconds=result["seconds"], best_so_far=curve,
                  extra={**extra, "peer_best_search_score": best, "command": result.get("command")})


def report_hypervolume(points: list[list[float]]) -> float:
    """Hypervolume of (target, kept task) report-split accuracies, both maximised, reference (0, 0)."""
    import numpy as np

    from evosearch.optimizers.pareto import hypervolume

    clean = [p for p in points if None not in p]
    return hypervolume(np.asarray(clean, dtype=float).reshape(-1, 2), ["max", "max"], [0.0, 0.0]) if clean else 0.0
