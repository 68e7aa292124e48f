"""The numbers a picture of a recipe needs: for a PS merge, each numeric parameter per source and per layer
(as the merge engine resolves it for a tensor of that layer); for a DFS recipe, the layer path with the
residual-stream scale of every hop (and a PS picture for each PS-merged source of a PS+DFS recipe)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from evosearch.errors import RecipeError
from evosearch.merge.slice_plan import merge_parts, part_for
from evosearch.recipe import DFSRecipe, PSRecipe

# A tensor outside the decoder layers (embeddings; norms and the head resolve alike): the `rest` column.
OUTSIDE_LAYERS = "model.embed_tokens.weight"


def _label(path: str, names: Mapping[str, str]) -> str:
    """A source by the name the job file gave it, else by its directory's name."""
    by_dir = {directory: name for name, directory in names.items()}
    return by_dir.get(path, Path(path).name or path)


def _layers_named(recipe: PSRecipe, layer_prefix: str) -> int:
    """Layers a PS recipe's filters name (`model.layers.3.` -> at least 4); 0 when none does."""
    pattern = re.compile(re.escape(layer_prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for m in pattern.finditer(recipe.model_dump_json())]
    return max(found) + 1 if found else 0


def ps_picture(recipe: PSRecipe, names: Mapping[str, str], num_layers: Optional[int] = None,
               tensor_groups: tuple[str, ...] = (), layer_prefix: str = "model.layers.") -> dict[str, Any]:
    """{method, methods, columns, parameters: [{name, rows: [{label, values}]}]}: a column per layer (per
    tensor group where the space has them) and `rest`; a row per source for per-model parameters, one
    `shared` row for the others; `methods` names the method merging each column (a slices recipe may use
    several), and a parameter its column's method lacks is null there. `error` instead when the recipe
    cannot be resolved."""
    if recipe.slices is not None:
        layers = recipe.slices[-1].layer_range[1]
    else:
        layers = num_layers or _layers_named(recipe, layer_prefix) or 1
    groups = list(tensor_groups) or [None]
    columns: list[tuple[str, str]] = []  # label, probe tensor name
    for i in range(layers):
        for group in groups:
            label = f"L{i}" if group is None else f"L{i}.{group}"
            columns.append((label, f"{layer_prefix}{i}.{group or 'mlp'}.probe.weight"))
    columns.append(("rest", OUTSIDE_LAYERS))
    try:
        parts = merge_parts(recipe, layers)
        owners = [part_for(parts, name) for _, name in columns]
        resolved = [part.parameters(name) for part, (_, name) in zip(owners, columns)]
    except RecipeError as e:
        return {"method": recipe.merge_method, "error": str(e)}
    kinds = {}  # every numeric parameter of any part's method, in first-seen order
    weighted: dict[str, None] = {}
    for part in parts:
        kinds.update({p.name: p for p in part.method.parameters if p.numeric})
        weighted.update(dict.fromkeys(part.model_scopes))
    parameters = []
    for name, parameter in kinds.items():
        if parameter.per_model:
            rows = [{"label": _label(model, names),
                     "values": [r.per_model.get(model, {}).get(name) for r in resolved]} for model in weighted]
        else:
            rows = [{"label": "shared", "values": [r.shared.get(name) for r in resolved]}]
        parameters.append({"name": name, "rows": rows})
    methods = [part.method.name for part in owners]
    return {"method": " / ".join(dict.fromkeys(methods)), "methods": methods,
            "base_model": recipe.base_model and _label(recipe.base_model, names),
            "columns": [label for label, _ in columns], "parameters": parameters}


def dfs_picture(recipe: DFSRecipe, names: Mapping[str, str], **ps_settings: Any) -> dict[str, Any]:
    """{sources, num_layers, hops: [{step, source, layer, scale}], ps_sources: [{source, picture}]}."""
    labels = [_label(s, names) if isinstance(s, str) else f"PS merge {i}" for i, s in enumerate(recipe.sources)]
    hops = [{"step": step, "source": source, "layer": layer, "scale": scale}
            for step, ((source, layer), scale) in enumerate(zip(recipe.path(), recipe.hop_scales()))]
    return {"sources": labels, "num_layers": recipe.num_layers, "repeats": recipe.repeats,
            "embed_source": labels[recipe.embed_source], "hops": hops,
            "ps_sources": [{"source": labels[i], "picture": ps_picture(s, names, **ps_settings)}
                           for i, s in enumerate(recipe.sources) if isinstance(s, PSRecipe)]}


def recipe_picture(recipe: Union[PSRecipe, DFSRecipe], names: Mapping[str, str], space: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The picture of a candidate's recipe; `names` are the job's sources (name -> directory), `space` its
    search-space section (the PS part knows the layer count and the tensor groups)."""
    ps_space = (space.get("ps") or {}) if space.get("kind") == "ps+dfs" else space
    settings = dict(num_layers=ps_space.get("num_layers"), tensor_groups=tuple(ps_space.get("tensor_groups") or ()),
                    layer_prefix=ps_space.get("layer_prefix") or "model.layers.")
    if isinstance(recipe, DFSRecipe):
        return {"kind": "dfs", **dfs_picture(recipe, names, **settings)}
    return {"kind": "ps", **ps_picture(recipe, names, **settings)}
