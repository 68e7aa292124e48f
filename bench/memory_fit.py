"""Predicted vs measured peak memory of one search worker (`evosearch.search.memory`), both `resident` modes.

A random-initialised Llama family of about 1B parameters (base + 2 variants, bfloat16, sharded
checkpoints with `model.safetensors.index.json`) is written once under --cache, tensor by tensor. For each
`workers.resident` setting a fresh process builds a real `CandidateWorker` (sources loaded, lm-eval tasks
built), merges one TIES candidate (bf16 out) and scores it on a few zoo docs; its peak RSS (VmHWM) is
compared with the prediction from the checkpoints' headers. On a CPU worker the device is host memory, so
both modes hold the same bytes; on a GPU the split differs (the prediction says how).

    .venv/bin/python bench/memory_fit.py            # ~1B family: about 12 GiB of RAM, minutes
    .venv/bin/python bench/memory_fit.py --smoke    # a tiny family, seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, SMOKE_OUT, markdown_table, write_result  # noqa: E402

SHAPES = {  # hidden, layers, intermediate, vocab
    "1b": (2048, 16, 5632, 32000),
    "smoke": (64, 2, 128, 512),
}
BATCH, SEQUENCE = 8, 64  # the zoo's requests are under 64 tokens; one batch of 8 is full
DOCS = 2  # per task: 2 docs x 4 choices = one batch


def write_family(root: Path, shape: str) -> list[str]:
    """base, v1, v2: random bf16 Llamas of `shape`, sharded at 1 GB, each with the zoo's tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    from evosearch.zoo.tokenizer import build_tokenizer

    hidden, layers, intermediate, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                         vocab_size=vocab, num_attention_heads=max(1, hidden // 128), num_key_value_heads=max(1, hidden // 512),
                         max_position_embeddings=256, tie_word_embeddings=False, dtype="bfloat16")
    with no_init_weights(), torch.device("meta"):
        names = {n: tuple(t.shape) for n, t in LlamaForCausalLM(config).state_dict().items()}
    paths = []
    for k, name in enumerate(("base", "v1", "v2")):
        out = root / shape / name
        paths.append(str(out))
        if (out / "model.safetensors.index.json").is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(k)
        weight_map, shard, shard_bytes, shards = {}, {}, 0, 0

        def flush():
            nonlocal shard, shard_bytes, shards
            file = f"model-{shards:05d}.safetensors"
            save_file(shard, out / file, metadata={"format": "pt"})
            weight_map.update({n: file for n in shard})
            shard, shard_bytes, shards = {}, 0, shards + 1

        for n, s in names.items():
            t = torch.ones(s) if n.endswith("norm.weight") else 0.02 * torch.randn(s, generator=gen)
            shard[n] = t.to(torch.bfloat16)
            shard_bytes += shard[n].numel() * 2
            if shard_bytes > 10**9:
                flush()
        if shard:
            flush()
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        config.save_pretrained(out)
        build_tokenizer().save_pretrained(out)
    return paths


def child(args) -> None:
    """One worker process: load, build one candidate, score it; print the peak RSS and the prediction."""
    import torch

    torch.set_num_threads(1)
    from evosearch.search.memory import footprint, predict
    from workers.candidate import CandidateTask, CandidateWorker

    sources, tasks = args.sources.split(","), args.tasks.split(",")
    worker = CandidateWorker(sources, args.include, tasks, batch_size=BATCH, device="cpu", dtype="bfloat16",
                             resident=args.resident)
    recipe = {"kind": "ps", "merge_method": "ties", "base_model": sources[0], "dtype": "bfloat16",
              "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in sources[1:]]}
    worker.run(CandidateTask(key="memory", recipe=recipe, samples={t: list(range(DOCS)) for t in tasks}))
    peak = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    prediction = predict(footprint(sources, "bfloat16"), resident=args.resident, device_type="cpu",
                         output_dtype="bfloat16", batch_size=BATCH, sequence_length=SEQUENCE)
    print(json.dumps({"peak_rss": peak, "predicted": prediction.host_bytes, "parts": prediction.host}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny family")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "evosearch_bench_memory"))
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--sources", "--include", "--tasks", "--resident"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0

    from evosearch.zoo.tasks import make_eval_items, write_task_files

    shape = "smoke" if args.smoke else "1b"
    root = Path(args.cache)
    sources = write_family(root, shape)
    tasks = [n for n in write_task_files(make_eval_items(0, 8), root / "tasks") if not n.endswith("_report")][:2]
    rows, runs = [], []
    for resident in ("device", "host"):
        done = subprocess.run([sys.executable, __file__, "--child", "--sources", ",".join(sources), "--include",
                               str(root / "tasks"), "--tasks", ",".join(tasks), "--resident", resident],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        run = json.loads(done.stdout.strip().splitlines()[-1]) | {"resident": resident}
        run["error"] = run["predicted"] / run["peak_rss"] - 1
        runs.append(run)
        rows.append([resident, f"{run['predicted'] / 2**30:.2f}", f"{run['peak_rss'] / 2**30:.2f}",
                     f"{100 * run['error']:+.1f}%"])
    table = markdown_table(["workers.resident", "predicted GiB", "measured peak RSS GiB", "error"], rows)
    print(table)
    out = Path(args.out) if args.out else (SMOKE_OUT if args.smoke else RESULTS)
    write_result(out, "memory_fit", {"shape": dict(zip(("hidden", "layers", "intermediate", "vocab"), SHAPES[shape])),
                                     "sources": 3, "dtype": "bfloat16", "batch_size": BATCH,
                                     "sequence_length": SEQUENCE, "runs": runs, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
