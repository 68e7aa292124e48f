"""Search spaces: genome in [0, 1]^d <-> validated merge recipe, one per `kind`. `build_space` turns a job's
`search_space` section into a space; adding a space is one module (its config and its `SearchSpace`) and
one entry of `SPACES`, from which the job file's `search_space` union is made."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Field

from evosearch.config_file import parse_section
from evosearch.spaces.base import DECIMALS, Range, Recipe, SearchSpace, SpaceError
from evosearch.spaces.combined import PS_SOURCE, CombinedSpace, CombinedSpaceConfig, FixedPartSpace
from evosearch.spaces.dfs import DFSSpace, DFSSpaceConfig
from evosearch.spaces.ps import PSSpace, PSSpaceConfig

# kind -> (its config, its space)
SPACES: dict[str, tuple[type[BaseModel], type[SearchSpace]]] = {
    "ps": (PSSpaceConfig, PSSpace),
    "dfs": (DFSSpaceConfig, DFSSpace),
    "ps+dfs": (CombinedSpaceConfig, CombinedSpace),
}
SpaceConfig = Annotated[Union[tuple(config for config, _ in SPACES.values())], Field(discriminator="kind")]


class _SpaceSection(BaseModel):
    search_space: SpaceConfig


def parse_space_config(data: Any, *, source: str = "search_space") -> Union[PSSpaceConfig, DFSSpaceConfig,
                                                                               CombinedSpaceConfig]:
    """Validate a job file's `search_space` section; errors are one line naming the field."""
    return parse_section(_SpaceSection, "search_space", data, source, SPACES, SpaceError)


def build_space(config: Union[PSSpaceConfig, DFSSpaceConfig, CombinedSpaceConfig]) -> SearchSpace:
    return SPACES[config.kind][1](config)


__all__ = [
    "DECIMALS", "PS_SOURCE", "CombinedSpace", "CombinedSpaceConfig", "DFSSpace", "DFSSpaceConfig",
    "FixedPartSpace", "PSSpace", "PSSpaceConfig", "Range", "Recipe", "SPACES", "SearchSpace", "SpaceConfig",
    "SpaceError", "build_space", "parse_space_config",
]
