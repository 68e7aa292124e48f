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
                    "for task_arithmetic, embeddings and head merged by the first/last block's weights (mergekit's "
                    "slices rule) instead of a gene of their own; its own "
                    "CMA-ES (cma.fmin2, sigma0 1/6, unseeded: --random-seed only seeds the merge), the "
                    "population forced to ours; cma evaluates its final mean too, so it takes one candidate "
                    "more than the budget; its fitness runs in bfloat16 (its dtype); --batch-size 64",),
    ),
    "mergenetic": PeerSpec(
        name="mergenetic", package="mergenetic==0.1.1",
        install=(
            # mergenetic pins lm-eval[vllm]==0.4.8: pip backtracks through vLLM's releases and fails, so the
            # package goes in without its dependencies and then every other pin of its own, lm-eval without vllm.
            ("--no-deps", "mergenetic==0.1.1"),
            ("lm-eval==0.4.8", "mergekit==0.0.6", "transformers==4.45.2", "accelerate==1.3.0", "pymoo==0.6.1.3",
             "pandas==2.2.2", "pyyaml==6.0.1", "psutil==7.0.0", "einops==0.7.0", "wrapt==1.16.0", "xxhash==3.4.1",
             "yarl==1.9.4", "scikit-learn", "fasttext-numpy2", "plotly", "git-python", TORCH),
        ),
        runner="mergenetic_run.py",
        shims=(
            "installed with --no-deps plus its other pins (lm-eval 0.4.8 without the vllm extra; gradio, "
            "bitsandbytes and prompt_toolkit left out: only its GUI and 4-bit paths use them)",
            "its lm-eval evaluator loads models through vLLM only: the runner hands lm-eval the HF model "
            "(`hf`, cpu) for the same task and metric instead",
            "MergeOptions(low_cpu_memory=True) is hard-coded and needs CUDA: the runner's merge options set "
            "it False",
            "transformers 4.45.2 cannot read a tokenizer saved by transformers 5: the runner merges from "
            "copies of the sources whose tokenizer_config.json names tokenizer_class PreTrainedTokenizerFast",
            "speed only: lm-eval's TaskManager (the index of every lm-eval task, rebuilt twice per evaluation "
            "by its evaluator and simple_evaluate) is built once per process; the same tasks load",
            "its lm-eval problem asserts more than one objective: it runs with the target and the kept "
            "specialist task, and its pick is the evaluated candidate with the best target score",
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


class PeerFailed(RuntimeError):
    """A peer that could not run; the message is the exact reason (a pip or the runner's last lines)."""


def _settings(bed, s, seed: int, work: Path) -> dict:
    return {"models": [str(bed.zoo.models[m]) for m in bed.specialists], "base_model": str(bed.zoo.models["base"]),
            "specialists": list(bed.specialists), "target": bed.target, "include_path": [str(bed.zoo.include_path)],
            "keep": bed.keep, "task_docs": {t: _docs(bed, t) for t in (bed.target, bed.keep)},
            "budget": s.budget, "popsize": s.popsize, "seed": seed, "workers": s.workers, "limit": s.limit,
            "layer_granularity": max(1, bed.num_layers // s.layer_groups), "weight_high": s.weight_high,
            # lm-eval batch size, as our workers' (mergekit-evolve's default, one request per forward pass,
            # took about 4 minutes per candidate on this bed).
            "batch_size": 64, "work_dir": str(work), "result": str(work / "result.json")}


def _docs(bed, task: str) -> int:
    """Docs in a zoo task's split (its JSONL next to its YAML)."""
    return sum(1 for line in (Path(bed.zoo.include_path) / f"{task}.jsonl").read_text().splitlines() if line.strip())


def run_peer(peer: str, bed, s, seed: int, work: Path, log, venvs: Path = DEFAULT_VENVS,
             timeout: float | None = None) -> dict:
    """The peer's search on the bed: its venv made if missing, its runner run there with progress passed
    through. Returns the runner's result (per-candidate scores, seconds, the best merge config); raises
    `PeerFailed` with the exact reason when the venv or the run fails."""
    spec, work = PEERS[peer], Path(work).resolve()  # the runner runs in `work`: every path absolute
    try:
        python = ensure_venv(peer, venvs, log)
    except subprocess.CalledProcessError as e:
        raise PeerFailed(f"{peer}: pip install {' '.join(e.cmd[-3:])} failed: {_tail(e.stderr)}") from None
    work.mkdir(parents=True, exist_ok=True)
    settings = _settings(bed, s, seed, work)
    (work / "settings.json").write_text(json.dumps(settings, indent=2))
    command = [str(python), str(RUNNERS / spec.runner), str(work / "settings.json")]
    log(f"[{peer} s{seed}] {' '.join(command)}")
    stderr_path = work / "stderr.log"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=work,
                                env=_peer_env())
        with open(work / "stdout.log", "w") as stdout:
            for line in proc.stdout:
                stdout.write(line)
                if line.startswith(f"[{peer}"):
                    log(line.rstrip())
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise PeerFailed(f"{peer}: still running after {timeout:.0f} s; killed") from None
    if proc.returncode != 0:
        raise PeerFailed(f"{peer}: runner exited {proc.returncode}: {_tail(stderr_path.read_text())}")
    result = json.loads(Path(settings["result"]).read_text())
    if not result.get("best_config"):
        raise PeerFailed(f"{peer}: finished without a best merge config ({result.get('candidates')} candidates)")
    return result


def _peer_env() -> dict:
    import os

    keep = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    return env | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                  "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _tail(text: str, lines: int = 6) -> str:
    """The last lines of a log that say what went wrong, joined on one line."""
    useful = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " | ".join(useful[-lines:])


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
