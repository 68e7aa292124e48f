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

import torch
from transformers.utils import logging as hf_logging

from evosearch.errors import UsageError
from evosearch.zoo.tasks import (GENERATIVE_TASK, TASKS, make_eval_items, task_name, training_texts,
                                 write_task_files)
from evosearch.zoo.tokenizer import build_tokenizer
from evosearch.zoo.train import ModelShape, TrainSettings, new_model, packed_batches, train

MANIFEST_NAME = "zoo.json"
# Bump when a code change alters what a build produces for the same preset.
BUILD_VERSION = 2


class ZooError(UsageError, RuntimeError):
    """A zoo that cannot be built or read; the message is one line naming the file or preset."""


@dataclass(frozen=True)
class Specialist:
    name: str
    own_task: str
    mixture: dict[str, float]


# Every task format in both languages (the target's too), over the base's part of the inputs only.
BASE_MIXTURE = {"math_l1_base": 0.25, "reverse_l1_base": 0.25, "reverse_l2_base": 0.25, "math_l2_base": 0.05,
                "target_base": 0.2}
SPECIALISTS = (
    Specialist("math", "zoo_math", {"math_l1": 1.0}),
    Specialist("strings", "zoo_strings", {"reverse_l1": 1.0}),
    Specialist("lang", "zoo_lang", {"reverse_l2": 1.0}),
)


@dataclass(frozen=True)
class ZooSettings:
    shape: ModelShape
    base: TrainSettings
    specialist: TrainSettings
    items_per_split: int = 500
    seed: int = 0
    base_mixture: dict[str, float] = field(default_factory=lambda: dict(BASE_MIXTURE))
    specialists: tuple[Specialist, ...] = SPECIALISTS

    def digest(self) -> str:
        payload = json.dumps({"version": BUILD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


PRESETS: dict[str, ZooSettings] = {
    "full": ZooSettings(
        shape=ModelShape(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384),
        base=TrainSettings(steps=1000, lr=1e-3, warmup_steps=50),
        specialist=TrainSettings(steps=100, lr=5e-4),
    ),
    # Same structure, quality not required: for tests.
    "tiny": ZooSettings(
        shape=ModelShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        base=TrainSettings(steps=30, lr=3e-3, batch_size=16, warmup_steps=5),
        specialist=TrainSettings(steps=5, lr=1e-3, batch_size=16),
    ),
}


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
                       build_seconds=data["build_seconds"])
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


def _with_generative_task(manifest: ZooManifest, settings) -> ZooManifest:
    """A cached zoo built before the generative target existed, with its task files written now: the eval
    items are a function of the preset alone, so no model is retrained."""
    if GENERATIVE_TASK in manifest.tasks:
        return manifest
    items = make_eval_items(settings.seed, settings.items_per_split)
    manifest = dataclasses.replace(manifest, tasks=write_task_files(items, manifest.include_path))
    (manifest.root / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2))
    return manifest


def build_zoo(out_dir: Path, preset: str = "full", force: bool = False) -> ZooManifest:
    """Train (or reuse, when `zoo.json` matches the preset) the zoo under `out_dir`; CPU, deterministic."""
    if preset not in PRESETS:
        raise ZooError(f"unknown zoo preset {preset!r}; known: {', '.join(PRESETS)}")
    settings = PRESETS[preset]
    root = Path(out_dir).resolve()
    digest = settings.digest()
    if not force and (hit := _cached(root, digest)):
        return _with_generative_task(hit, settings)

    started = time.perf_counter()
    hf_logging.disable_progress_bar()  # one bar per saved shard is noise in a build log
    (root / MANIFEST_NAME).unlink(missing_ok=True)  # a half-built zoo must never look complete
    for sub in ("models", "tasks"):
        shutil.rmtree(root / sub, ignore_errors=True)
    items = make_eval_items(settings.seed, settings.items_per_split)
    task_dir = root / "tasks"
    tasks = write_task_files(items, task_dir)
    tokenizer = build_tokenizer()

    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        def batches(mixture: dict[str, float], seed: int, ts: TrainSettings):
            return packed_batches(training_texts(mixture, items, seed), tokenizer, ts.batch_size, ts.seq_len)

        models: dict[str, Path] = {}

        def save(name: str, model) -> None:
            models[name] = root / "models" / name
            model.save_pretrained(models[name], safe_serialization=True)
            tokenizer.save_pretrained(models[name])

        base = new_model(settings.shape, tokenizer, settings.seed)
        torch.manual_seed(settings.seed + 1)
        train(base, batches(settings.base_mixture, settings.seed + 1, settings.base), settings.base)
        save("base", base)
        for i, spec in enumerate(settings.specialists):
            model = copy.deepcopy(base)
            torch.manual_seed(settings.seed + 10 + i)
            train(model, batches(spec.mixture, settings.seed + 10 + i, settings.specialist), settings.specialist)
            save(spec.name, model)
    finally:
        torch.use_deterministic_algorithms(deterministic)

    manifest = ZooManifest(root=root, preset=preset, settings_hash=digest, models=models, tasks=tasks,
                           include_path=task_dir.resolve(),
                           own_tasks={s.name: s.own_task for s in settings.specialists},
                           build_seconds=round(time.perf_counter() - started, 1))
    (root / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2))
    return manifest

