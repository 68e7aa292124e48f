"""Uniform random search in the unit box: the baseline every other optimizer must beat."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from evosearch.optimizers.base import Optimizer, OptimizerConfig


class RandomSearchConfig(OptimizerConfig):
    name: Literal["random"] = "random"
    pop_size: int = Field(default=40, ge=1, description="genomes per generation")

    def population_size(self, dim: int) -> int:
        return self.pop_size


class RandomSearch(Optimizer):
    name = "random"
    asynchronous = True
    config: RandomSearchConfig
    config_class = RandomSearchConfig

    def __init__(self, config: RandomSearchConfig, dim: int, directions, seed: int, start=None):
        super().__init__(config, dim, directions, seed, start)
        self._rng = np.random.default_rng(seed)

    def _ask(self) -> np.ndarray:
        batch = self._rng.random((self.config.pop_size, self.dim))
        if self._starts_here():
            batch[0] = self.start
        return batch

    def _tell(self, genomes: np.ndarray, objectives: np.ndarray) -> None:
        pass  # nothing to learn; the base class keeps the Pareto archive

    def _algorithm_state(self) -> Any:
        return self._rng.bit_generator.state

    def _load_algorithm_state(self, state: Any) -> None:
        self._rng.bit_generator.state = state
