"""NSGA-II (pymoo) over the unit box: the multi-objective optimizer."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM

from evosearch.optimizers.base import OptimizerConfig
from evosearch.optimizers.pymoo_algorithm import PymooOptimizer


class NSGA2Config(OptimizerConfig):
    name: Literal["nsga2"] = "nsga2"
    pop_size: int = Field(default=40, ge=2)
    n_offsprings: Optional[int] = Field(default=None, ge=1, description="per generation; default pop_size")
    crossover_eta: float = Field(default=15.0, gt=0, description="SBX distribution index")
    crossover_prob: float = Field(default=0.9, ge=0, le=1)
    mutation_eta: float = Field(default=20.0, gt=0, description="polynomial mutation distribution index")
    eliminate_duplicates: bool = True

    def population_size(self, dim: int) -> int:
        return self.n_offsprings or self.pop_size


class NSGA2Optimizer(PymooOptimizer):
    name = "nsga2"
    asynchronous = True
    config: NSGA2Config
    config_class = NSGA2Config

    def _make_algorithm(self) -> NSGA2:
        c = self.config
        return NSGA2(pop_size=c.pop_size, n_offsprings=c.n_offsprings,
                     crossover=SBX(eta=c.crossover_eta, prob=c.crossover_prob), mutation=PM(eta=c.mutation_eta),
                     eliminate_duplicates=c.eliminate_duplicates)
