"""Ask/tell optimizers over the unit box, by name: cmaes, nsga2, ga, random."""

from __future__ import annotations

from typing import Annotated, Any, Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, Field

from evosearch.config_file import parse_section
from evosearch.optimizers.base import NO_DATA_PENALTY, Optimizer, OptimizerError
from evosearch.optimizers.cmaes import CMAESConfig, CMAESOptimizer
from evosearch.optimizers.ga import GAConfig, GAOptimizer
from evosearch.optimizers.nsga2 import NSGA2Config, NSGA2Optimizer
from evosearch.optimizers.pareto import Direction, ParetoFront, hypervolume, knee_index, non_dominated_sort
from evosearch.optimizers.random_search import RandomSearch, RandomSearchConfig

# name -> the optimizer (which names its config class). Adding one is one entry here.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (CMAESOptimizer, NSGA2Optimizer, GAOptimizer, RandomSearch)
}
AnyOptimizerConfig = Annotated[Union[tuple(cls.config_class for cls in OPTIMIZERS.values())],
                               Field(discriminator="name")]


class _OptimizerSection(BaseModel):
    optimizer: AnyOptimizerConfig


def parse_optimizer_config(data: Any, *, source: str = "optimizer") -> Union[CMAESConfig, NSGA2Config, GAConfig,
                                                                                RandomSearchConfig]:
    """Validate a job file's `optimizer` section; errors are one line naming the field."""
    return parse_section(_OptimizerSection, "optimizer", data, source, OPTIMIZERS, OptimizerError)


def make_optimizer(config: Union[CMAESConfig, NSGA2Config, GAConfig, RandomSearchConfig], dim: int,
                   directions: Sequence[Direction], seed: int, start: Optional[np.ndarray] = None) -> Optimizer:
    return OPTIMIZERS[config.name](config, dim, directions, seed, start)


__all__ = [
    "NO_DATA_PENALTY", "OPTIMIZERS", "AnyOptimizerConfig", "CMAESConfig", "CMAESOptimizer", "Direction",
    "GAConfig", "GAOptimizer", "NSGA2Config", "NSGA2Optimizer", "Optimizer", "OptimizerError", "ParetoFront",
    "RandomSearch", "RandomSearchConfig", "hypervolume", "knee_index", "make_optimizer", "non_dominated_sort",
    "parse_optimizer_config",
]
