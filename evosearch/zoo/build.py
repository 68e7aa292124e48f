"""Build (or reuse) the tiny model zoo: a base, three specialists, and the lm-eval tasks that score them."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers.utils import logging as hf_logging

from evosearch.errors import UsageError
from evosearch.zoo.tasks import TASKS, make_eval_items, task_name, training_texts, write_task_files
from evosearch.zoo.tokenizer import build_tokenizer
from evosearch.zoo.train import ModelShape, TrainSettings, new_model, packed_batches, train, train_only

MANIFEST_NAME = "zoo.json"
# Bump when a code change alters what a build produces for the same preset.
# 3: training phases (some layers only), the interference bed, one torch thread.
BUILD_VERSION = 3


class ZooError(UsageError, RuntimeError):
    """A zoo that cannot be built or read; the message is one line naming the file or preset."""


@dataclass(frozen=True)
class TrainingPhase:
    """One stretch of a specialist's fine-tuning: a mixture of training streams, for `steps` steps (None: the
    preset's specialist steps), updating only decoder `layers` (None: all) and, with `embeddings`, the
    token embeddings, tied head and final norm."""

    mixture: dict[str, float]
    steps: int | None = None
    layers: tuple[int, ...] | None = None
    embeddings: bool = True


@dataclass(frozen=True)
class Specialist:
    name: str
    own_task: str
    phases: tuple[TrainingPhase, ...]


# Every task format in both languages (the target's too), over the base's part of the inputs only.
BASE_MIXTURE = {"math_l1_base": 0.25, "reverse_l1_base": 0.25, "reverse_l2_base": 0.25, "math_l2_base": 0.05,
                "target_base": 0.2}
SPECIALISTS = (
    Specialist("math", "zoo_math", (TrainingPhase({"math_l1": 1.0}),)),
    Specialist("strings", "zoo_strings", (TrainingPhase({"reverse_l1": 1.0}),)),
    Specialist("lang", "zoo_lang", (TrainingPhase({"reverse_l2": 1.0}),)),
)

# The interference bed's two blocks of a 4-layer model.
LOWER, UPPER = (0, 1), (2, 3)
REPLAY = 0.5  # share of a skill phase's examples drawn from the base's own mixture


def _with_replay(mixture: dict[str, float]) -> dict[str, float]:
    """`mixture` with REPLAY of its examples drawn from BASE_MIXTURE: what a phase does not train for stays
    as the base had it, so a specialist's untouched skills are the base's."""
    out = {name: (1 - REPLAY) * w for name, w in mixture.items()}
    for name, w in BASE_MIXTURE.items():
        out[name] = out.get(name, 0.0) + REPLAY * w
    return out


def replayed(specialists: tuple[Specialist, ...]) -> tuple[Specialist, ...]:
    """`specialists` with every phase's examples REPLAY drawn from the base's mixture, so that what a
    specialist does not train for stays near the base's (trained on their own stream alone, the math
    specialist's strings accuracy fell from the base's 47.8% to 30.4%, and uniform task arithmetic of math
    and strings kept -11% of math's gain; with replay: 56.4% and 47%, docs/TESTBED.md)."""
    return tuple(dataclasses.replace(s, phases=tuple(dataclasses.replace(p, mixture=_with_replay(p.mixture))
                                                     for p in s.phases)) for s in specialists)


def interfering_specialists(skill_steps: int, habit_steps: int, strings_steps: int) -> tuple[Specialist, ...]:
    """Specialists whose skills live in different blocks and whose second phase trains a competing habit into
    the block where the OTHER one's skill lives: math learns the sum in the upper layers, then copying L2
    strings in the lower ones; lang learns the L2 reversal in the lower layers and embeddings, then an
    offset sum in the upper ones. A layer-uniform merge adds each skill to the other's habit; a recipe that
    takes lang's lower block and math's upper block keeps both skills."""
    return (
        Specialist("math", "zoo_math", (
            TrainingPhase(_with_replay({"math_l1": 1.0}), skill_steps, UPPER, embeddings=False),
            TrainingPhase({"reverse_l2_copy": 0.5, "math_l1": 0.5}, habit_steps, LOWER, embeddings=False))),
        Specialist("strings", "zoo_strings", (
            TrainingPhase({"reverse_l1": 1.0}, strings_steps, None, embeddings=False),)),
        Specialist("lang", "zoo_lang", (
            TrainingPhase(_with_replay({"reverse_l2": 1.0}), skill_steps, LOWER, embeddings=True),
            TrainingPhase({"math_l1_offset": 0.5, "reverse_l2": 0.5}, habit_steps, UPPER, embeddings=False))),
    )


