"""cluster.yaml passes Ray's own cluster-launcher validation (the same code path `ray up` runs)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_is_valid_for_ray_up():
    config = prepare_config(_load())
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]
    assert any("--dashboard-port=8265" in cmd for cmd in config["head_start_ray_commands"])


def test_validation_catches_a_typo():
    bad = copy.deepcopy(_load())
    bad["available_node_types"]["gpu_worker"]["min_workrs"] = 1
    with pytest.raises(Exception, match="min_workrs"):
        validate_config(prepare_config(bad))
