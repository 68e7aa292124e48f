"""Fixtures shared across test modules: a real local Ray, started once per session on 127.0.0.1."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from pg import pg_server, pg_url  # noqa: F401  (session PostgreSQL for the store tests)

TESTS_DIR = Path(__file__).resolve().parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The longest modules, longest first (serial seconds on 2 cores, 2026-12-02: chaos 223, bench smoke 190,
# submit 225 over four tests, driver 190): started first, so the run does not end on one of them.
LONGEST_MODULES = ("tests/test_chaos_smoke.py", "tests/test_submit.py", "tests/test_bench_smoke.py",
                   "tests/test_driver.py")


def pytest_collection_modifyitems(config, items):
    """The longest modules first, then the other modules with slow tests, each module's order kept:
    `scripts/test.sh` hands whole modules to two pytest-xdist workers, and a long module left for last would
    end the run on one worker while the other idles."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, bool]:
        module = item.nodeid.split("::")[0]
        first = LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)
        return first, module not in slow

    items.sort(key=rank)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             # Actor classes defined in test modules must be importable in Ray's worker processes.
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "PYTHONPATH": os.pathsep.join(
                                           filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))}},
             logging_level="warning", configure_logging=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The zoo's `tiny` preset (seconds to build), shared by every test of the session: a ZooManifest."""
    from evosearch.zoo import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"), preset="tiny")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty store: a new SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("pg_server").create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(store_url):
    from storage import RetryPolicy, Store  # imported by the tests that use it, not by every collection

    with Store.open(store_url, retry=RetryPolicy(attempts=3, first_delay_s=0.1, max_delay_s=0.2)) as opened:
        yield opened

