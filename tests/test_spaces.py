"""Search spaces: decode/encode round trips, repair of invalid genomes, canonical recipes (one hash per
merge), and the emitted per-layer settings read back through mergekit's own resolver."""

from __future__ import annotations

import numpy as np
import pytest
from mergekit.config import MergeConfiguration, evaluate_setting

from evosearch.recipe import DFSRecipe, PSRecipe, parse_recipe, recipe_hash
from evosearch.spaces import (
    CombinedSpace,
    DFSSpace,
    PSSpace,
    SpaceError,
    build_space,
    parse_space_config,
)

PS_CONFIGS = {
    "linear": dict(kind="ps", sources=["a", "b"], methods="linear", parameters={"normalize": True}),
    "blocks_and_tensor_groups": dict(kind="ps", sources=["a", "b"], base_model="base", methods="ties",
                                     num_layers=8, layer_groups=3, tensor_groups=["self_attn", "mlp"],
                                     search_globals={"lambda": [0.5, 1.5]}),
    "every_layer": dict(kind="ps", sources=["a", "b", "c"], base_model="base", methods="dare_linear",
                        num_layers=12, layer_groups="every_layer", fixed_per_model={"density": 0.5}),
    "method_choice": dict(kind="ps", sources=["a", "b"], base_model="base",
                          methods=["linear", "ties", "della", "breadcrumbs"], tensor_groups=["mlp"],
                          parameters={"normalize": True, "lambda": 1.0}, seed=42),
    "slerp": dict(kind="ps", sources=["a", "b"], base_model="a", methods="slerp", search_globals={"t": [0, 1]}),
    "slerp_per_layer": dict(kind="ps", sources=["a", "b"], base_model="a", methods="slerp", num_layers=6,
                            layer_groups="every_layer", tensor_groups=["self_attn"], search_globals={"t": [0, 1]},
                            grouped_globals=True),
    "method_per_block": dict(kind="ps", sources=["a", "b"], base_model="base", num_layers=6, layer_groups=3,
                             methods=["task_arithmetic", "ties", "della", "iso_c", "tsv_m", "sce"],
                             methods_per_layer_group=True, tensor_groups=["mlp"], grouped_globals=True,
                             search_globals={"lambda": [0.5, 1.5]}, parameters={"normalize": False}),
}
DFS_CONFIG = dict(kind="dfs", sources=["a", "b"], num_layers=4, repeats=2, scale_range=[0.5, 2.0])
COMBINED_CONFIG = dict(kind="ps+dfs",
                       ps=dict(sources=["a", "b"], base_model="base", methods="task_arithmetic"),
                       dfs=dict(sources=["b", "@ps"], num_layers=3, repeats=2, max_path=4, embed_source=1))


def space(cfg):
    return build_space(parse_space_config(cfg))


def genomes(sp, n=20, seed=0):
    return np.random.default_rng(seed).random((n, sp.dim))


ALL_CONFIGS = {**PS_CONFIGS, "dfs": DFS_CONFIG, "combined": COMBINED_CONFIG,
               "dfs_anchored": {**DFS_CONFIG, "anchor_ends": True, "max_path": 5}}


@pytest.mark.parametrize("name", sorted(ALL_CONFIGS))
def test_decode_encode_round_trip_and_recipes_validate(name):
    sp = space(ALL_CONFIGS[name])
    assert len(sp.gene_names()) == sp.dim == len(set(sp.gene_names()))
    for g in genomes(sp):
        r = sp.decode(g)
        # The recipe survives the shared schema's own parser (the job file / export path).
        assert parse_recipe(r.model_dump(mode="json")) == r
        back = sp.decode(sp.encode(r))
        assert back == r and recipe_hash(back) == recipe_hash(r)


@pytest.mark.parametrize("name", sorted(ALL_CONFIGS))
def test_decode_is_canonical_and_total(name):
    sp = space(ALL_CONFIGS[name])
    g = genomes(sp, n=1, seed=1)[0]
    assert recipe_hash(sp.decode(g)) == recipe_hash(sp.decode(g.copy()))
    # Float noise far below the rounding step does not split the cache...
    assert recipe_hash(sp.decode(np.clip(g + 1e-10, 0, 1))) == recipe_hash(sp.decode(g))
    # ...out-of-box genes are clipped, NaN genes read as the centre, nothing raises.
    assert sp.decode(g * 10 - 5) == sp.decode(np.clip(g * 10 - 5, 0, 1))
    sp.decode(np.full(sp.dim, np.nan))
    with pytest.raises(SpaceError, match="genes"):
        sp.decode(np.zeros(sp.dim + 1))


