"""Search quality on a zoo bed's cross-domain target: every search space and optimizer of ours, the default
merges, the best source and the peers, at an equal candidate budget (issue 4; issue 6, item 5; issue 15).

Every row picks its model on the SEARCH split of the target; the pick is then scored on the held-out REPORT
split, the number users trust. Our searches run through the real driver (`run_job`: local Ray workers, a
SQLite store); the sources and the 36-merge default grid are scored in this process with the same evaluator
and tasks, once per bed build (cached in the zoo directory, keyed by its settings hash).

    .venv/bin/python bench/search_quality.py --bed interference        # 3 seeds x 120 candidates, every row
    .venv/bin/python bench/search_quality.py --rows grid,cmaes_ps,random --budget 60 --seeds 1
    .venv/bin/python bench/search_quality.py --smoke                   # interference-tiny, 1 seed (CI)

Rows (`--rows`): best_source, grid, hand (the interference bed's hand-written PS and DFS recipes), random (PS space;
random_dfs, random_dfs_unanchored and random_ps_dfs: the other spaces), cmaes_ps, cmaes_dfs (Sakana's anchored
path), cmaes_dfs_unanchored (any slot may start or end the path), ps_dfs, nsga2 (target + one specialist's own
task), mergekit_evolve, mergenetic.
Writes a table to stdout, JSON to bench/results/search_quality.json and a convergence plot (best-so-far
search-split accuracy vs candidates evaluated, mean over seeds) to bench/results/search_quality.png.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict
import statistics
import sys
import tempfile
from pathlib import Path

from common import RESULTS, machine, markdown_table, utc_now  # bench/, the script's own directory
from quality_peers import DEFAULT_VENVS, PEERS, PeerFailed, run_peer
from quality_rows import (EVOLVED_ROWS, SEARCH_ROWS, BedScorer, RowRun, SearchSettings, baseline_row,
                          baseline_table, hand_rows, open_bed, peer_row, report_hypervolume, run_search,
                          start_pool)

BASELINE_ROWS = ("best_source", "grid", "hand")
ALL_ROWS = (*BASELINE_ROWS, *SEARCH_ROWS, *PEERS)
DEFAULT_ROWS = ("best_source", "grid", "random", "cmaes_ps", "cmaes_dfs", "ps_dfs", "nsga2", *PEERS)


def log(message: str) -> None:
    print(message, flush=True)


# --- summary, targets, table, JSON, plot -----------------------------------------------------------------
def _mean_se(values: list[float]) -> tuple[float, float, float]:
    """Mean, standard deviation and standard error of the mean (0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, std / len(values) ** 0.5


def summarise(runs: list[RowRun]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in dict.fromkeys(r.row for r in runs):
        mine = [r for r in runs if r.row == row]
        report, search, gap = (_mean_se([getattr(r, k) for r in mine]) for k in ("report", "search", "gap"))
        seconds = sum(r.seconds for r in mine)
        candidates = sum(r.candidates for r in mine)
        out[row] = {
            "seeds": len(mine), "report_mean": report[0], "report_std": report[1], "report_se": report[2],
            "search_mean": search[0], "search_std": search[1], "gap_mean": gap[0],
            "candidates_mean": statistics.fmean(r.candidates for r in mine),
            "evaluated_mean": statistics.fmean(r.evaluated for r in mine),
            "seconds_mean": seconds / len(mine),
            "seconds_per_candidate": seconds / candidates if candidates else None,
            "picked": [r.picked for r in mine],
        }
    return out


def targets(summary: dict[str, dict]) -> dict:
    """Issue 15's targets, on the report split (points): the best evolved row against the best default
    merge (>= 10), the best source (>= 20), random search in the same space (> 2 standard errors of the
    difference) and every peer row."""
    evolved = [r for r in EVOLVED_ROWS if r in summary]
    if not evolved:
        return {}
    best = max(evolved, key=lambda r: summary[r]["report_mean"])
    b = summary[best]
    out: dict = {"best_evolved_row": best}

    def points(other: str) -> float:
        return 100 * (b["report_mean"] - summary[other]["report_mean"])

    def two_se(other: str) -> float:
        return 2 * 100 * (b["report_se"] ** 2 + summary[other]["report_se"] ** 2) ** 0.5

    if "grid" in summary:
        out["vs_best_default_merge"] = {"points": points("grid"), "bar": 10, "met": points("grid") >= 10}
    if "best_source" in summary:
        out["vs_best_source"] = {"points": points("best_source"), "bar": 20, "met": points("best_source") >= 20}
    random_row = SEARCH_ROWS[best].random_twin
    if random_row not in summary and "random" in summary:
        random_row = "random"
    if random_row in summary:
        out["vs_random"] = {"row": random_row, "points": points(random_row), "two_se": two_se(random_row),
                            "met": points(random_row) > two_se(random_row) > 0}
    for peer in ("mergekit_evolve", "mergenetic"):
        if peer in summary:
            # The bar is "ahead"; whether the lead is more than the seeds' noise is said beside it.
            out[f"vs_{peer}"] = {"points": points(peer), "two_se": two_se(peer), "met": points(peer) > 0,
                                 "beyond_two_se": points(peer) > two_se(peer) > 0}
    return out


def hypervolumes(runs: list[RowRun], table: dict, bed) -> dict:
    """NSGA-II's front (report split: target, kept task) against the grid merges' points, same reference."""
    fronts = [report_hypervolume(r.extra["front_report"]) for r in runs if r.row == "nsga2"]
    if not fronts:
        return {}
    grid = report_hypervolume([[s[bed.target_report], s[bed.keep_report]] for s in table["grid"].values()])
    return {"objectives": [bed.target_report, bed.keep_report], "reference": [0.0, 0.0], "grid": grid,
            "nsga2_per_seed": fronts, "nsga2_mean": statistics.fmean(fronts)}


def table_text(summary: dict[str, dict]) -> str:
    rows = []
    for row, s in summary.items():
        spc = s["seconds_per_candidate"]
        rows.append([row, s["seeds"], f"{100 * s['report_mean']:.1f} ± {100 * s['report_se']:.1f}",
                     f"{100 * s['search_mean']:.1f}", f"{100 * s['gap_mean']:+.1f}",
                     f"{s['candidates_mean']:.0f} ({s['evaluated_mean']:.0f})", f"{s['seconds_mean']:.0f}",
                     f"{spc:.2f}" if spc is not None else "-"])
    return markdown_table(["row", "seeds", "report acc % (mean ± SE)", "search acc %", "search - report",
                           "candidates (evaluated)", "wall s per seed", "s/candidate"], rows)


def plot(runs: list[RowRun], path: Path, budget: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in dict.fromkeys(r.row for r in runs):
        curves = [r.best_so_far for r in runs if r.row == row and r.best_so_far]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = 100 * np.mean([c[:n] for c in curves], axis=0)
        x = np.arange(1, n + 1)
        seeded = any(r.seed is not None for r in runs if r.row == row)
        label = f"{row} ({len(curves)} seed{'s' if len(curves) > 1 else ''})" if seeded else f"{row} (fixed set)"
        (line,) = ax.plot(x, mean, label=label, drawstyle="steps-post")
        if len(curves) > 1:
            lo, hi = 100 * np.min([c[:n] for c in curves], axis=0), 100 * np.max([c[:n] for c in curves], axis=0)
            ax.fill_between(x, lo, hi, alpha=0.12, color=line.get_color(), step="post")
        if n < budget:  # a fixed set (or a search that stopped early): its best carries on
            ax.hlines(mean[-1], n, budget, linestyles="dotted", colors=line.get_color())
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("best-so-far target accuracy (search split, %)")
    ax.set_title(title)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if ax.get_lines():  # the first write, before any search has finished, has no curve to name
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(runs: list[RowRun], args, bed, table: dict, started: str, extra: dict) -> dict:
    import json

    summary = summarise(runs)
    result = {
        "benchmark": "search_quality", "date": started, "machine": machine(),
        "bed": {"zoo": str(bed.zoo.root), "preset": bed.zoo.preset, "settings_hash": bed.zoo.settings_hash,
                "weights_digest": bed.weights_digest, "target": bed.target, "report": bed.target_report,
                "kept_task": bed.keep,
                "specialists": list(bed.specialists), "num_layers": bed.num_layers},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "summary": summary, "targets": targets(summary), "hypervolume": hypervolumes(runs, table, bed),
        "baselines": table, "runs": [r.to_json() for r in runs], **extra,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_quality.json").write_text(json.dumps(result, indent=2))
    plot(runs, out / "search_quality.png", args.budget,
         f"{bed.zoo.preset} bed, target {bed.target} (mean over seeds; band: min-max), budget {args.budget}")
    return result


def combine(paths: list[str], out: Path) -> dict:
    """One table, JSON and plot from several runs of this benchmark on the same bed (e.g. our rows and the
    peers run side by side as two commands); a (row, seed) found twice is taken from the first file."""
    import json

    loaded = [json.loads(Path(p).read_text()) for p in paths]
    hashes = {r["bed"]["settings_hash"] for r in loaded}
    if len(hashes) != 1:
        raise SystemExit(f"--combine: the results come from different beds ({', '.join(sorted(hashes))})")
    digests = {r["bed"].get("weights_digest") for r in loaded} - {None}
    if len(digests) > 1:
        raise SystemExit(f"--combine: the results come from different builds of one bed (weights "
                         f"{', '.join(sorted(digests))}: built on CPUs with other SIMD kernels?)")
    for p, r in zip(paths, loaded):
        if "weights_digest" not in r["bed"]:
            log(f"--combine: {p} records no weights digest: that it ran on the same build is not checked")
    fields = set(RowRun.__dataclass_fields__)
    runs, seen = [], set()
    for r in loaded:
        for data in r["runs"]:
            if (data["row"], data["seed"]) not in seen:
                seen.add((data["row"], data["seed"]))
                runs.append(RowRun(**{k: v for k, v in data.items() if k in fields}))
    summary = summarise(runs)
    result = {"benchmark": "search_quality", "date": utc_now(), "machine": machine(), "bed": loaded[0]["bed"],
              "combined_from": [{"path": p, "date": r["date"], "settings": r["settings"]} for p, r in zip(paths, loaded)],
              "summary": summary, "targets": targets(summary),
              "hypervolume": next((r["hypervolume"] for r in loaded if r.get("hypervolume")), {}),
              "baselines": loaded[0]["baselines"], "runs": [r.to_json() for r in runs],
              "peer_failures": [f for r in loaded for f in r.get("peer_failures", [])]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_quality.json").write_text(json.dumps(result, indent=2))
    budget = max(r["settings"]["budget"] for r in loaded)
    plot(runs, out / "search_quality.png", budget, f"{result['bed']['preset']} bed, target {result['bed']['target']} "
         f"(mean over seeds; band: min-max), combined from {len(paths)} runs")
    return result


# --- arguments and the run -----------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bed", default="interference", help="zoo preset built (cached) under runs/zoo-<preset>, e.g. "
                                                 "full, tiny, interference, interference-tiny")
    p.add_argument("--zoo", default=None, help="an already built zoo directory instead of --bed")
    p.add_argument("--target", default="zoo_target", help="the bed's target task (search split; "
                                                          "<target>_report is scored)")
    p.add_argument("--keep", default="math", help="specialist whose own task is NSGA-II's second objective")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated, of: {', '.join(ALL_ROWS)}")
    p.add_argument("--budget", type=int, default=120, help="candidates per search run (every search row)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1 "
                                                          "(more seeds of a row later, joined with --combine)")
    p.add_argument("--popsize", type=int, default=12, help="candidates per generation (every search row)")
    p.add_argument("--sigma0", type=float, default=0.25, help="CMA-ES initial step size (unit box)")
    p.add_argument("--start", choices=("centre", "uniform"), default="uniform",
                   help="where CMA-ES and NSGA-II begin on PS: the box centre, or the uniform task-arithmetic "
                        "merge at weight 1/M (mergekit-evolve's starting genome)")
    p.add_argument("--layer-groups", type=int, default=2, help="PS: layer blocks with a weight each")
    p.add_argument("--weight-high", type=float, default=1.5, help="PS: task-arithmetic weights in [0, this]")
    p.add_argument("--dfs-sources", default=None, help="DFS sources, the first anchors the path (default: "
                                                       "math,lang on an interference bed, else the specialists)")
    p.add_argument("--psdfs-sources", default=None, help="PS+DFS's DFS sources with @ps, the first anchors "
                                                         "(default: @ps then the DFS sources)")
    p.add_argument("--dfs-repeats", type=int, default=2)
    p.add_argument("--dfs-embed", default=None, help="DFS: the source whose embeddings and head the path uses "
                                                     "(default: the anchor; PS+DFS too, when it is one of its sources)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers")
    p.add_argument("--limit", type=int, default=None, help="score only the first N docs of each split")
    p.add_argument("--peer-venvs", default=str(DEFAULT_VENVS), help="where the peers' venvs are made")
    p.add_argument("--peer-work", default=None, help="the peers' work directories (their logs and best "
                                                    "configs stay there; default runs/search_quality_peers)")
    p.add_argument("--peer-timeout", type=float, default=None, help="seconds a peer run may take")
    p.add_argument("--out", default=None, help="where the JSON and PNG go (default bench/results; with --smoke "
                                             "a temp dir, so a smoke run never replaces the measured results)")
    p.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                   help="print one table (and write one JSON and plot to --out) from earlier runs' JSON")
    p.add_argument("--smoke", action="store_true", help="the interference-tiny zoo, 8 candidates, 1 seed, 50 docs")
    args = p.parse_args(argv)
    if args.smoke:
        args.bed, args.budget, args.seeds, args.popsize, args.workers = "interference-tiny", 8, 1, 4, 1
        args.limit = args.limit or 50
        args.out = args.out or str(Path(tempfile.gettempdir()) / "evosearch_search_quality_smoke")
    args.out = args.out or str(RESULTS)
    args.peer_venvs = str(Path(args.peer_venvs).resolve())  # the peers run in their own work directories
    args.peer_work = args.peer_work or str(Path(args.out) / "peers" if args.smoke else Path("runs") / "search_quality_peers")
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ALL_ROWS]
    if unknown:
        p.error(f"--rows: unknown row {unknown[0]!r}; known: {', '.join(ALL_ROWS)}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.budget < args.popsize:
        p.error(f"--budget {args.budget} is less than one generation (--popsize {args.popsize})")
    return args


def open_zoo(args):
    from evosearch.zoo import ZooManifest, build_zoo

    if args.zoo:
        return ZooManifest.load(Path(args.zoo))
    root = Path(args.out) / "zoo" if args.smoke else Path("runs") / f"zoo-{args.bed}"
    log(f"bed: zoo preset {args.bed!r} in {root} (built once, then cached)")
    return build_zoo(root, preset=args.bed)


# DFS defaults per bed kind: on the interference bed, the space of its hand layer path (math's first and
# last layers anchor the path, lang's embeddings and head, evosearch.zoo.report.anchored_layer_path).
DFS_DEFAULTS = {"interference": (("math", "lang"), "lang")}


def settings_for(args, bed) -> SearchSettings:
    default_sources, default_embed = DFS_DEFAULTS.get(getattr(bed.zoo, "bed", "skills"), (bed.specialists, None))
    dfs = tuple(args.dfs_sources.split(",")) if args.dfs_sources else default_sources
    psdfs = tuple(args.psdfs_sources.split(",")) if args.psdfs_sources else ("@ps", *dfs)
    args.dfs_embed = args.dfs_embed or default_embed
    return SearchSettings(budget=args.budget, popsize=args.popsize, workers=args.workers, limit=args.limit,
                          sigma0=args.sigma0, layer_groups=min(args.layer_groups, bed.num_layers),
                          weight_high=args.weight_high, dfs_sources=dfs, psdfs_sources=psdfs,
                          dfs_repeats=args.dfs_repeats, dfs_embed=args.dfs_embed, start=args.start)


def main(argv=None) -> int:
    import torch

    from storage import Store

    args = parse_args(argv)
    if args.combine:
        result = combine(args.combine, Path(args.out))
        print_summary(result, f"combined from {', '.join(args.combine)}")
        print(f"wrote {Path(args.out) / 'search_quality.json'} and {Path(args.out) / 'search_quality.png'}")
        return 0
    torch.set_num_threads(1)  # tiny models; the Ray workers take the cores
    started = utc_now()
    bed = open_bed(open_zoo(args), args.target, args.keep)
    made: list[BedScorer] = []

    def scorer() -> BedScorer:  # loaded once, and only when something is scored here
        if not made:
            made.append(BedScorer(bed, args.limit))
        return made[0]

    # Only these rows read the baselines: a peers-only run does not score (or wait for) the grid.
    needs_table = any(r in args.rows for r in ("best_source", "grid", "nsga2"))
    table = baseline_table(bed, scorer, args.limit, log) if needs_table else {}
    runs: list[RowRun] = []
    if "best_source" in args.rows:
        runs.append(baseline_row("best_source", bed, table["sources"], table["seconds"]["sources"]))
    if "grid" in args.rows:
        runs.append(baseline_row("grid", bed, table["grid"], table["seconds"]["grid"]))
    for r in runs:
        log(f"{r.row}: {r.picked} search {100 * r.search:.1f} report {100 * r.report:.1f}")
    if "hand" in args.rows:
        if getattr(bed.zoo, "bed", "skills") != "interference":
            raise SystemExit("--rows hand: only an interference bed has hand-written recipes")
        runs += hand_rows(bed, scorer(), log)
    settings = settings_for(args, bed)
    extra: dict = {"search_settings": asdict(settings)}
    result = write_results(runs, args, bed, table, started, extra)
    search_rows = [r for r in args.rows if r in SEARCH_ROWS]
    seed_range = range(args.first_seed, args.first_seed + args.seeds)
    with tempfile.TemporaryDirectory(prefix="search_quality_") as tmp:
        store = Store.open(f"sqlite:///{Path(tmp) / 'evosearch.db'}")
        pool = None
        try:
            if search_rows:
                pool, extra["worker_start_seconds"] = start_pool(bed, settings, Path(tmp))
                log(f"{settings.workers} Ray worker(s) started in {extra['worker_start_seconds']:.0f} s, shared by "
                    "every search row (not in any row's seconds)")
            for seed, row in itertools.product(seed_range, search_rows):
                run = run_search(row, bed, settings, seed, store, Path(tmp), log, pool=pool)
                runs.append(run)
                log(f"{row} seed {seed}: {run.picked} search {100 * run.search:.1f} report {100 * run.report:.1f} "
                    f"({run.candidates} candidates, {run.seconds:.0f} s, {run.seconds_per_candidate:.2f} s each)")
                # Written after every run so an interrupted benchmark still leaves its measurements.
                result = write_results(runs, args, bed, table, started, extra)
        finally:
            if pool is not None:
                pool.shutdown()
            store.close()
        for seed, row in itertools.product(seed_range, [r for r in args.rows if r in PEERS]):
            try:
                out = run_peer(row, bed, settings, seed, Path(args.peer_work) / f"{row}-s{seed}", log,
                               Path(args.peer_venvs), args.peer_timeout)
                run = peer_row(row, seed, out, scorer(), bed, {"shims": list(PEERS[row].shims),
                                                               "deviations": list(PEERS[row].deviations)})
            except PeerFailed as e:
                extra.setdefault("peer_failures", []).append({"row": row, "seed": seed, "reason": str(e),
                                                              "shims_tried": list(PEERS[row].shims)})
                log(f"{row} seed {seed}: FAILED: {e}")
                result = write_results(runs, args, bed, table, started, extra)
                continue
            runs.append(run)
            log(f"{row} seed {seed}: {run.picked} search {100 * run.search:.1f} report {100 * run.report:.1f} "
                f"({run.candidates} candidates, {run.seconds:.0f} s, {run.seconds_per_candidate:.2f} s each)")
            result = write_results(runs, args, bed, table, started, extra)
    print_summary(result, f"budget {args.budget} candidates per search run, {args.seeds} seed(s)")
    print(f"wrote {Path(args.out) / 'search_quality.json'} and {Path(args.out) / 'search_quality.png'}")
    return 0


def print_summary(result: dict, what: str) -> None:
    bed = result["bed"]
    print()
    print(f"bed {bed['preset']} ({bed['zoo']}, settings {bed['settings_hash']}), target {bed['target']}; {what}")
    print(table_text(result["summary"]))
    for name, t in result["targets"].items():
        if isinstance(t, dict):
            noise = f", 2 SE of the difference {t['two_se']:.1f}" if t.get("two_se") else ""
            within = ", within the noise" if t["met"] and t.get("beyond_two_se") is False and t.get("two_se") else ""
            print(f"{result['targets']['best_evolved_row']} {name}: {t['points']:+.1f} points "
                  f"({'met' if t['met'] else 'missed'}{within}{noise})")
    if result["hypervolume"]:
        hv = result["hypervolume"]
        print(f"hypervolume (report split, {' x '.join(hv['objectives'])}): nsga2 {hv['nsga2_mean']:.4f}, "
              f"grid merges {hv['grid']:.4f}")
    for failure in result.get("peer_failures", []):
        print(f"{failure['row']} seed {failure['seed']}: could not run: {failure['reason']}")


if __name__ == "__main__":
    sys.exit(main())
