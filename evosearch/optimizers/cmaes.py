"""CMA-ES (Hansen's `cma`) over the unit box; several objectives are scalarised by declared weights."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, Optional, Union

import numpy as np
from pydantic import Field, field_validator

from evosearch.optimizers.base import Optimizer, OptimizerError, ScalarisingConfig, numpy_global_rng


class CMAESConfig(ScalarisingConfig):
    name: Literal["cmaes"] = "cmaes"
    popsize: Optional[int] = Field(default=None, ge=2, description="default: cma's 4 + 3 ln(d)")
    sigma0: float = Field(default=0.25, gt=0, description="initial step size, in units of the [0, 1] box")
    x0: Union[float, list[float]] = Field(default=0.5, description="initial mean: one value or one per gene "
                                                                   "(a job's start_from sets it from a recipe)")
    tolfun: Optional[float] = Field(default=None, gt=0,
                                    description="stop when one generation's f-range falls below this (default off)")
    tolx: Optional[float] = Field(default=None, gt=0, description="stop when steps fall below this")

    def population_size(self, dim: int) -> int:
        return self.popsize if self.popsize is not None else 4 + int(3 * math.log(dim))  # cma's default

    @field_validator("x0")
    @classmethod
    def _in_box(cls, v):
        if any(not 0 <= x <= 1 for x in (v if isinstance(v, list) else [v])):
            raise ValueError("x0 must lie in [0, 1]")
        return v


def _global_randn(*shape: int) -> np.ndarray:
    return np.random.randn(*shape)


class CMAESOptimizer(Optimizer):
    name = "cmaes"
    scalarising = True
    config: CMAESConfig
    config_class = CMAESConfig

    def __init__(self, config: CMAESConfig, dim: int, directions, seed: int, start=None):
        super().__init__(config, dim, directions, seed, start)
        if start is not None and "x0" in config.model_fields_set:
            raise OptimizerError("cmaes: give optimizer.x0 or a start genome (start_from), not both")
        x0 = (self.start if start is not None else np.full(dim, config.x0) if isinstance(config.x0, (int, float))
              else np.asarray(config.x0, dtype=float))
        if x0.shape != (dim,):
            raise OptimizerError(f"cmaes: x0 has {x0.size} values for {dim} genes")
        opts: dict[str, Any] = {
            "bounds": [0.0, 1.0], "maxiter": config.max_generations, "verbose": -9, "verb_log": 0,
            "verb_disp": 0, "verb_filenameprefix": "",
            # cma's defaults (tolfun, tolflatfitness=1) end the search after one generation whose scores
            # all tie. Accuracies on a few dozen anchor items tie often, so only ~10 flat generations
            # stop it (tolflatfitness, cma's tolfunhist) unless the job sets tolfun.
            "tolfun": config.tolfun or 0.0, "tolflatfitness": 10,
            # NaN: cma leaves numpy's global RNG alone; `numpy_global_rng` hands it our own stream instead.
            "seed": float("nan"),
            # cma's default, `np.random.randn`, is a bound method of numpy's global RandomState and would
            # pickle as a frozen copy of it: the resumed search would then draw from that copy.
            "randn": _global_randn,
        }
        if config.popsize is not None:
            opts["popsize"] = config.popsize
        if config.tolx is not None:
            opts["tolx"] = config.tolx
        # cma pulls in scipy.stats (seconds): only a driver that runs CMA-ES pays for it, not every CLI verb
        # that reads a job file.
        import cma

        self._rng = {"state": np.random.RandomState(seed).get_state()}
        with numpy_global_rng(self._rng), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cma warns about e.g. 1-D problems on stderr
            self._es = cma.CMAEvolutionStrategy(x0, config.sigma0, opts)

    def _ask(self) -> np.ndarray:
        with numpy_global_rng(self._rng):
            return np.asarray(self._es.ask())

    def _tell(self, genomes: np.ndarray, objectives: np.ndarray) -> None:
        with numpy_global_rng(self._rng), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._es.tell(list(genomes), self._scalar(objectives).tolist())

    def _converged(self) -> bool:
        return bool(self._es.stop())

    def _algorithm_state(self) -> Any:
        return {"es": self._es, "rng": self._rng["state"]}

    def _load_algorithm_state(self, state: Any) -> None:
        self._es, self._rng = state["es"], {"state": state["rng"]}
