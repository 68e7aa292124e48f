"""Before a search starts: can its workers load the models, and build its space's recipes from them?

The workers would find a misfit only once the job is in the store and Ray is up, and then fail every
candidate; this check reads checkpoint headers and configs only, in about a second."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from evosearch.merge.dfs import DFSError
from evosearch.merge.export import check_buildable
from evosearch.merge.sources import SourceError, check_model_set
from evosearch.recipe import RecipeError
from evosearch.spaces import SpaceConfig, build_space
from evosearch.spaces.combined import CombinedSpaceConfig
from evosearch.spaces.ps import PSSpaceConfig


def check_search_models(source_paths: Sequence[str], space_config: SpaceConfig) -> None:
    """SourceError, one line starting with the job field at fault (`sources:` or `search_space:`), unless
    every model opens with a tokenizer and fits the others (vocabularies may differ when the PS space has a
    tokenizer_source), and the recipe at the space's centre builds."""
    try:
        check_model_set(source_paths, tokenizer_source=_ps_tokenizer_source(space_config))
    except SourceError as e:
        raise SourceError(f"sources: {e}") from None
    space = build_space(space_config)
    try:
        check_buildable(space.decode(np.full(space.dim, 0.5)))
    except (SourceError, RecipeError, DFSError) as e:
        raise SourceError(f"search_space: {e}") from None


def _ps_tokenizer_source(space_config: SpaceConfig) -> Optional[str]:
    """The tokenizer_source of the space's PS merges, which map vocabularies (a DFS copies one source's)."""
    ps = space_config.ps if isinstance(space_config, CombinedSpaceConfig) else space_config
    return ps.tokenizer_source if isinstance(ps, PSSpaceConfig) else None
