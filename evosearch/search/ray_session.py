"""The Ray a job's or calibration's workers run on: the cluster named by RAY_ADDRESS, or a local one."""

from __future__ import annotations

import os
from typing import Optional

import ray

# Workers never reach a model or dataset hub, and tokenizers' own threads only contend with the workers'.
_WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def ensure_ray(num_cpus: Optional[float] = None) -> None:
    """Join the cluster named by RAY_ADDRESS, or start a local Ray on 127.0.0.1 if none is running."""
    if ray.is_initialized():
        return
    env = {k: os.environ.get(k, "1") for k in _WORKER_ENV}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                 runtime_env={"env_vars": env}, logging_level="warning", log_to_driver=False)
