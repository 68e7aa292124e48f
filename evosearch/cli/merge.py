"""`evosearch merge RECIPE OUT`: build a recipe (evosearch or mergekit YAML) into an HF model directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from evosearch.cli.common import verb
from evosearch.merge import DEFAULT_MAX_SHARD_SIZE


@verb
def merge_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML: an evosearch recipe (kind: ps|dfs) or a mergekit config."),
    out: Path = typer.Argument(..., help="Output directory (a plain Hugging Face model directory)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Also read .bin/.pt checkpoints (torch.load with weights_only)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and is not empty."),
    max_shard_size: str = typer.Option(DEFAULT_MAX_SHARD_SIZE, "--max-shard-size",
                                       help="Largest safetensors shard, e.g. 2GB, 500MB."),
    tokenizer_source: Optional[str] = typer.Option(None, "--tokenizer-source",
                                                   help="Model directory to take the tokenizer from."),
    max_path: Optional[int] = typer.Option(None, "--max-path", min=1,
                                           help="Refuse a DFS recipe whose layer path is longer than this."),
) -> None:
    """Merge the models a recipe names and write the result to OUT, streaming tensor by tensor.

    Examples:

      evosearch merge examples/merge_zoo_ties.yaml runs/merged-ties

      evosearch merge my-mergekit-config.yml out/merged --force
    """
    from evosearch.errors import RecipeError  # start-up time: torch, transformers
    from evosearch.merge.dfs import DFSError
    from evosearch.merge.export import export_recipe
    from evosearch.recipe import load_recipe

    start = time.perf_counter()
    loaded = load_recipe(recipe)  # its errors name the file already
    try:
        written = export_recipe(loaded, out, max_shard_size=max_shard_size, tokenizer_source=tokenizer_source,
                                allow_pickle=allow_pickle, force=force, max_path=max_path)
    except (RecipeError, DFSError) as e:  # the recipe's content, checked against its models
        raise type(e)(f"{recipe}: {e}") from None
    typer.echo(f"wrote {written} in {time.perf_counter() - start:.1f}s")