def test_ps_per_layer_filters_mean_what_mergekit_reads():
    cfg = PS_CONFIGS["blocks_and_tensor_groups"]
    sp = space(cfg)
    g = genomes(sp, n=1, seed=3)[0]
    recipe = sp.decode(g)
    mk = MergeConfiguration.model_validate(recipe.to_mergekit())
    names = sp.gene_names()
    blocks = {0: "L0-2", 1: "L0-2", 2: "L0-2", 3: "L3-5", 4: "L3-5", 5: "L3-5", 6: "L6-7", 7: "L6-7"}
    for m, model in enumerate(mk.models):
        for param, lo, hi in (("weight", 0.0, 1.0), ("density", 0.1, 1.0)):
            setting = model.parameters[param]

            def expected(group):
                return round(lo + g[names.index(f"m{m}.{param}.{group}")] * (hi - lo), 6)

            for layer in range(8):
                for tensor, group in (("self_attn.q_proj.weight", "self_attn"), ("mlp.down_proj.weight", "mlp"),
                                      ("input_layernorm.weight", None)):
                    name = f"model.layers.{layer}.{tensor}"
                    want = expected(f"{blocks[layer]}.{group}" if group else "rest")
                    assert evaluate_setting(name, setting, validate=float) == pytest.approx(want)
            assert evaluate_setting("model.embed_tokens.weight", setting, validate=float) == expected("rest")
    assert recipe.parameters == {"lambda": round(0.5 + g[-1], 6)}


def test_ps_layer_filters_do_not_confuse_layer_3_with_layer_30():
    sp = space(dict(kind="ps", sources=["a"], methods="linear", num_layers=32, layer_groups="every_layer"))
    g = np.linspace(0, 1, sp.dim)
    mk = MergeConfiguration.model_validate(sp.decode(g).to_mergekit())
    setting = mk.models[0].parameters["weight"]
    for layer in (3, 30, 31, 1, 10):
        got = evaluate_setting(f"model.layers.{layer}.mlp.up_proj.weight", setting, validate=float)
        assert got == pytest.approx(round(g[layer], 6))


def test_slerp_t_per_layer_reads_back_through_mergekit():
    sp = space(PS_CONFIGS["slerp_per_layer"])
    assert sp.dim == 6 + 1 and sp.gene_names()[0] == "global.t.L0.self_attn"
    g = np.linspace(0.0, 1.0, sp.dim)
    mk = MergeConfiguration.model_validate(sp.decode(g).to_mergekit())
    for layer in range(6):
        t = evaluate_setting(f"model.layers.{layer}.self_attn.v_proj.weight", mk.parameters["t"], validate=float)
        assert t == pytest.approx(round(g[layer], 6))
    assert evaluate_setting("lm_head.weight", mk.parameters["t"], validate=float) == 1.0


def test_ps_method_gene_picks_the_method_and_only_its_parameters():
    sp = space(PS_CONFIGS["method_choice"])
    assert sp.gene_names()[0] == "method"
    seen = {}
    for gene0 in (0.0, 0.3, 0.6, 0.99):
        g = np.full(sp.dim, 0.5)
        g[0] = gene0
        r = sp.decode(g)
        seen[r.merge_method] = r
    assert list(seen) == ["linear", "ties", "della", "breadcrumbs"]
    assert set(seen["linear"].models[0].parameters) == {"weight"}
    assert seen["linear"].parameters == {"normalize": True}  # lambda is not linear's
    assert set(seen["della"].models[0].parameters) == {"weight", "density", "epsilon"}
    assert seen["della"].parameters == {"lambda": 1.0, "normalize": True}
    assert all(r.seed == 42 for r in seen.values())
    # Genes a method does not use do not change its recipe: same hash, evaluated once.
    g = np.full(sp.dim, 0.5)
    g[0] = 0.0
    other = g.copy()
    other[[i for i, n in enumerate(sp.gene_names()) if ".density." in n]] = 0.9
    assert recipe_hash(sp.decode(g)) == recipe_hash(sp.decode(other))


