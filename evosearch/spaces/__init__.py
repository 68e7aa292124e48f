"""Search spaces: genome in [0, 1]^d <-> validated merge recipe. `build_space` turns a job's
`search_space` section into a space."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, ValidationError

from evosearch.spaces.base import DECIMALS, Range, Recipe, SearchSpace, SpaceError
from evosearch.spaces.combined import PS_SOURCE, CombinedSpace, CombinedSpaceConfig, FixedPartSpace
from evosearch.spaces.dfs import DFSSpace, DFSSpaceConfig
from evosearch.spaces.ps import PSSpace, PSSpaceConfig

SpaceConfig = Annotated[Union[PSSpaceConfig, DFSSpaceConfig, CombinedSpaceConfig], Field(discriminator="kind")]


class _SpaceSection(BaseModel):
    search_space: SpaceConfig


def parse_space_config(data: Any, *, source: str = "search_space") -> Union[PSSpaceConfig, DFSSpaceConfig,
                                                                               CombinedSpaceConfig]:
    """Validate a job file's `search_space` section; errors are one line naming the field."""
    try:
        return _SpaceSection(search_space=data).search_space
    except ValidationError as e:
        err = e.errors()[0]
        parts = [str(x) for x in err["loc"][1:]]
        # The first part is the union's tag (the `kind`), not a field.
        loc = ".".join(parts[1:] if parts and parts[0] in ("ps", "dfs", "ps+dfs") else parts)
        msg = err["msg"].removeprefix("Value error, ")
        raise SpaceError(f"{source}{'.' + loc if loc else ''}: {msg}") from None


def build_space(config: Union[PSSpaceConfig, DFSSpaceConfig, CombinedSpaceConfig]) -> SearchSpace:
    if isinstance(config, PSSpaceConfig):
        return PSSpace(config)
    if isinstance(config, DFSSpaceConfig):
        return DFSSpace(config)
    return CombinedSpace(config)


__all__ = [
    "DECIMALS", "PS_SOURCE", "CombinedSpace", "CombinedSpaceConfig", "DFSSpace", "DFSSpaceConfig",
    "FixedPartSpace", "PSSpace", "PSSpaceConfig", "Range", "Recipe", "SearchSpace", "SpaceConfig",
    "SpaceError", "build_space", "parse_space_config",
]
