"""Read a mergekit 0.1.5 config, in its `models:` or `slices:` form, as evosearch recipe data.

`evosearch.recipe.parse_recipe` calls `recipe_data` on a config without `kind` and validates what comes
back, so this module gives plain dicts and never imports the recipe classes.

* `models:` -> a PS recipe, field for field.
* `slices:` that take every layer once, layer for layer (slice k merges output layers [a, b) from layers
  [a, b) of each of its sources, and the slices tile all the models' layers) -> a PS recipe in slices form:
  exact, with mergekit's per-slice gradient coordinate, precedence and embeddings/head rule.
* any other `slices:` (layer stacks: frankenmerges, depth up-scaling, passthrough or merged) -> a DFS recipe
  whose path is the slices' layers in order. A plain passthrough slice reads its model directly; a merged
  (or scaled) slice reads a PS source that merges like layers as that slice does. DFS takes embeddings,
  final norm and head from one source; when the first slice (embeddings) and the last (norm, head) are
  merged differently, one more PS source merges the embeddings as the first slice and the rest as the last.
  What has no exact DFS form is refused with one line: a slice that merges layer i of one model with layer
  j != i of another, models of different depths, and stacked slices whose shared parameters filter by a
  name with a digit in it (mergekit matches those against the output layer's name, which a PS source
  does not see).

mergekit ignores parameters its method does not take (mergekit-evolve writes `normalize` and `int8_mask`
into slerp configs); so does this reader, for names that are some other method's parameter. A name no
method knows is left in, so validation refuses it as the typo it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from evosearch.errors import RecipeError
from evosearch.merge.methods import METHODS, get_method

UNSUPPORTED = ("modules", "tokenizer", "chat_template")
_FIELDS = ("merge_method", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source")
_EVERY_PARAMETER = frozenset(p.name for m in METHODS.values() for p in m.parameters)


def recipe_data(config: dict[str, Any]) -> dict[str, Any]:
    """The evosearch recipe (as data, `kind` set) that builds what mergekit builds from `config`."""
    unsupported = [k for k in UNSUPPORTED if config.get(k)]
    if unsupported:
        raise RecipeError(f"mergekit config uses {unsupported}, which evosearch does not support")
    if config.get("slices") and config.get("models"):
        raise RecipeError("mergekit config gives both models and slices; give one")
    method = get_method(str(config.get("merge_method")))
    top = {k: config[k] for k in _FIELDS if config.get(k) is not None}
    if "parameters" in top:
        top["parameters"] = _own(top["parameters"], method.shared_names | method.per_model_names)
    if not config.get("slices"):
        models = [_own_model(m, method) for m in _list(config.get("models") or [], "models")]
        return {"kind": "ps", **top, "models": models}
    slices = [_read_slice(piece, k, method) for k, piece in enumerate(_list(config["slices"], "slices"))]
    depth = _common_depth([s["model"] for piece in slices for s in piece["sources"]])
    if _layer_for_layer(slices, depth):
        return {"kind": "ps", **top, "slices": slices}
    return _stack(top, slices, depth)


# --- reading ------------------------------------------------------------------------------------------
def _list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise RecipeError(f"mergekit config: {where} must be a non-empty list")
    return value


def _own(settings: Any, allowed: frozenset[str]) -> Any:
    """`settings` without the parameters of other methods (mergekit ignores those)."""
    if not isinstance(settings, dict):
        return settings
    return {k: v for k, v in settings.items() if k in allowed or k not in _EVERY_PARAMETER}


def _own_model(entry: Any, method) -> Any:
    if isinstance(entry, dict) and entry.get("parameters") is not None:
        return {**entry, "parameters": _own(entry["parameters"], method.per_model_names)}
    return {k: v for k, v in entry.items() if v is not None} if isinstance(entry, dict) else entry


def _read_slice(piece: Any, k: int, method) -> dict[str, Any]:
    where = f"slices[{k}]"
    if not isinstance(piece, dict):
        raise RecipeError(f"mergekit config: {where} must be a mapping with sources")
    unknown = sorted(set(piece) - {"sources", "base_model", "parameters", "residual_weight"})
    if unknown:
        raise RecipeError(f"mergekit config: {where}.{unknown[0]}: unknown field")
    if piece.get("residual_weight") is not None:
        raise RecipeError(f"mergekit config: {where}.residual_weight is not supported by evosearch")
    sources = []
    for i, src in enumerate(_list(piece.get("sources"), f"{where}.sources")):
        layers = src.get("layer_range") if isinstance(src, dict) else None
        if not (isinstance(layers, list) and len(layers) == 2 and all(isinstance(x, int) for x in layers)
                and 0 <= layers[0] < layers[1]):
            raise RecipeError(f"mergekit config: {where}.sources[{i}].layer_range must be [start, end) with "
                              f"0 <= start < end, got {layers!r}")
        if not isinstance(src.get("model"), str) or not src["model"]:
            raise RecipeError(f"mergekit config: {where}.sources[{i}].model must be a model directory")
        sources.append(_own_model({**src, "layer_range": list(layers)}, method))
    lengths = {s["layer_range"][1] - s["layer_range"][0] for s in sources}
    if len(lengths) != 1:
        raise RecipeError(f"mergekit config: {where}: its sources have different numbers of layers")
    out: dict[str, Any] = {"sources": sources}
    if piece.get("base_model"):
        out["base_model"] = piece["base_model"]
    if piece.get("parameters"):
        out["parameters"] = _own(piece["parameters"], method.shared_names | method.per_model_names)
    return out


def _common_depth(models: list[str]) -> int:
    depths = {m: _num_layers(m) for m in dict.fromkeys(models)}
    if len(set(depths.values())) != 1:
        listing = ", ".join(f"{m}: {d}" for m, d in depths.items())
        raise RecipeError(f"mergekit config: the slices' models have different numbers of layers ({listing}); "
                          f"evosearch takes layers from models of one depth")
    return next(iter(depths.values()))


def _num_layers(model: str) -> int:
    path = Path(model).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        raise RecipeError(f"model {model}: no readable config.json; reading a mergekit slices config needs "
                          f"each model's local directory, to count its layers") from None
    text_config = config.get("text_config") if isinstance(config, dict) else None
    layers = config.get("num_hidden_layers", (text_config if isinstance(text_config, dict) else {}).get(
        "num_hidden_layers")) if isinstance(config, dict) else None
    if not isinstance(layers, int) or layers < 1:
        raise RecipeError(f"model {model}: config.json has no num_hidden_layers")
    return layers


def _layer_for_layer(slices: list[dict], depth: int) -> bool:
    end = 0
    for piece in slices:
        ranges = {tuple(s["layer_range"]) for s in piece["sources"]}
        if len(ranges) != 1 or next(iter(ranges))[0] != end:
            return False
        end = next(iter(ranges))[1]
    return end == depth


# --- layer stacks -> DFS ----------------------------------------------------------------------------------
def _stack(top: dict[str, Any], slices: list[dict], depth: int) -> dict[str, Any]:
    method = get_method(top["merge_method"])
    sources: list[Any] = []  # DFS sources: model paths or PS recipe data, each once

    def source_index(source: Any) -> int:
        if source not in sources:
            sources.append(source)
        return sources.index(source)

    def setup(piece: dict) -> Any:
        """What slice `piece`'s layers are read from: its model (a plain passthrough copy) or a PS merge whose
        own slice over the same layers keeps the slice's gradient coordinate (the other layers, never read,
        are merged alike)."""
        start, stop = piece["sources"][0]["layer_range"]
        windows = [(a, b, piece) for a, b in ((0, start), (start, stop), (stop, depth)) if a < b]
        return _plain_copy(method, top, piece) or _merged(top, windows)

    path: list[tuple[int, int]] = []
    for k, piece in enumerate(slices):
        starts = {s["layer_range"][0] for s in piece["sources"]}
        if len(starts) != 1:
            models = ", ".join(f"{s['model']} {s['layer_range']}" for s in piece["sources"])
            raise RecipeError(f"mergekit config: slices[{k}] merges unlike layers ({models}); evosearch merges "
                              f"layer i of one model only with layer i of another")
        _check_shared_filters(top, piece, k)
        index = source_index(setup(piece))
        path += [(index, layer) for layer in range(*piece["sources"][0]["layer_range"])]
    # mergekit merges the embeddings as the first slice does and the final norm and head as the last one.
    first, last = slices[0], slices[-1]
    if setup(first) == setup(last):
        embed = source_index(setup(first))
    elif depth < 2:
        raise RecipeError("mergekit config: the first and last slices merge embeddings and head differently, "
                          "which needs models of at least 2 layers")
    else:
        embed = source_index(_merged(top, [(0, depth - 1, first), (depth - 1, depth, last)]))
    repeats, indicator = _indicator(path, len(sources), depth)
    out = {"kind": "dfs", "sources": sources, "num_layers": depth, "repeats": repeats, "indicator": indicator,
           "scales": [[1.0] * len(sources) for _ in sources], "embed_source": embed}
    if top.get("tokenizer_source"):
        out["tokenizer_source"] = top["tokenizer_source"]
    return out


def _plain_copy(method, top: dict, piece: dict) -> Optional[str]:
    """The model a passthrough slice copies unscaled, else None."""
    if method.name != "passthrough" or len(piece["sources"]) != 1:
        return None
    settings = [piece["sources"][0].get("parameters") or {}, piece.get("parameters") or {},
                top.get("parameters") or {}]
    return None if any("scale" in s for s in settings) else piece["sources"][0]["model"]


def _merged(top: dict[str, Any], windows: list[tuple[int, int, dict]]) -> dict[str, Any]:
    """PS recipe data merging layers [start, stop) of the models as slice `piece` merges its own, for each
    (start, stop, piece) of `windows` (which tile the layers): a whole-model PS source for a DFS path."""
    pieces = []
    for start, stop, piece in windows:
        sources = [{**s, "layer_range": [start, stop]} for s in piece["sources"]]
        pieces.append({**piece, "sources": sources})
    return {"kind": "ps", **top, "slices": pieces}


_DIGIT = re.compile(r"\d")


def _check_shared_filters(top: dict, piece: dict, k: int) -> None:
    for where, settings in ((f"slices[{k}].parameters", piece.get("parameters")), ("parameters", top.get("parameters"))):
        for name, setting in (settings or {}).items():
            conditions = setting if isinstance(setting, list) else [setting]
            for c in conditions:
                if isinstance(c, dict) and _DIGIT.search(str(c.get("filter") or "")):
                    raise RecipeError(f"mergekit config: {where}.{name} filters by {c['filter']!r} in a layer "
                                      f"stack; mergekit matches it against output layer names, which evosearch's "
                                      f"layer-stack form cannot reproduce")


def _indicator(path: list[tuple[int, int]], n_sources: int, depth: int) -> tuple[int, list[bool]]:
    """The DFS slots (repeat, source, layer) that run `path` in slot order, and how many repeats that takes."""
    block = n_sources * depth
    slots, repeat, previous = [], 0, -1
    for source, layer in path:
        slot = source * depth + layer
        if slot <= previous:
            repeat += 1
        slots.append(repeat * block + slot)
        previous = slot
    indicator = [False] * (block * (repeat + 1))
    for slot in slots:
        indicator[slot] = True
    return repeat + 1, indicator
