"""What every benchmark shares: the machine record, a markdown table, the JSON write, and the
zoo-style Llama family the merge benchmarks run on."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SMOKE_OUT = Path(tempfile.gettempdir()) / "evosearch_bench_smoke"  # a smoke run never replaces measured results
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the benches run as scripts from anywhere


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine() -> dict:
    """The machine and its load when called (call it when the JSON is written)."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if cpuinfo.exists() else ""
    meminfo = Path("/proc/meminfo")
    mem_total = next((int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()
                      if line.startswith("MemTotal:")), None) if meminfo.exists() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "memory_bytes": mem_total,
            "load_average_when_written": list(os.getloadavg()),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(out_dir: str | Path, name: str, result: dict) -> Path:
    """`out_dir/name.json`, with the date and the machine filled in now."""
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "date": utc_now(), "machine": machine(), **result}, indent=2))
    return path


def add_family_arguments(p: argparse.ArgumentParser, repeats_help: str) -> None:
    """The options of the benchmarks that run on the generated model family."""
    p.add_argument("--repeats", type=int, default=3, help=repeats_help)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "evosearch_bench_family"),
                   help="where the generated model family is kept between runs")
    p.add_argument("--out", default=None, help="where the JSON goes (default bench/results; --smoke: a temp dir)")
    p.add_argument("--smoke", action="store_true", help="tiny family, one repeat")


TINY_ZOO = Path(tempfile.gettempdir()) / "evosearch_bench_tiny_zoo"  # smoke runs build the tiny zoo here once


def add_zoo_arguments(p: argparse.ArgumentParser, smoke_help: str) -> None:
    """The options of the benchmarks that run on the zoo (`runs/zoo`; the tiny zoo in smoke runs)."""
    p.add_argument("--zoo", default="runs/zoo", help="a built zoo (`evosearch zoo build DIR`)")
    p.add_argument("--out", default=None, help="where the JSON goes (default bench/results; --smoke: a temp dir)")
    p.add_argument("--smoke", action="store_true", help=smoke_help)


def resolve_zoo_arguments(args: argparse.Namespace) -> argparse.Namespace:
    if args.smoke:
        args.zoo = str(TINY_ZOO)
    args.out = args.out or str(SMOKE_OUT if args.smoke else RESULTS)
    return args


def resolve_family_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    args.size = "smoke" if args.smoke else "full"
    if args.smoke:
        args.repeats = 1
    args.out = args.out or str(SMOKE_OUT if args.smoke else RESULTS)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


# --- the benchmark model family --------------------------------------------------------------------
# Zoo-style (Llama architecture, the zoo's character tokenizer and vocabulary, tied embeddings), but
# large enough that merging it is measurable: "full" has 103M parameters, "smoke" 0.2M.
FAMILY_SHAPES = {
    "full": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4),
}
FINETUNE_DELTA = 0.01  # a fine-tune is the base plus this much Gaussian noise per weight


def family_config(size: str):
    from transformers import LlamaConfig

    from evosearch.zoo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    return LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **FAMILY_SHAPES[size]), tokenizer


def build_family(root: Path, size: str, n_finetunes: int = 3, seed: int = 0) -> dict[str, Path]:
    """`base` and `ft0..` under `root` as HF directories (safetensors, float32, the zoo's tokenizer);
    reused when `root` already holds this size's family."""
    import torch
    from transformers import LlamaForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    names = ["base", *(f"ft{i}" for i in range(n_finetunes))]
    paths = {n: root / n for n in names}
    stamp = root / "family.json"
    wanted = {"size": size, "shape": FAMILY_SHAPES[size], "n_finetunes": n_finetunes, "seed": seed,
              "delta": FINETUNE_DELTA}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return paths
    config, tokenizer = family_config(size)
    generator = torch.Generator().manual_seed(seed)
    with no_init_weights():
        model = LlamaForCausalLM(config).float()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
        base = {k: v.clone() for k, v in model.state_dict().items()}
        for name in names:
            if name != "base":
                for key, p in model.state_dict().items():
                    p.copy_(base[key]).add_(torch.randn(p.shape, generator=generator), alpha=FINETUNE_DELTA)
            model.save_pretrained(paths[name], safe_serialization=True)
            tokenizer.save_pretrained(paths[name])
    stamp.write_text(json.dumps(wanted))
    return paths


def parameter_count(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                total += n
    return total