def test_ps_method_gene_per_layer_block_gives_each_block_its_method_and_only_its_parameters():
    sp = space(PS_CONFIGS["method_per_block"])
    names = sp.gene_names()
    assert names[:3] == ["method.L0-1", "method.L2-3", "method.L4-5"]
    g = np.full(sp.dim, 0.5)
    g[:3] = [0.2, 0.6, 0.2]  # ties, iso_c, ties
    r = sp.decode(g)
    assert r.merge_method == "ties" and [s.merge_method for s in r.slices] == [None, "iso_c", None]
    assert [list(s.layer_range) for s in r.slices] == [[0, 2], [2, 4], [4, 6]]
    assert [s.model for s in r.slices[1].sources] == ["a", "b", "base"]
    assert set(r.slices[0].sources[0].parameters) == {"weight", "density"}
    assert set(r.slices[1].sources[0].parameters) == {"weight"}  # iso_c has no density
    assert r.parameters == {"normalize": False} and set(r.slices[1].parameters) == {"lambda"}
    assert r.mergekit_blocker()  # a method per block, one of them evosearch's own
    # A density gene of block L2-3 (iso_c there) does not change the recipe; one of block L0-1 does.
    idle, used = g.copy(), g.copy()
    idle[[i for i, n in enumerate(names) if n.endswith(".density.L2-3.mlp")]] = 0.9
    used[[i for i, n in enumerate(names) if n.endswith(".density.L0-1.mlp")]] = 0.9
    assert recipe_hash(sp.decode(idle)) == recipe_hash(r) != recipe_hash(sp.decode(used))
    # All blocks on one method: the plain `models:` recipe of that method.
    g[:3] = 0.6
    assert sp.decode(g).slices is None and sp.decode(g).merge_method == "iso_c"


def test_della_epsilon_is_repaired_to_keep_density_plus_minus_epsilon_inside_0_1():
    sp = space(dict(kind="ps", sources=["a", "b"], base_model="base", methods="della",
                    bounds={"density": [0.0, 1.0], "epsilon": [0.0, 0.5]}))
    names = sp.gene_names()
    for density in (0.02, 0.5, 0.97, 1.0, 0.0):
        g = np.full(sp.dim, 1.0)
        g[[i for i, n in enumerate(names) if ".density" in n]] = density
        for model in sp.decode(g).models:
            d, e = model.parameters["density"], model.parameters["epsilon"]
            if 0 < d < 1:
                assert 0 < d - e and d + e < 1
            else:
                assert e == 0.5  # mergekit skips the drop entirely at density 0 or 1


@pytest.mark.parametrize("bad, field", [
    (dict(kind="ps", sources=["a"], methods="ties"), "base_model"),
    (dict(kind="ps", sources=["a"], methods="nope"), "methods"),
    (dict(kind="ps", sources=["a"], methods="linear", layer_groups=4), "num_layers"),
    (dict(kind="ps", sources=["a"], methods="linear", num_layers=4, layer_groups=5), "layer_groups"),
    (dict(kind="ps", sources=["a"], methods="linear", bounds={"density": [0, 1]}), "bounds.density"),
    (dict(kind="ps", sources=["a"], methods="linear", bounds={"weight": [1, 0]}), "bounds.weight"),
    (dict(kind="ps", sources=["a"], methods="linear", search_globals={"lambda": [0, 1]}), "search_globals.lambda"),
    (dict(kind="ps", sources=["a", "b"], base_model="c", methods="slerp"), "slerp"),
    (dict(kind="dfs", sources=["a"], num_layers=2, embed_source=1), "embed_source"),
    (dict(kind="dfs", sources=["a"], num_layers=2, anchor_ends=True, max_path=1), "max_path"),
    (dict(kind="dfs", sources=["a"], num_layers=2, scale_range=[-1, 1]), "scale_range"),
    (dict(kind="ps+dfs", ps=dict(sources=["a"], methods="linear"), dfs=dict(sources=["a"], num_layers=2)), "@ps"),
    (dict(kind="what"), "kind"),
])
def test_bad_configs_fail_up_front_with_one_line(bad, field):
    with pytest.raises(SpaceError) as e:
        space(bad)
    msg = str(e.value)
    assert field in msg and "\n" not in msg and msg.startswith("search_space")


# --- DFS ---------------------------------------------------------------------------------------------
def dfs_genome(sp: DFSSpace, on: dict[int, float], scales: float = 0.5) -> np.ndarray:
    g = np.concatenate([np.full(len(sp._free), 0.2), np.full(sp.dim - len(sp._free), scales)])
    for slot, value in on.items():
        g[sp._free.index(slot)] = value
    return g


def test_dfs_indicator_threshold_and_slot_layout():
    sp = space(DFS_CONFIG)
    assert sp.dim == 2 * 4 * 2 + 4
    r = sp.decode(dfs_genome(sp, {1: 0.51, 6: 0.9, 9: 0.5}))  # 0.5 itself is off, as Sakana
    assert r.path() == [(0, 1), (1, 2)]
    # Hop 0 -> 1 uses scales[0][1] = 0.5 + 0.5 * 1.5.
    assert r.hop_scales() == [1.0, 1.25]


