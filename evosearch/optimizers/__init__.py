"""Ask/tell optimizers over the unit box, by name: cmaes, nsga2, ga, random."""

from __future__ import annotations

from typing import Annotated, Any, Sequence, Union

from pydantic import BaseModel, Field, ValidationError

from evosearch.optimizers.base import NO_DATA_PENALTY, Optimizer, OptimizerError
from evosearch.optimizers.cmaes import CMAESConfig, CMAESOptimizer
from evosearch.optimizers.ga import GAConfig, GAOptimizer
from evosearch.optimizers.nsga2 import NSGA2Config, NSGA2Optimizer
from evosearch.optimizers.pareto import Direction, ParetoFront, hypervolume, knee_index, non_dominated_sort
from evosearch.optimizers.random_search import RandomSearch, RandomSearchConfig

AnyOptimizerConfig = Annotated[Union[CMAESConfig, NSGA2Config, GAConfig, RandomSearchConfig],
                               Field(discriminator="name")]
OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (CMAESOptimizer, NSGA2Optimizer, GAOptimizer, RandomSearch)
}


class _OptimizerSection(BaseModel):
    optimizer: AnyOptimizerConfig


def parse_optimizer_config(data: Any, *, source: str = "optimizer") -> Union[CMAESConfig, NSGA2Config, GAConfig,
                                                                                RandomSearchConfig]:
    """Validate a job file's `optimizer` section; errors are one line naming the field."""
    try:
        return _OptimizerSection(optimizer=data).optimizer
    except ValidationError as e:
        err = e.errors()[0]
        parts = [str(x) for x in err["loc"][1:]]
        loc = ".".join(parts[1:] if parts and parts[0] in OPTIMIZERS else parts)
        msg = err["msg"].removeprefix("Value error, ")
        raise OptimizerError(f"{source}{'.' + loc if loc else ''}: {msg}") from None


def make_optimizer(config: Union[CMAESConfig, NSGA2Config, GAConfig, RandomSearchConfig], dim: int,
                   directions: Sequence[Direction], seed: int) -> Optimizer:
    return OPTIMIZERS[config.name](config, dim, directions, seed)


__all__ = [
    "NO_DATA_PENALTY", "OPTIMIZERS", "AnyOptimizerConfig", "CMAESConfig", "CMAESOptimizer", "Direction",
    "GAConfig", "GAOptimizer", "NSGA2Config", "NSGA2Optimizer", "Optimizer", "OptimizerError", "ParetoFront",
    "RandomSearch", "RandomSearchConfig", "hypervolume", "knee_index", "make_optimizer", "non_dominated_sort",
    "parse_optimizer_config",
]
