"""Property-based fuzzing (hypothesis) of what users hand evosearch: job files, calibration files, recipes
and mergekit YAML. Valid documents, mutated (a value replaced by any YAML value, a key dropped, a stray key
added), or their YAML text cut and garbled. Each must load or fail with a `UsageError` (exit 2) of one line:
never another exception (a traceback at the command line), and nothing written to disk. Most examples call
the loaders in-process; a few go through `evosearch run` against a real store, which must stay as it was.

`pytest tests/test_fuzz.py -s` prints how many documents each loader was given."""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from evosearch.cli import app
from evosearch.errors import USAGE_EXIT, EvosearchError
from evosearch.recipe import load_recipe, parse_recipe
from evosearch.search.calibration_spec import load_calibration_spec, parse_calibration_spec
from evosearch.search.job import load_job, parse_job
from test_job import zoo_job

pytestmark = pytest.mark.slow  # about 2,000 documents: a minute on 2 cores

CASES: Counter = Counter()  # loader -> documents tried
FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                 st.text(max_size=12), st.sampled_from(["", "max", "min", "ps", "dfs", "ties", "slerp", "linear",
                                                        "/nonexistent", "../../etc", "base", "math", "lang",
                                                        "zoo_target", "cmaes", "nsga2", "float16", "1e999"]))
VALUE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) |
                     st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a document: dict keys and list positions, nested."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, prefix + (i,))
    return out


@st.composite
def mutated(draw, seed: dict) -> Any:
    """`seed` with one to three of: a value replaced, a key or item removed, a stray key added; or, rarely,
    a whole document of another shape."""
    if draw(st.integers(0, 19)) == 0:
        return draw(VALUE)
    doc = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if not isinstance(parent, (dict, list)):
            continue
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(VALUE)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(VALUE)
        else:
            parent.append(draw(VALUE))
    return doc


def assert_loads_or_one_line_usage_error(load: Callable[[Any], Any], doc: Any, what: str) -> bool:
    """True when `doc` was refused (as it must be refused: UsageError, one line)."""
    CASES[what] += 1
    try:
        load(doc)
    except EvosearchError as e:
        message = str(e)
        assert e.exit_code == USAGE_EXIT, f"{what}: exit {e.exit_code} for {doc!r}: {message}"
        assert message and "\n" not in message and message == message.strip(), f"{what}: {message!r}"
        return True
    return False


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nfuzzed documents: {dict(CASES)}, {sum(CASES.values())} in all")


@pytest.fixture(scope="module")
def seeds(tiny_zoo) -> dict[str, dict]:
    models = {name: str(path) for name, path in tiny_zoo.models.items()}
    return {
        "job": zoo_job(tiny_zoo, output_dir="/nonexistent/out"),
        "calibration": {
            "name": "calib", "seed": 0, "sources": models, "base_model": "base",
            "search_space": {"kind": "ps", "sources": ["math", "lang"], "methods": "task_arithmetic",
                             "bounds": {"weight": [0.0, 1.5]}},
            "n_random": 6, "n_heldout": 3, "tasks": ["zoo_math", "zoo_lang"],
            "include_path": str(tiny_zoo.include_path), "workers": {"count": 1, "num_cpus": 0.5},
            "report": {"estimators": ["gpirt"], "strategies": ["random"], "ks": [5]}},
        "ps recipe": {"kind": "ps", "merge_method": "ties", "base_model": models["base"], "dtype": "float32",
                      "parameters": {"normalize": False},
                      "models": [{"model": models["math"], "parameters": {"weight": [0.6, 1.0], "density": 0.7}},
                                 {"model": models["lang"], "parameters": {"weight": 1.0, "density": 0.7}}]},
        "dfs recipe": {"kind": "dfs", "sources": [models["math"], models["lang"]], "num_layers": 2,
                       "indicator": [True, False, True, True], "scales": [[1.0, 1.0], [1.0, 0.5]]},
        "mergekit models": {"merge_method": "ties", "base_model": models["base"], "dtype": "float32",
                            "parameters": {"normalize": False},
                            "models": [{"model": models["math"], "parameters": {"weight": 0.6, "density": 0.7}},
                                       {"model": models["lang"], "parameters": {"weight": 1.0, "density": 0.7}}]},
        "mergekit slices": {"merge_method": "slerp", "base_model": models["math"], "dtype": "float32",
                            "parameters": {"t": [0.2, 0.8]},
                            "slices": [{"sources": [{"model": models["math"], "layer_range": [0, 1]},
                                                    {"model": models["lang"], "layer_range": [0, 1]}]},
                                       {"sources": [{"model": models["lang"], "layer_range": [1, 2]},
                                                    {"model": models["math"], "layer_range": [1, 2]}]}]},
    }