def test_dfs_all_off_turns_on_the_strongest_slot():
    sp = space(DFS_CONFIG)
    g = dfs_genome(sp, {5: 0.45, 12: 0.3})
    assert sp.decode(g).path() == [(1, 1)]
    assert sp.decode(np.zeros(sp.dim)).path() == [(0, 0)]  # ties: the first slot


def test_dfs_too_long_path_keeps_the_highest_genes():
    sp = space({**DFS_CONFIG, "max_path": 3})
    g = dfs_genome(sp, {0: 0.6, 2: 0.9, 3: 0.7, 8: 0.95, 15: 0.55, 11: 0.7})
    # Highest: slot 8 (0.95), slot 2 (0.9), then 3 and 11 tie at 0.7 -> the earlier slot 3.
    assert np.flatnonzero(sp.decode(g).indicator).tolist() == [2, 3, 8]


def test_dfs_anchored_path_starts_and_ends_at_the_anchor_model():
    sp = space({**DFS_CONFIG, "anchor_ends": True, "anchor_source": 1, "max_path": 4})
    # Slots of source 1 in repeat 0 are 4..7, in repeat 1 12..15: free slots lie strictly between 4 and 15.
    assert sp._free == list(range(5, 15))
    for g in genomes(sp, n=30, seed=5):
        r = sp.decode(g)
        path = r.path()
        assert path[0] == (1, 0) and path[-1] == (1, 3) and len(path) <= 4
    assert sp.decode(np.zeros(sp.dim)).path() == [(1, 0), (1, 3)]


def test_dfs_scales_the_path_never_uses_are_canonical():
    sp = space(DFS_CONFIG)
    g = dfs_genome(sp, {0: 0.9, 1: 0.9, 5: 0.9})  # hops 0->0 and 0->1 only
    r = sp.decode(g)
    assert r.scales == [[1.25, 1.25], [1.0, 1.0]]
    other = g.copy()
    other[-2:] = [0.1, 0.7]  # scales[1][0], scales[1][1]: hops the path never makes
    assert recipe_hash(sp.decode(other)) == recipe_hash(r)
    other[-4] = 0.1  # scales[0][0]: used
    assert recipe_hash(sp.decode(other)) != recipe_hash(r)


def test_dfs_encode_refuses_recipes_outside_the_space():
    sp = space({**DFS_CONFIG, "anchor_ends": True})
    free = space(DFS_CONFIG)
    r = free.decode(dfs_genome(free, {1: 0.9}))
    with pytest.raises(SpaceError, match="anchor"):
        sp.encode(r)
    with pytest.raises(SpaceError, match="num_layers"):
        free.encode(r.model_copy(update={"num_layers": 8, "indicator": r.indicator * 2}))
    with pytest.raises(SpaceError, match="DFS recipes"):
        free.encode(PSRecipe(merge_method="linear", models=[{"model": "a"}]))


# --- PS + DFS ----------------------------------------------------------------------------------------
def test_combined_space_puts_the_ps_merge_in_its_source_slot():
    sp: CombinedSpace = space(COMBINED_CONFIG)
    assert sp.dim == sp.ps.dim + sp.dfs.dim
    g = genomes(sp, n=1, seed=2)[0]
    r = sp.decode(g)
    assert isinstance(r, DFSRecipe) and r.sources[0] == "b" and r.embed_source == 1
    assert r.sources[1] == sp.ps.decode(g[:sp.ps.dim])
    assert r.sources[1].merge_method == "task_arithmetic"


def test_combined_space_part_can_be_frozen_for_a_staged_search():
    sp: CombinedSpace = space(COMBINED_CONFIG)
    g = genomes(sp, n=1, seed=4)[0]
    ps_genes, dfs_genes = sp.split(g)
    stage2 = sp.fix("ps", ps_genes)
    assert stage2.dim == sp.dfs.dim and stage2.gene_names()[0].startswith("dfs.")
    assert stage2.decode(dfs_genes) == sp.decode(g)
    np.testing.assert_allclose(stage2.decode(stage2.encode(sp.decode(g))).indicator, sp.decode(g).indicator)
    # A recipe whose PS part is not the frozen one is not in the stage's space.
    other = sp.decode(sp.join(1 - ps_genes, dfs_genes))
    with pytest.raises(SpaceError, match="frozen"):
        stage2.encode(other)
    stage1 = sp.fix("dfs", dfs_genes)
    assert stage1.dim == sp.ps.dim and stage1.decode(ps_genes) == sp.decode(g)
    with pytest.raises(SpaceError, match="part"):
        sp.fix("both", ps_genes)


def test_describe_names_the_space():
    for cfg in ALL_CONFIGS.values():
        sp = space(cfg)
        assert f"{sp.dim} genes" in sp.describe()
    assert isinstance(space(PS_CONFIGS["linear"]), PSSpace)
