"""The Ray a job's or calibration's workers run on: the cluster named by RAY_ADDRESS, or a Ray of its own.

Without RAY_ADDRESS, Ray's own discovery would join the cluster that the machine's last `ray start` recorded
(in /tmp/ray/ray_current_cluster), which may be someone else's: other jobs, other code, other resources.
A job instead starts a local Ray of its own, always. To join the machine's `ray start` cluster, say so:
RAY_ADDRESS=auto. A job submitted with `evosearch submit` runs with the RAY_ADDRESS Ray gives it.
"""

from __future__ import annotations

import os
from typing import Optional

import ray

# Workers never reach a model or dataset hub, and tokenizers' own threads only contend with the workers'.
_WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def ensure_ray(num_cpus: Optional[float] = None) -> None:
    """Join the cluster named by RAY_ADDRESS, or start a local Ray of this process's own on 127.0.0.1 (unless
    this process has one already)."""
    if ray.is_initialized():
        return
    env = {k: os.environ.get(k, "1") for k in _WORKER_ENV}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                 runtime_env={"env_vars": env}, logging_level="warning", log_to_driver=False)
