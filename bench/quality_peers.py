"""The peers of the search-quality benchmark: each in a venv of its own that this module creates.

`python bench/quality_peers.py setup mergekit_evolve` (or `mergenetic`, or `all`) creates
`runs/peer_venvs/<peer>` (`--root`) with torch pinned to 2.13.0 (the CPU wheel) and the peer from PyPI, as
the peer's own pins allow; `search_quality.py` calls the same `ensure_venv` before a peer row runs. A peer's
search and scoring logic are never changed: the runner scripts under `bench/peers/` only start the peer on a
CPU machine (every shim is listed in `PeerSpec.shims` and recorded in the benchmark's JSON).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENVS = ROOT / "runs" / "peer_venvs"
RUNNERS = Path(__file__).resolve().parent / "peers"
TORCH = "torch==2.13.0"  # the local CPU wheel; any other torch pulls gigabytes of CUDA wheels


@dataclass(frozen=True)
class PeerSpec:
    name: str
    package: str  # what PyPI calls it, pinned
    install: tuple[tuple[str, ...], ...]  # pip argument lists, run in order after torch
    runner: str  # script under bench/peers/, run with the venv's python
    shims: tuple[str, ...]  # what the runner changes at the peer's edges, and why
    deviations: tuple[str, ...] = field(default_factory=tuple)  # where the peer's space differs from ours


PEERS: dict[str, PeerSpec] = {
    "mergekit_evolve": PeerSpec(
        name="mergekit_evolve", package="mergekit==0.1.5",
        install=(("mergekit[evolve]==0.1.5",),),
        runner="mergekit_evolve_run.py",
        shims=(
            "Ray started with one declared (fake) GPU: mergekit-evolve 0.1.5 puts num_gpus=1 on every actor",
            "a stub module `lm_eval.models.vllm_causallms` (mergekit imports lm-eval's vLLM wrapper at import "
            "time; vLLM is not installed, the stub is never called)",
            "torch.cpu.empty_cache set to a no-op where torch lacks it (mergekit calls it between candidates)",
            "lm-eval's HFLM device default set to cpu (mergekit builds HFLM without a device)",
        ),
        deviations=("mergekit-evolve's own genome: one weight per model per layer block (layer_granularity) "
                    "for task_arithmetic, CMA-ES of its own (the `cma` package) with its own sigma0 and popsize",),
    ),
    "mergenetic": PeerSpec(
        name="mergenetic", package="mergenetic==0.1.1",
        install=(
            # mergenetic pins lm-eval[vllm]==0.4.8: pip backtracks through vLLM's releases and fails, so the
            # package goes in without its dependencies and then every other pin of its own, lm-eval without vllm.
            ("--no-deps", "mergenetic==0.1.1"),
            ("lm-eval==0.4.8", "mergekit==0.0.6", "transformers==4.45.2", "accelerate==1.3.0", "pymoo==0.6.1.3",
             "pandas==2.2.2", "pyyaml==6.0.1", "psutil==7.0.0", "einops==0.7.0", "wrapt==1.16.0", "xxhash==3.4.1",
             "yarl==1.9.4", "scikit-learn", "fasttext-numpy2", "plotly", TORCH),
        ),
        runner="mergenetic_run.py",
        shims=(
            "installed with --no-deps plus its other pins (lm-eval 0.4.8 without the vllm extra; gradio, "
            "bitsandbytes, git-python and prompt_toolkit left out: only its GUI/quantisation paths use them)",
            "its lm-eval evaluator loads models through vLLM only: the runner hands lm-eval the HF model "
            "(`hf`, cpu) for the same task and metric instead",
            "MergeOptions(low_cpu_memory=True) is hard-coded and needs CUDA: the runner's merge options set "
            "it False",
            "transformers 4.45.2 cannot read a tokenizer saved by transformers 5: the runner merges from "
            "copies of the sources whose tokenizer_config.json names tokenizer_class PreTrainedTokenizerFast",
        ),
        deviations=("Mergenetic's task-arithmetic merge searches one global weight per model (no per-layer "
                    "genes); its GA/NSGA-II come from pymoo 0.6.1.3",),
    ),
}


def venv_python(root: Path, peer: str) -> Path:
    return Path(root) / peer / "bin" / "python"


def _marker(root: Path, peer: str) -> Path:
    return Path(root) / peer / "evosearch_peer.json"


def ensure_venv(peer: str, root: Path = DEFAULT_VENVS, log=print) -> Path:
    """The venv's python, creating the venv first unless a complete one is there (its marker file names
    the same install steps). Raises `subprocess.CalledProcessError` with pip's tail when an install fails."""
    spec = PEERS[peer]
    python, marker = venv_python(root, peer), _marker(root, peer)
    wanted = {"package": spec.package, "install": [list(s) for s in spec.install], "torch": TORCH}
    if marker.is_file() and json.loads(marker.read_text()) == wanted and python.is_file():
        return python
    started = time.monotonic()
    log(f"[{peer}] creating its venv in {python.parent.parent} (torch pinned: {TORCH})")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(python.parent.parent)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for step in ((TORCH,), *spec.install):
        log(f"[{peer}] pip install {' '.join(step)}")
        done = subprocess.run([*pip, *step], capture_output=True, text=True)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr[-3000:])
    marker.write_text(json.dumps(wanted, indent=2))
    log(f"[{peer}] venv ready in {time.monotonic() - started:.0f} s")
    return python


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="create the peers' venvs for bench/search_quality.py")
    p.add_argument("action", choices=["setup"])
    p.add_argument("peer", choices=[*PEERS, "all"])
    p.add_argument("--root", default=str(DEFAULT_VENVS))
    args = p.parse_args(argv)
    for peer in PEERS if args.peer == "all" else [args.peer]:
        try:
            ensure_venv(peer, Path(args.root))
        except subprocess.CalledProcessError as e:
            print(f"[{peer}] install failed: {' '.join(e.cmd[-3:])}\n{e.stderr}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
