"""bench/search_quality.py: its summary and targets (fast, no Ray) and one `--smoke` run of every row of
ours on the interference-tiny zoo, then a second run that must take the baselines from the bed's cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import search_quality  # noqa: E402  (bench/ is not a package)
from evosearch.spaces import build_space, parse_space_config  # noqa: E402
from quality_rows import (RowRun, SearchSettings, default_merge_grid, recipe_summary,  # noqa: E402
                          report_hypervolume, search_job)

OUR_ROWS = ["best_source", "grid", "random", "cmaes_ps", "cmaes_dfs", "ps_dfs", "nsga2"]


def _run(row: str, seed, report: float, candidates: int = 10, seconds: float = 20.0) -> RowRun:
    return RowRun(row=row, seed=seed, picked="x", search=report + 0.01, report=report, candidates=candidates,
                  evaluated=candidates, seconds=seconds)


def test_targets_compare_the_best_evolved_row_with_each_bar():
    runs = [_run("grid", None, 0.40), _run("best_source", None, 0.30)]
    runs += [_run("cmaes_ps", s, v) for s, v in enumerate((0.60, 0.62, 0.61))]
    runs += [_run("random", s, v) for s, v in enumerate((0.50, 0.52, 0.48))]
    runs += [_run("cmaes_dfs", s, v) for s, v in enumerate((0.45, 0.46, 0.44))]
    summary = search_quality.summarise(runs)
    assert summary["cmaes_ps"]["report_se"] == pytest.approx(0.01 / 3 ** 0.5)
    assert summary["random"]["seconds_per_candidate"] == pytest.approx(2.0)
    t = search_quality.targets(summary)
    assert t["best_evolved_row"] == "cmaes_ps"
    assert t["vs_best_default_merge"]["points"] == pytest.approx(21.0) and t["vs_best_default_merge"]["met"]
    assert t["vs_best_source"]["points"] == pytest.approx(31.0) and t["vs_best_source"]["met"]
    assert t["vs_random"]["row"] == "random" and t["vs_random"]["met"]
    # One seed has no standard error: "ahead of random by more than two standard errors" cannot be met.
    one = search_quality.summarise([_run("cmaes_ps", 0, 0.6), _run("random", 0, 0.5)])
    assert not search_quality.targets(one)["vs_random"]["met"]
    # A peer a fraction of a point behind is passed, and the lead is flagged as within the seeds' noise.
    peer = search_quality.summarise(runs + [_run("mergekit_evolve", s, v) for s, v in enumerate((0.59, 0.62, 0.60))])
    vs_peer = search_quality.targets(peer)["vs_mergekit_evolve"]
    assert vs_peer["met"] and not vs_peer["beyond_two_se"] and vs_peer["points"] == pytest.approx(2 / 3)


def test_an_unanchored_dfs_row_frees_the_path_ends_and_is_judged_against_random_in_its_own_space(tmp_path):
    bed = SimpleNamespace(specialists=("math", "lang"), num_layers=4, target="t", target_report="t_report",
                          zoo=SimpleNamespace(models={"math": tmp_path / "m", "lang": tmp_path / "l"},
                                              include_path=tmp_path))
    s = SearchSettings(budget=24, popsize=8, workers=2, limit=None, sigma0=0.25, layer_groups=2, weight_high=1.0,
                       dfs_sources=("math", "lang"), psdfs_sources=("@ps", "math"), dfs_repeats=2,
                       dfs_embed="lang")
    spaces = {row: search_job(row, bed, s, 0, tmp_path)["search_space"]
              for row in ("cmaes_dfs", "cmaes_dfs_unanchored", "random_dfs_unanchored")}
    assert spaces["cmaes_dfs"]["anchor_ends"] and not spaces["cmaes_dfs_unanchored"]["anchor_ends"]
    assert spaces["cmaes_dfs_unanchored"] == spaces["random_dfs_unanchored"]
    assert spaces["cmaes_dfs_unanchored"]["embed_source"] == 1  # lang's embeddings and head
    # 2 sources x 4 layers x 2 repeats: all 16 slots free, against the 10 between the anchored ends; + 4 scales
    dims = {row: build_space(parse_space_config(space)).dim for row, space in spaces.items()}
    assert dims == {"cmaes_dfs": 14, "cmaes_dfs_unanchored": 20, "random_dfs_unanchored": 20}
    runs = [_run("cmaes_dfs_unanchored", i, v) for i, v in enumerate((0.9, 0.91, 0.92))]
    runs += [_run("random_dfs_unanchored", i, v) for i, v in enumerate((0.7, 0.71, 0.72))]
    runs += [_run("random", i, 0.95) for i in range(3)]
    t = search_quality.targets(search_quality.summarise(runs))
    assert t["best_evolved_row"] == "cmaes_dfs_unanchored" and t["vs_random"]["row"] == "random_dfs_unanchored"
    assert t["vs_random"]["met"]


def test_hypervolume_of_report_points_and_the_grid():
    assert report_hypervolume([[0.5, 0.5]]) == pytest.approx(0.25)
    assert report_hypervolume([[0.5, 0.5], [0.25, 0.75], [0.2, 0.2]]) == pytest.approx(0.25 + 0.25 * 0.25)
    assert report_hypervolume([]) == 0.0
    assert len(default_merge_grid(("math", "strings", "lang"))) == 36


def test_recipe_summary_names_the_dfs_path_and_the_ps_weights():
    ps = {"models": [{"model": "/z/models/math", "parameters": {"weight": [{"value": 0.5}, {"value": 1.0}]}}]}
    assert recipe_summary(ps) == "math=0.50/1.00"
    dfs = {"kind": "dfs", "sources": [ps, "/z/models/lang"], "num_layers": 2, "indicator": [1, 0, 0, 1, 0, 1, 0, 0]}
    assert recipe_summary(dfs) == "@ps.0 lang.1 @ps.1 [@ps math=0.50/1.00]"


def test_unknown_row_is_refused():
    with pytest.raises(SystemExit):
        search_quality.parse_args(["--rows", "grid,evolved"])


def _bench(tmp_path, *extra) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "search_quality.py"), "--smoke", "--out",
                           str(tmp_path), *extra], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "search_quality.json").read_text()), done.stdout


@pytest.mark.slow
def test_search_quality_smoke_runs_every_row_of_ours_then_reuses_the_baselines(tmp_path):
    result, stdout = _bench(tmp_path, "--rows", ",".join(OUR_ROWS))
    assert list(result["summary"]) == OUR_ROWS
    budget = result["settings"]["budget"]
    for row, s in result["summary"].items():
        assert 0.0 <= s["report_mean"] <= 1.0 and 0.0 <= s["search_mean"] <= 1.0, row
        assert s["seconds_per_candidate"] > 0, row
    for run in result["runs"]:
        if run["seed"] is not None:  # a search: equal budget, and a curve that never goes down
            assert run["candidates"] == budget and len(run["best_so_far"]) == budget, run["row"]
        assert run["best_so_far"] == sorted(run["best_so_far"])
        assert run["search"] == pytest.approx(run["best_so_far"][-1]), run["row"]
    assert result["runs"][1]["candidates"] == 36  # the default grid
    dfs = next(r for r in result["runs"] if r["row"] == "cmaes_dfs")
    path = dfs["picked"].split()
    assert dfs["extra"]["space"] == "dfs" and path[0] == "math.0" and path[-1] == "math.3"  # anchored ends
    assert {hop.split(".")[0] for hop in path} <= {"math", "lang"}
    hv = result["hypervolume"]
    assert 0 < hv["nsga2_mean"] <= 1 and 0 < hv["grid"] <= 1
    from evosearch.zoo import ZooManifest
    from quality_rows import weights_digest

    assert result["bed"]["weights_digest"] == weights_digest(ZooManifest.load(Path(result["bed"]["zoo"])))
    assert result["bed"]["preset"] == "interference-tiny" and result["bed"]["settings_hash"]
    assert result["worker_start_seconds"] > 0
    assert (tmp_path / "search_quality.png").stat().st_size > 0
    assert "| cmaes_dfs |" in stdout and "[cmaes_ps s0] search gen" in stdout  # table and progress lines

    again, stdout = _bench(tmp_path, "--rows", "best_source,grid")
    assert "baselines: cached" in stdout and list(again["summary"]) == ["best_source", "grid"]
    assert again["baselines"] == result["baselines"]


def test_combine_puts_two_runs_of_one_bed_in_one_table(tmp_path):
    def result(rows, hash_="abc", digest=None):
        runs = [_run(row, seed, report) for row, seed, report in rows]
        bed = {"settings_hash": hash_, "preset": "interference", "target": "zoo_target", "zoo": "z",
               **({"weights_digest": digest} if digest else {})}
        return {"bed": bed,
                "date": "d", "settings": {"budget": 10}, "hypervolume": {}, "baselines": {"grid": {}},
                "runs": [r.to_json() for r in runs]}

    ours = tmp_path / "ours.json"
    peers = tmp_path / "peers.json"
    ours.write_text(json.dumps(result([("grid", None, 0.4), ("cmaes_ps", 0, 0.6)])))
    peers.write_text(json.dumps(result([("mergekit_evolve", 0, 0.5), ("cmaes_ps", 0, 0.1)])))
    combined = search_quality.combine([str(ours), str(peers)], tmp_path / "out")
    assert list(combined["summary"]) == ["grid", "cmaes_ps", "mergekit_evolve"]
    assert combined["summary"]["cmaes_ps"]["report_mean"] == pytest.approx(0.6)  # the first file's run
    assert combined["targets"]["vs_mergekit_evolve"]["points"] == pytest.approx(10.0)
    assert (tmp_path / "out" / "search_quality.png").stat().st_size > 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps(result([("grid", None, 0.4)], hash_="def")))
    with pytest.raises(SystemExit):
        search_quality.combine([str(ours), str(other)], tmp_path / "out")
    # One settings hash, two builds (other SIMD kernels): refused; a file without a digest is only flagged.
    avx2, avx512 = tmp_path / "avx2.json", tmp_path / "avx512.json"
    avx2.write_text(json.dumps(result([("cmaes_ps", 1, 0.7)], digest="aaaa")))
    avx512.write_text(json.dumps(result([("cmaes_ps", 2, 0.9)], digest="bbbb")))
    with pytest.raises(SystemExit, match="different builds of one bed"):
        search_quality.combine([str(avx2), str(avx512)], tmp_path / "out")
    assert search_quality.combine([str(avx2), str(ours)], tmp_path / "out")["summary"]["cmaes_ps"]["seeds"] == 2


def test_the_weights_digest_changes_with_one_byte_of_one_model(tmp_path):
    from quality_rows import weights_digest

    models = {}
    for name in ("base", "math"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(bytes(range(256)) * 8)
        models[name] = tmp_path / name
    zoo = SimpleNamespace(models=models)
    before = weights_digest(zoo)
    assert weights_digest(zoo) == before
    data = bytearray((tmp_path / "math" / "model.safetensors").read_bytes())
    data[100] ^= 1
    (tmp_path / "math" / "model.safetensors").write_bytes(bytes(data))
    assert weights_digest(zoo) != before
