"""Runs mergekit-evolve (mergekit 0.1.5, in its own venv) on a bed, for bench/search_quality.py.

    <venv>/bin/python bench/peers/mergekit_evolve_run.py SETTINGS.json

SETTINGS.json (written by bench/quality_peers.py): the bed's models, target task, include path, budget,
population, seed, Ray workers, layer granularity, a work directory and where to write the result. The
search and the scoring are mergekit-evolve's own (`mergekit.scripts.evolve.main`, its CMA-ES and its
lm-eval call); what this script adds only lets it start on a CPU machine (`apply_shims`, also run in every
Ray worker) and records each evaluation's score as mergekit-evolve returns it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def apply_shims() -> None:
    """The edges mergekit-evolve 0.1.5 needs moved on a CPU machine without vLLM (none touches its search)."""
    import importlib.util
    import types

    import torch

    if importlib.util.find_spec("vllm") is None and "lm_eval.models.vllm_causallms" not in sys.modules:
        # mergekit imports lm-eval's vLLM wrapper at import time and sets a class attribute on it; with
        # --no-vllm nothing ever calls it.
        stub = types.ModuleType("lm_eval.models.vllm_causallms")
        stub.VLLM = type("VLLM", (), {})
        sys.modules[stub.__name__] = stub
        import lm_eval.models

        lm_eval.models.vllm_causallms = stub
    if not hasattr(torch.cpu, "empty_cache"):
        torch.cpu.empty_cache = lambda: None  # mergekit frees the accelerator's cache between candidates
    import lm_eval.models.huggingface as hf

    if not getattr(hf.HFLM.__init__, "_cpu_default", False):
        original = hf.HFLM.__init__

        def init(self, *args, device=None, **kwargs):
            # mergekit builds HFLM without a device and HFLM's default is cuda.
            original(self, *args, device=device or "cpu", **kwargs)

        init._cpu_default = True
        hf.HFLM.__init__ = init


def main(settings_path: str) -> int:
    settings = json.loads(Path(settings_path).read_text())
    work = Path(settings["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    apply_shims()
    import ray
    import yaml

    import mergekit
    import mergekit.evo.strategy as strategy
    import mergekit.scripts.evolve as evolve

    # mergekit-evolve puts num_gpus=1 on every Ray actor and task: one fake GPU per worker lets Ray place them.
    ray.init(num_cpus=settings["workers"], num_gpus=settings["workers"], include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level="warning",
             runtime_env={"worker_process_setup_hook": apply_shims,
                          "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                       "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "OMP_NUM_THREADS": "1"}})
    genome = {
        "genome": {"models": settings["models"], "base_model": settings["base_model"],
                   "merge_method": "task_arithmetic", "layer_granularity": settings["layer_granularity"],
                   "normalize": False},
        "tasks": [{"name": settings["target"], "metric": "acc,none"}],
        "limit": settings["limit"],
        # The zoo's tokenizer has no chat template; its tasks are plain zero-shot multiple choice.
        "apply_chat_template": False, "fewshot_as_multiturn": False,
    }
    (work / "genome.yaml").write_text(yaml.safe_dump(genome))

    scores: list[float] = []
    started = time.monotonic()
    evaluate = strategy.ActorPoolEvaluationStrategy.evaluate_genotypes

    def recorded(self, genotypes):
        results = evaluate(self, genotypes)
        for r in results:
            scores.append(r["score"])
            print(f"[mergekit_evolve s{settings['seed']}] candidate {len(scores)}/{settings['budget']} score "
                  f"{r['score']} best {max(s for s in scores if s is not None) if any(s is not None for s in scores) else None} "
                  f"{time.monotonic() - started:.0f} s", flush=True)
        return results

    strategy.ActorPoolEvaluationStrategy.evaluate_genotypes = recorded  # observes; returns what it got
    args = [str(work / "genome.yaml"), "--storage-path", str(work / "storage"), "--max-fevals",
            str(settings["budget"]), "--random-seed", str(settings["seed"]), "--no-merge-cuda", "--no-vllm",
            "--strategy", "pool", "--num-gpus", str(settings["workers"]), "--force-population-size",
            str(settings["popsize"]), "--batch-size", str(settings["batch_size"]), "--no-save-final-model", "--no-reshard",
            *[a for p in settings["include_path"] for a in ("--task-search-path", p)]]
    try:
        evolve.main.main(args, standalone_mode=False)
    finally:
        ray.shutdown()
    seconds = time.monotonic() - started
    best = work / "storage" / "best_config.yaml"
    Path(settings["result"]).write_text(json.dumps({
        "version": getattr(mergekit, "__version__", "0.1.5"), "scores": scores, "candidates": len(scores),
        "seconds": seconds, "best_config": best.read_text() if best.is_file() else None,
        "command": ["mergekit-evolve", *args]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
