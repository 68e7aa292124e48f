"""Runs Mergenetic (0.1.1, in its own venv) on a bed, for bench/search_quality.py.

    <venv>/bin/python bench/peers/mergenetic_run.py SETTINGS.json

Mergenetic's lm-eval problem (`LmEvalMultiObjectiveProblem`) asserts more than one objective, so it runs as
shipped with two: the bed's target and the kept specialist task (both on their search splits), with its
`TaskArithmeticMerger` (one weight per model) and pymoo's NSGA-II through its `Searcher`. The pick is its
evaluated candidate with the best target score. What this script adds only lets it start on a CPU machine
(`apply_shims`); the search and the scores are Mergenetic's own.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def tokenizer_copies(models: dict[str, str], root: Path) -> dict[str, str]:
    """Copies of the sources (weights linked) whose tokenizer_config.json names a class transformers 4.45
    can load: a tokenizer saved by transformers 5 says `TokenizersBackend`."""
    copies = {}
    for name, path in models.items():
        dst = root / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in Path(path).iterdir():
            target = dst / f.name
            if target.exists() or target.is_symlink():
                target.unlink()
            if f.suffix == ".safetensors":
                target.symlink_to(f)
            else:
                shutil.copy(f, target)
        config = json.loads((dst / "tokenizer_config.json").read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.pop("backend", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        copies[name] = str(dst)
    return copies


def apply_shims(batch_size: int) -> None:
    """Mergenetic 0.1.1 on a CPU machine without vLLM; none of it touches the search or the scores."""
    import lm_eval.models.huggingface as hf
    import mergenetic.merging.merger as merger
    import mergenetic.optimization.merging_problem as problem

    def hf_model(pretrained, device="cpu", dtype=None, **vllm_only):
        # Its lm-eval path loads models through vLLM only; lm-eval's HF model runs the same task and metric.
        return hf.HFLM(pretrained=str(pretrained), device="cpu", dtype=dtype, batch_size=batch_size)

    problem.VLLM = hf_model
    import lm_eval.evaluator
    import lm_eval.tasks
    import mergenetic.evaluation.lm_harness as harness

    managers: dict = {}
    task_manager = lm_eval.tasks.TaskManager

    def shared_task_manager(*args, **kwargs):
        # Speed only: its evaluator and lm-eval's simple_evaluate each index every lm-eval task again per
        # evaluation (tens of seconds); one index per process serves the same tasks.
        key = repr((args, sorted(kwargs.items())))
        if key not in managers:
            managers[key] = task_manager(*args, **kwargs)
        return managers[key]

    harness.TaskManager = shared_task_manager
    lm_eval.evaluator.TaskManager = shared_task_manager
    options = merger.MergeOptions

    def cpu_merge_options(**kwargs):
        # Merger hard-codes low_cpu_memory=True, which needs CUDA.
        return options(**{**kwargs, "low_cpu_memory": False})

    merger.MergeOptions = cpu_merge_options


def main(settings_path: str) -> int:
    settings = json.loads(Path(settings_path).read_text())
    work = Path(settings["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    import numpy as np
    import torch
    from pymoo.algorithms.moo.nsga2 import NSGA2

    from mergenetic.merging.taskarithmetic_merger import TaskArithmeticMerger
    from mergenetic.optimization.predefined_problems import (ConfigLmEvalMultiObjectivePE,
                                                             LmEvalMultiObjectiveProblem)
    from mergenetic.searcher.searcher import Searcher

    torch.set_num_threads(1)
    apply_shims(batch_size=64)
    originals = {"base": settings["base_model"], **dict(zip(settings["specialists"], settings["models"]))}
    copies = tokenizer_copies(originals, work / "sources")
    tasks = [settings["target"], settings["keep"]]
    n_docs = {t: settings["limit"] or settings["task_docs"][t] for t in tasks}
    config = ConfigLmEvalMultiObjectivePE(tasks=tasks, correct_metric="acc",
                                          sample_ids={t: list(range(n_docs[t])) for t in tasks},
                                          additional_templates_folder=settings["include_path"][0])
    merger = TaskArithmeticMerger(run_id=f"s{settings['seed']}", path_to_base_model=copies["base"],
                                  model_paths=[copies[m] for m in settings["specialists"]],
                                  path_to_store_yaml=str(work / "configs"),
                                  path_to_store_merged_model=str(work / "merged"), dtype="bfloat16")
    problem = LmEvalMultiObjectiveProblem(config, merger, n_var=len(settings["specialists"]), n_obj=2,
                                          xl=0.0, xu=settings["weight_high"], device="cpu", load_in_4bit=False,
                                          eval_batch_size=64)
    scores: list[float] = []
    configs: list[str] = []
    started = time.monotonic()
    evaluate = problem._evaluate

    def recorded(x, out, *args, **kwargs):  # observes what Mergenetic computed; changes nothing
        evaluate(x, out, *args, **kwargs)
        scores.append(-float(out["F"][0]))
        configs.append(Path(merger.path_to_store_yaml).read_text())  # the merge config it wrote for x
        print(f"[mergenetic s{settings['seed']}] candidate {len(scores)}/{settings['budget']} target "
              f"{scores[-1]:.3f} best {max(scores):.3f} {time.monotonic() - started:.0f} s", flush=True)

    problem._evaluate = recorded
    algorithm = NSGA2(pop_size=settings["popsize"])
    searcher = Searcher(problem, algorithm, results_path=str(work), n_iter=-(-settings["budget"] // settings["popsize"]),
                        seed=settings["seed"], run_id=f"s{settings['seed']}", verbose=False)
    searcher.search()
    seconds = time.monotonic() - started
    best = int(np.argmax(scores)) if scores else None
    best_config = None
    if best is not None:  # its config, naming the original sources instead of the tokenizer copies
        best_config = configs[best]
        for name in sorted(copies, key=lambda n: -len(copies[n])):
            best_config = best_config.replace(copies[name], originals[name])
    Path(settings["result"]).write_text(json.dumps({
        "version": "0.1.1", "scores": scores, "candidates": len(scores), "seconds": seconds,
        "best_config": best_config}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
