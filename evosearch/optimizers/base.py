"""The ask/tell optimizer interface over the unit box [0, 1]^d, with persistable state.

Protocol: `ask()` proposes a batch (asking again before `tell` returns the same batch), `tell()` gets the
objective values of exactly that batch, one row per genome, in the directions declared at construction.
An `asynchronous` optimizer may also `ask_ahead()`: a further batch while earlier ones are out, drawn from
what it knows now (the steady-state scheduler's way to keep every worker busy); batches are told in the
order they were asked, `tell()` always telling the oldest one out.
A failed candidate's NaN (or infinite) objectives are replaced by a penalty worse than anything seen, so
the algorithms never see NaN. `state_dict()` after any call and `load_state()` on a fresh optimizer built
with the same config, dim, directions and seed continue the exact same sequence.
A `start` genome (a recipe the user already has, encoded) is where the search begins: CMA-ES's initial
mean, the first genome of a population optimizer's first batch.
"""

from __future__ import annotations

import contextlib
import pickle
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterator, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evosearch.errors import UsageError
from evosearch.optimizers.pareto import Direction, ObjectiveError, check_directions, non_dominated_mask

# Penalty when no finite objective value has been seen yet.
NO_DATA_PENALTY = 1e9
_STATE_FORMAT = 1


class OptimizerError(UsageError, ValueError):
    """Misuse of an optimizer or a state that does not fit it; the message is one line."""


class OptimizerConfig(BaseModel, ABC):
    model_config = ConfigDict(extra="forbid")
    max_generations: int = Field(default=50, gt=0)

    @abstractmethod
    def population_size(self, dim: int) -> int:
        """Candidates per generation on a space of `dim` genes."""