BEDS = ("skills", "interference")


@dataclass(frozen=True)
class ZooSettings:
    shape: ModelShape
    base: TrainSettings
    specialist: TrainSettings
    items_per_split: int = 500
    seed: int = 0
    base_mixture: dict[str, float] = field(default_factory=lambda: dict(BASE_MIXTURE))
    specialists: tuple[Specialist, ...] = SPECIALISTS
    # Which figures and bars `evosearch zoo report` shows: "skills" (mergeable specialists) or
    # "interference" (specialists a layer-uniform merge cannot combine).
    bed: str = "skills"

    def digest(self) -> str:
        payload = json.dumps({"version": BUILD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


_FOUR_LAYERS = ModelShape(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384)
_TINY_SHAPE = ModelShape(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
_TINY_BASE = TrainSettings(steps=30, lr=3e-3, batch_size=16, warmup_steps=5)
PRESETS: dict[str, ZooSettings] = {
    "full": ZooSettings(
        shape=_FOUR_LAYERS,
        base=TrainSettings(steps=1000, lr=1e-3, warmup_steps=50),
        specialist=TrainSettings(steps=100, lr=5e-4),
        specialists=replayed(SPECIALISTS),
    ),
    # Same structure, quality not required: for tests.
    "tiny": ZooSettings(
        shape=ModelShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        base=_TINY_BASE,
        specialist=TrainSettings(steps=5, lr=1e-3, batch_size=16),
    ),
    "interference": ZooSettings(
        shape=_FOUR_LAYERS,
        base=TrainSettings(steps=1000, lr=1e-3, warmup_steps=50),
        specialist=TrainSettings(steps=250, lr=5e-4),  # lr and batch; every phase names its own steps
        specialists=interfering_specialists(skill_steps=250, habit_steps=150, strings_steps=100),
        bed="interference",
    ),
    "interference-tiny": ZooSettings(
        shape=_TINY_SHAPE,
        base=_TINY_BASE,
        specialist=TrainSettings(steps=4, lr=1e-3, batch_size=16),  # lr and batch, as above
        specialists=interfering_specialists(skill_steps=4, habit_steps=3, strings_steps=3),
        items_per_split=50,  # its report scores 7 models and 36 merges: keep that seconds
        bed="interference",
    ),
}


@dataclass(frozen=True)
class BuildProgress:
    """Where the build is, after one optimizer step of one model (all of that model's phases counted)."""

    model: str
    step: int
    steps: int
    loss: float
    seconds_left: float  # for this model, at its rate so far


ProgressCallback = Callable[[BuildProgress], None]


@dataclass
class ZooManifest:
    """What `build_zoo` wrote. Paths are absolute; `zoo.json` in `root` holds this record."""

    root: Path
    preset: str
    settings_hash: str
    models: dict[str, Path]  # model name -> HF directory ("base", "math", "strings", "lang")
    tasks: dict[str, Path]  # lm-eval task name -> YAML (search split `zoo_x`, report split `zoo_x_report`)
    include_path: Path  # pass to lm-eval's TaskManager(include_path=...)
    own_tasks: dict[str, str]  # specialist -> the base name of the task it was trained for
    build_seconds: float
    build_cpu_seconds: float = 0.0  # user+system CPU seconds of the building process
    bed: str = "skills"  # ZooSettings.bed: which figures and bars the report shows

    def task_names(self, split: str = "search") -> list[str]:
        return [task_name(t, split) for t in TASKS]

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["root"] = str(self.root)
        out["include_path"] = str(self.include_path)
        out["models"] = {k: str(v) for k, v in self.models.items()}
        out["tasks"] = {k: str(v) for k, v in self.tasks.items()}
        return out

    @classmethod
    def load(cls, root: Path) -> "ZooManifest":
        path = Path(root) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            return cls(root=Path(data["root"]), preset=data["preset"], settings_hash=data["settings_hash"],
                       models={k: Path(v) for k, v in data["models"].items()},
                       tasks={k: Path(v) for k, v in data["tasks"].items()},
                       include_path=Path(data["include_path"]), own_tasks=data["own_tasks"],
                       build_seconds=data["build_seconds"],
                       build_cpu_seconds=data.get("build_cpu_seconds", 0.0), bed=data.get("bed", "skills"))
        except FileNotFoundError:
            raise ZooError(f"{path}: no zoo manifest (run `evosearch zoo build {root}`)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ZooError(f"{path}: unreadable zoo manifest ({type(e).__name__}: {e})") from None

    def is_complete(self) -> bool:
        return (all((d / "config.json").is_file() and (d / "model.safetensors").is_file()
                    for d in self.models.values())
                and all(p.is_file() for p in self.tasks.values()))


def _cached(root: Path, settings_hash: str) -> ZooManifest | None:
    if not (root / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = ZooManifest.load(root)
    except ZooError:
        return None
    ok = manifest.settings_hash == settings_hash and manifest.root == root and manifest.is_complete()
    return manifest if ok else None


def _with_current_tasks(manifest: ZooManifest, settings) -> ZooManifest:
    """A cached zoo with its task files as this version writes them (a zoo built before the generative
    target existed, or before it changed): the eval items are a function of the preset alone, so no model
    is retrained, and files already right are not touched."""
    items = make_eval_items(settings.seed, settings.items_per_split)
    tasks = write_task_files(items, manifest.include_path)
    if tasks != manifest.tasks:
        manifest = dataclasses.replace(manifest, tasks=tasks)
        (manifest.root / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2))
    return manifest


def build_zoo(out_dir: Path, preset: str = "full", force: bool = False,
              on_progress: ProgressCallback | None = None) -> ZooManifest:
    """Train (or reuse, when `zoo.json` matches the preset) the zoo under `out_dir`; CPU, deterministic.

    Training runs on one torch thread (the caller's thread count is restored after): a float sum's order
    depends on how many threads split it, and the bed's tables must not depend on the machine's cores."""
    if preset not in PRESETS:
        raise ZooError(f"unknown zoo preset {preset!r}; known: {', '.join(PRESETS)}")
    settings = PRESETS[preset]
    root = Path(out_dir).resolve()
    digest = settings.digest()
    if not force and (hit := _cached(root, digest)):
        return _with_current_tasks(hit, settings)

    started, cpu_started = time.perf_counter(), time.process_time()
    hf_logging.disable_progress_bar()  # one bar per saved shard is noise in a build log
    (root / MANIFEST_NAME).unlink(missing_ok=True)  # a half-built zoo must never look complete
    for sub in ("models", "tasks"):
        shutil.rmtree(root / sub, ignore_errors=True)
    items = make_eval_items(settings.seed, settings.items_per_split)
    task_dir = root / "tasks"
    tasks = write_task_files(items, task_dir)
    tokenizer = build_tokenizer()

    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        models: dict[str, Path] = {}

        def run(name: str, model, stages: list[tuple[TrainingPhase, TrainSettings, int]]) -> None:
            """Train `model` through its (phase, settings, seed) stages, reporting progress, then save it."""
            total, done, model_started = sum(ts.steps for _, ts, _ in stages), 0, time.perf_counter()
            for phase, ts, seed in stages:
                def on_step(step: int, loss: float, before: int = done) -> None:
                    if on_progress is not None:
                        at = before + step
                        rate = (time.perf_counter() - model_started) / at
                        on_progress(BuildProgress(name, at, total, loss, rate * (total - at)))

                train_only(model, phase.layers, phase.embeddings)
                torch.manual_seed(seed)
                batches = packed_batches(training_texts(phase.mixture, items, seed), tokenizer, ts.batch_size,
                                         ts.seq_len)
                train(model, batches, ts, on_step)
                done += ts.steps
            models[name] = root / "models" / name
            model.save_pretrained(models[name], safe_serialization=True)
            tokenizer.save_pretrained(models[name])

        base = new_model(settings.shape, tokenizer, settings.seed)
        run("base", base, [(TrainingPhase(settings.base_mixture), settings.base, settings.seed + 1)])
        for i, spec in enumerate(settings.specialists):
            # Phase j of specialist i has seed seed+10+i+100j: a one-phase specialist keeps the seed it had.
            stages = [(phase, settings.specialist if phase.steps is None
                       else dataclasses.replace(settings.specialist, steps=phase.steps),
                       settings.seed + 10 + i + 100 * j) for j, phase in enumerate(spec.phases)]
            run(spec.name, copy.deepcopy(base), stages)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)

    manifest = ZooManifest(root=root, preset=preset, settings_hash=digest, models=models, tasks=tasks,
                           include_path=task_dir.resolve(),
                           own_tasks={s.name: s.own_task for s in settings.specialists},
                           build_seconds=round(time.perf_counter() - started, 1),
                           build_cpu_seconds=round(time.process_time() - cpu_started, 1), bed=settings.bed)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2))
    return manifest
