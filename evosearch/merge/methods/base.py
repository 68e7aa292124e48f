"""What a merge method is: one object that knows its name, its parameters, its checks and its kernel.

Recipes (`evosearch.recipe`), the merge engine (`evosearch.merge.ps`), the PS search space
(`evosearch.spaces.ps`) and the reduced fitness's merge prior (`evosearch.recipe.recipe_sources`) all
read a method from the registry (`evosearch.merge.methods.METHODS`) instead of keeping tables of their own.
Parameter names, meanings and defaults follow mergekit 0.1.5's, so a PS recipe is a mergekit config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import torch

from evosearch.errors import RecipeError

if TYPE_CHECKING:  # a method reads a recipe's attributes; recipes import the registry, not the other way
    from evosearch.recipe import PSRecipe

REQUIRED = object()  # the default of a parameter that has none: the recipe must set it


def parse_number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: expected a number, got {value!r}") from None


def parse_integer(value: Any, where: str) -> int:
    number = parse_number(value, where)
    if number != int(number):
        raise RecipeError(f"{where}: expected a whole number, got {value!r}")
    return int(number)


def parse_flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise RecipeError(f"{where}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class Parameter:
    """One parameter of a method. A per-model parameter is set for each source model (the recipe's top-level
    `parameters` give its default); a shared one once per tensor. `search_range` is the PS search space's
    range for it when a job searches it without giving one."""

    name: str
    parse: Callable[[Any, str], Any]
    per_model: bool = False
    default: Any = REQUIRED
    search_range: Optional[tuple[float, float]] = None
    doc: str = ""

    @property
    def numeric(self) -> bool:
        """A number (gradients interpolate it), as opposed to a flag (gradients pick one of their values)."""
        return self.parse in (parse_number, parse_integer)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def number(name: str, *, per_model: bool = False, default: Any = REQUIRED,
           search_range: Optional[tuple[float, float]] = None, doc: str = "") -> Parameter:
    return Parameter(name, parse_number, per_model, default, search_range, doc)


def integer(name: str, *, default: Any = REQUIRED, doc: str = "") -> Parameter:
    return Parameter(name, parse_integer, False, default, None, doc)


def flag(name: str, default: bool, doc: str = "") -> Parameter:
    return Parameter(name, parse_flag, False, default, None, doc)


@dataclass(frozen=True)
class TensorParameters:
    """Parameters resolved for one tensor: shared values, and per-model values keyed by model path."""

    shared: dict[str, Any]
    per_model: dict[str, dict[str, Any]]


@dataclass
class TensorMerge:
    """One tensor's merge as a kernel gets it.

    `tensors` holds every input in the compute dtype, keyed by model path, in mergekit's input order (the
    listed models, then the base); a kernel may pop an input once it is done with it so its memory is
    freed early. `seed` is this tensor's own seed (from the recipe's seed and the tensor's name) and
    `scratch(n)` a reusable flat buffer of at least n elements of the inputs' dtype and device."""

    name: str
    tensors: dict[str, torch.Tensor]
    base: Optional[str]
    params: TensorParameters
    seed: int
    scratch: Optional[Callable[[int], torch.Tensor]] = None

    @property
    def others(self) -> list[str]:
        """The inputs other than the base, in input order."""
        return [m for m in self.tensors if m != self.base]


@dataclass(frozen=True)
class MergeMethod(ABC):
    """A merge method: subclass it, give it its parameters, and add the instance to the registry."""

    name: str
    parameters: tuple[Parameter, ...]
    needs_base: bool = True  # the method subtracts (or interpolates from) `base_model`
    ignores_base: bool = False  # `base_model` is an input like any other (mergekit's BasePolicy.IGNORED)
    reference: str = ""  # the paper, for the README's method table
    mergekit: bool = True  # mergekit 0.1.5 builds it under the same name and parameters
    verified: str = "parity with mergekit"  # how the tests check it (the README's method table says so)
    _by_name: Mapping[str, Parameter] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {p.name: p for p in self.parameters})

    # --- parameters -------------------------------------------------------------------------------
    def parameter(self, name: str) -> Parameter:
        return self._by_name[name]

    @property
    def per_model_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parameters if p.per_model)

    @property
    def shared_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parameters if not p.per_model)

    def weighted_models(self, inputs: Sequence[str], base: Optional[str]) -> list[str]:
        """The inputs that take per-model parameters (mergekit: all but the base)."""
        return [m for m in inputs if m != base]

    # --- checks -------------------------------------------------------------------------------------
    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        """RecipeError unless these models (the recipe's, in order) and base can be merged by this method."""
        if self.needs_base and base is None:
            raise RecipeError(f"base_model is required by merge_method {self.name!r}")
        if self.needs_base and not [m for m in models if m != base]:
            raise RecipeError(f"{self.name} needs at least one model besides base_model")

    def check_tensor(self, tensor: str, params: TensorParameters) -> None:
        """RecipeError when the values resolved for `tensor` are out of the method's range."""

    # --- the merge ----------------------------------------------------------------------------------
    @abstractmethod
    def merge(self, job: TensorMerge) -> torch.Tensor:
        """The merged tensor (compute dtype, the inputs' device)."""

    # --- what the search reads ------------------------------------------------------------------------
    def mixing_weights(self, recipe: "PSRecipe", paths: Sequence[str]) -> Optional[list[float]]:
        """Each of `paths` (the recipe's sources, base first) as a weight of the merge seen as an affine mix
        of its sources, where the recipe says so with plain numbers (MERGE^3's prior for the merge-aware
        estimators); None when it does not (per-layer settings, or a method that is no mix)."""
        return None

    def repair(self, values: dict[str, list[float]], decimals: int) -> None:
        """Move decoded per-model values (name -> one value per parameter group, on a grid of `decimals`
        places) into the method's valid range, in place, so every genome of a search space decodes to a
        buildable recipe."""


def check_input_counts(method: str, models: Sequence[str], base: Optional[str], *, ignores_base: bool = False,
                       inputs: tuple[int, Optional[int]] = (1, None),
                       others: tuple[int, Optional[int]] = (0, None)) -> None:
    """RecipeError unless the merge's inputs (the listed models, then base_model when it is not listed, as
    mergekit orders them) and the inputs other than the base number within the given closed ranges."""
    every = list(dict.fromkeys([*models, *([base] if base is not None else [])]))
    rest = every if ignores_base else [m for m in every if m != base]
    for what, found, (low, high) in (("inputs", every, inputs), ("models besides base_model", rest, others)):
        if len(found) < low or (high is not None and len(found) > high):
            wanted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            raise RecipeError(f"{method} merges {wanted} {what}, got {len(found)}")


def plain_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def recipe_weight(recipe: "PSRecipe", path: str) -> Any:
    """A model's `weight` setting as the recipe gives it: its own, else the recipe-wide one, else 1."""
    listed = next((m for m in recipe.models if m.model == path), None)
    return (listed.parameters if listed else {}).get("weight", recipe.parameters.get("weight", 1.0))
