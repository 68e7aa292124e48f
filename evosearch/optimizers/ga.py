"""A single-objective genetic algorithm (pymoo's GA); several objectives are scalarised by weights."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field
from pymoo.algorithms.soo.nonconvex.ga import GA, comp_by_cv_and_fitness
from pymoo.operators.selection.tournament import TournamentSelection

from evosearch.optimizers.base import ScalarisingConfig
from evosearch.optimizers.pymoo_algorithm import PymooOptimizer


class GAConfig(ScalarisingConfig):
    name: Literal["ga"] = "ga"
    pop_size: int = Field(default=40, ge=2)
    n_offsprings: Optional[int] = Field(default=None, ge=1, description="per generation; default pop_size")
    eliminate_duplicates: bool = True

    def population_size(self, dim: int) -> int:
        return self.n_offsprings or self.pop_size


class GAOptimizer(PymooOptimizer):
    name = "ga"
    asynchronous = True
    scalarising = True
    config: GAConfig
    config_class = GAConfig

    def _make_algorithm(self) -> GA:
        c = self.config
        return GA(pop_size=c.pop_size, n_offsprings=c.n_offsprings, eliminate_duplicates=c.eliminate_duplicates,
                  selection=TournamentSelection(func_comp=_compare_by_cv_and_fitness))


def _compare_by_cv_and_fitness(pop, P, **kwargs):
    # pymoo's own comparison is wrapped by a decorator that pickle cannot name; this one it can.
    return comp_by_cv_and_fitness(pop, P, **kwargs)