class ScalarisingConfig(OptimizerConfig):
    """Single-objective algorithms see `sum(weights[i] * objective_i)`, each objective turned to
    minimisation first (a maximised accuracy with weight 1 counts as -accuracy)."""

    weights: Optional[list[float]] = Field(default=None, description="required when there are several objectives")

    @model_validator(mode="after")
    def _non_negative(self) -> "ScalarisingConfig":
        if self.weights is not None and (any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise ValueError("weights must be non-negative with a positive sum")
        return self


class Optimizer(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[OptimizerConfig]]
    # Single-objective algorithms rank by the weighted sum; the others keep a Pareto archive.
    scalarising: ClassVar[bool] = False
    # Can ask a batch before the batches already out are told (steady-state scheduling).
    asynchronous: ClassVar[bool] = False

    def __init__(self, config: OptimizerConfig, dim: int, directions: Sequence[Direction], seed: int,
                 start: Optional[np.ndarray] = None):
        if dim < 1:
            raise OptimizerError(f"{self.name}: the search space has {dim} genes; nothing to search")
        if start is not None and np.shape(start) != (dim,):
            raise OptimizerError(f"{self.name}: the start genome has {np.size(start)} values for {dim} genes")
        self.start = None if start is None else np.clip(np.asarray(start, dtype=float), 0.0, 1.0)
        try:
            self.directions = check_directions(directions)
        except ObjectiveError as e:
            raise OptimizerError(f"{self.name}: {e}") from None
        self.config, self.dim, self.seed = config, dim, seed
        self.n_obj = len(self.directions)
        self._weights = self._scalarisation_weights()
        self.generation = 0
        self._pending: list[np.ndarray] = []  # batches asked and not told yet, oldest first
        self._worst: Optional[np.ndarray] = None
        self._archive_x = np.empty((0, dim))
        self._archive_f = np.empty((0, self.n_obj))

    # --- subclass hooks ----------------------------------------------------------------------------
    @abstractmethod
    def _ask(self) -> np.ndarray:
        """The next batch, (pop, dim); may lie a hair outside the box (it is clipped for the caller)."""

    @abstractmethod
    def _tell(self, genomes: np.ndarray, objectives: np.ndarray) -> None:
        """`genomes` as `_ask` returned them; `objectives` finite, all minimised, (pop, n_obj)."""

    @abstractmethod
    def _algorithm_state(self) -> Any: ...

    @abstractmethod
    def _load_algorithm_state(self, state: Any) -> None: ...

    def _converged(self) -> bool:
        return False

    def _starts_here(self) -> bool:
        """Whether the batch being drawn is the search's first, the one a start genome joins."""
        return self.start is not None and self.asked == 0

    # --- public interface --------------------------------------------------------------------------
    def ask(self) -> np.ndarray:
        if not self._pending:
            if self.done():
                raise OptimizerError(f"{self.name}: the search is done after {self.generation} generation(s)")
            self._pending.append(np.asarray(self._ask(), dtype=float))
        return np.clip(self._pending[0], 0.0, 1.0)

    @property
    def asked(self) -> int:
        """Batches asked so far: told (`generation`) and out."""
        return self.generation + len(self._pending)

    def pending(self) -> list[np.ndarray]:
        """The batches out, oldest first, as `ask`/`ask_ahead` returned them."""
        return [np.clip(x, 0.0, 1.0) for x in self._pending]

    def can_ask_ahead(self) -> bool:
        return self.asynchronous and self.asked < self.config.max_generations and not self._converged()

    def ask_ahead(self) -> np.ndarray:
        """One more batch, asked while the earlier ones are out; told after them, in order."""
        if not self.can_ask_ahead():
            raise OptimizerError(f"{self.name}: cannot ask another batch now ({len(self._pending)} out, "
                                 f"{self.asked} of {self.config.max_generations} asked)")
        self._pending.append(np.asarray(self._ask(), dtype=float))
        return np.clip(self._pending[-1], 0.0, 1.0)

    def tell(self, genomes: np.ndarray, objectives: np.ndarray,
             directions: Optional[Sequence[Direction]] = None) -> None:
        if not self._pending:
            raise OptimizerError(f"{self.name}: tell() without a pending ask()")
        if directions is not None and tuple(directions) != self.directions:
            raise OptimizerError(f"{self.name}: directions {list(directions)} differ from {list(self.directions)}")
        x = np.asarray(genomes, dtype=float)
        asked = np.clip(self._pending[0], 0.0, 1.0)
        if x.shape != asked.shape or not np.allclose(x, asked, rtol=0, atol=1e-12):
            raise OptimizerError(f"{self.name}: told genomes are not the {len(asked)} genomes last asked, in order")
        f = np.asarray(objectives, dtype=float)
        if f.shape != (len(asked), self.n_obj):
            raise OptimizerError(f"{self.name}: objectives have shape {f.shape}, expected {(len(asked), self.n_obj)}")
        f_min = self._penalised(np.where(np.array([d == "max" for d in self.directions]), -f, f))
        self._tell(self._pending[0], f_min)
        self._update_archive(asked, f_min, failed=~np.all(np.isfinite(f), axis=1))
        self.generation += 1
        self._pending.pop(0)

    def done(self) -> bool:
        return self.generation >= self.config.max_generations or self._converged()

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """The best genomes told so far and their objectives (caller's directions): the single best under
        the weighted sum for scalarising algorithms, else the non-dominated set. Failed rows never count."""
        signs = np.array([-1.0 if d == "max" else 1.0 for d in self.directions])
        return self._archive_x.copy(), self._archive_f * signs

    def state_dict(self) -> bytes:
        return pickle.dumps({
            "format": _STATE_FORMAT, "optimizer": self.name, "dim": self.dim, "directions": self.directions,
            "seed": self.seed, "config": self.config.model_dump(mode="json"), "generation": self.generation,
            "pending": self._pending, "worst": self._worst, "archive": (self._archive_x, self._archive_f),
            "algorithm": self._algorithm_state(),
        })

    def load_state(self, blob: bytes) -> None:
        try:
            state = pickle.loads(blob)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
            raise OptimizerError(f"{self.name}: optimizer state does not unpickle ({type(e).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise OptimizerError(f"{self.name}: optimizer state has an unknown format")
        mine = {"optimizer": self.name, "dim": self.dim, "directions": self.directions, "seed": self.seed,
                "config": self.config.model_dump(mode="json")}
        for key, value in mine.items():
            if state[key] != value:
                raise OptimizerError(f"{self.name}: saved state has {key}={state[key]!r}, this optimizer {value!r}")
        self.generation, self._worst = state["generation"], state["worst"]
        pending = state["pending"]  # one array or None in states written before batches could be asked ahead
        self._pending = list(pending) if isinstance(pending, list) else [] if pending is None else [pending]
        self._archive_x, self._archive_f = state["archive"]
        self._load_algorithm_state(state["algorithm"])

    # --- helpers -----------------------------------------------------------------------------------
    def _scalarisation_weights(self) -> Optional[np.ndarray]:
        if not self.scalarising:
            return None
        weights = getattr(self.config, "weights", None)
        if weights is None:
            if self.n_obj > 1:
                raise OptimizerError(f"{self.name}: {self.n_obj} objectives need `weights` to be scalarised")
            return np.ones(1)
        if len(weights) != self.n_obj:
            raise OptimizerError(f"{self.name}: {len(weights)} weights for {self.n_obj} objectives")
        return np.asarray(weights, dtype=float)

    def _scalar(self, f_min: np.ndarray) -> np.ndarray:
        return f_min @ self._weights

    def _penalised(self, f_min: np.ndarray) -> np.ndarray:
        """Non-finite entries become `worst + max(1, |worst|)`, worst over every finite value told so far."""
        finite = np.isfinite(f_min)
        batch_worst = np.where(finite, f_min, -np.inf).max(axis=0)
        worst = batch_worst if self._worst is None else np.maximum(self._worst, batch_worst)
        self._worst = worst
        with np.errstate(invalid="ignore"):
            penalty = np.where(np.isfinite(worst), worst + np.maximum(1.0, np.abs(worst)), NO_DATA_PENALTY)
        return np.where(finite, f_min, penalty)

    def _update_archive(self, x: np.ndarray, f_min: np.ndarray, failed: np.ndarray) -> None:
        xs = np.vstack([self._archive_x, x[~failed]])
        fs = np.vstack([self._archive_f, f_min[~failed]])
        if not len(fs):
            return
        if self.scalarising:
            keep = np.array([int(np.argmin(self._scalar(fs)))])
        else:
            keep = np.flatnonzero(non_dominated_mask(fs, ["min"] * self.n_obj))
        self._archive_x, self._archive_f = xs[keep], fs[keep]


@contextlib.contextmanager
def numpy_global_rng(holder: dict) -> Iterator[None]:
    """Run with numpy's global RNG set to `holder['state']`, then store the advanced state back and restore
    the caller's. For libraries that draw from `np.random.*` (cma), so that their randomness is part of the
    optimizer's persisted state and never shared with anyone else in the process."""
    saved = np.random.get_state()
    np.random.set_state(holder["state"])
    try:
        yield
    finally:
        holder["state"] = np.random.get_state()
        np.random.set_state(saved)
