"""Shared ask/tell plumbing for pymoo algorithms over the unit box."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.problems.static import StaticProblem

from evosearch.optimizers.base import Optimizer


class UnitBoxProblem(Problem):
    """The box [0, 1]^d; objective values come from outside through `StaticProblem`, never from here."""

    def __init__(self, n_var: int, n_obj: int):
        super().__init__(n_var=n_var, n_obj=n_obj, xl=0.0, xu=1.0)

    def _evaluate(self, x, out, *args, **kwargs):
        raise RuntimeError("UnitBoxProblem is evaluated by the driver, not by pymoo")


class PymooOptimizer(Optimizer):
    """A pymoo algorithm driven by ask/tell; the pickled algorithm (with its numpy Generator) is the state.

    Offspring are bred from the population, and there is none until the initial one is told: a batch asked
    ahead before then is pymoo's initial sampling again, told as offspring (survival keeps the best of both),
    so a steady-state run never waits for its initial population's slowest candidate."""

    @abstractmethod
    def _make_algorithm(self) -> Algorithm: ...

    def __init__(self, config, dim: int, directions, seed: int, start=None):
        super().__init__(config, dim, directions, seed, start)
        n_obj = 1 if self.scalarising else self.n_obj
        self._problem = UnitBoxProblem(dim, n_obj)
        self._algorithm = self._make_algorithm()
        self._algorithm.setup(self._problem, seed=seed, termination=("n_gen", config.max_generations),
                              verbose=False)
        self._infills: list = []  # one pymoo Population per batch out, oldest first

    def _ask(self) -> np.ndarray:
        infills = self._algorithm.ask()
        if self._starts_here():
            # The infill itself, not the array handed out: pymoo tells the population its own X.
            infills[0].set("X", self.start.copy())
        self._infills.append(infills)
        return infills.get("X")

    def _tell(self, genomes: np.ndarray, objectives: np.ndarray) -> None:
        f = self._scalar(objectives)[:, None] if self.scalarising else objectives
        infills = self._infills.pop(0)
        Evaluator().eval(StaticProblem(self._problem, F=f), infills)
        self._algorithm.tell(infills=infills)

    def _converged(self) -> bool:
        return not self._algorithm.has_next()

    def _algorithm_state(self) -> Any:
        # One object so the pending infills keep their identity inside the algorithm on unpickling.
        return {"algorithm": self._algorithm, "infills": self._infills}

    def _load_algorithm_state(self, state: Any) -> None:
        infills = state["infills"]
        self._algorithm = state["algorithm"]
        self._infills = infills if isinstance(infills, list) else [] if infills is None else [infills]
        self._problem = self._algorithm.problem