LOADERS = {"job": lambda doc: parse_job(doc, "job.yaml"),
           "calibration": lambda doc: parse_calibration_spec(doc, "calib.yaml"),
           "ps recipe": parse_recipe, "dfs recipe": parse_recipe,
           "mergekit models": parse_recipe, "mergekit slices": parse_recipe}
EXAMPLES = {"job": 400, "calibration": 300, "ps recipe": 300, "dfs recipe": 200, "mergekit models": 300,
            "mergekit slices": 300}


@pytest.mark.parametrize("what", list(LOADERS))
def test_a_mutated_document_loads_or_is_refused_in_one_line(what, seeds, tiny_zoo):
    seed = seeds[what]
    LOADERS[what](copy.deepcopy(seed))  # the seed itself is valid
    before = _tree(Path(tiny_zoo.include_path).parent)

    @settings(FUZZ, max_examples=EXAMPLES[what])
    @given(doc=mutated(seed))
    def fuzz(doc):
        assert_loads_or_one_line_usage_error(LOADERS[what], doc, what)

    fuzz()
    assert _tree(Path(tiny_zoo.include_path).parent) == before


FILE_LOADERS = {"job": load_job, "calibration": load_calibration_spec, "mergekit models": load_recipe}


@pytest.mark.parametrize("what", list(FILE_LOADERS))
def test_garbled_yaml_text_is_refused_in_one_line(what, seeds, tmp_path):
    text = yaml.safe_dump(seeds[what], sort_keys=False)

    @settings(FUZZ, max_examples=100)
    @given(cut=st.integers(0, len(text)), length=st.integers(0, 40), junk=st.binary(max_size=12))
    def fuzz(cut, length, junk):
        path = tmp_path / "doc.yaml"
        path.write_bytes(text[:cut].encode() + junk + text[cut + length:].encode())
        assert_loads_or_one_line_usage_error(FILE_LOADERS[what], path, f"{what} (YAML text)")

    fuzz()


def test_malformed_job_files_through_the_cli_exit_2_in_one_line_and_leave_the_store_alone(seeds, tmp_path):
    store = tmp_path / "store" / "evosearch.db"
    from storage import Store

    with Store.open(f"sqlite:///{store}") as kept:  # closed: SQLite's -wal/-shm files must not vary the tree
        kept.create_job("kept", {}, 0, str(tmp_path))
    before = _tree(tmp_path)
    runner = CliRunner()
    refused = []

    @settings(FUZZ, max_examples=12)
    @given(doc=mutated({**seeds["job"], "store": f"sqlite:///{store}", "output_dir": str(tmp_path / "out")}))
    def fuzz(doc):
        assume(assert_loads_or_one_line_usage_error(LOADERS["job"], doc, "job (in-process, for the CLI)"))
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(doc))
        result = runner.invoke(app, ["run", str(path)])
        CASES["job (evosearch run)"] += 1
        assert result.exit_code == USAGE_EXIT and result.output.startswith("error: "), result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
        path.unlink()
        refused.append(doc)

    fuzz()
    assert refused and _tree(tmp_path) == before
