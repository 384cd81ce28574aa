"""dask-gateway on Kubernetes (the Helm chart's `daskGateway`, dask-gateway's own chart): cubelab's team options.

The dask-gateway chart's config sets up its KubeBackend, the hub authentication and the addresses; its
`gateway.extraConfig` then calls `configure`, which adds what cubelab owns, from the team table that
`cubelab render helm` passes in SETTINGS_VAR: a member picks one of their teams (cubelab.gateway.options checks
the bounds and the membership), and the cluster's pods get that team's notebook image, its label and its
storage variables, the secrets as references to the team's own Secret (never values).

Per-user limits (max_clusters_per_user, max_workers_per_user) are the embedded backend's; KubeBackend has none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from cubelab.gateway.options import TeamOptions

SETTINGS_VAR = "CUBELAB_GATEWAY_SETTINGS_JSON"
TEAM_LABEL = "cubelab.io/team"  # on schedulers and workers: the team's NetworkPolicy selects its pods by it
# TeamOptions' keys that KubeClusterConfig has no trait for (the embedded backend's per-user limits).
LOCAL_ONLY = ("team", "max_workers_per_user", "max_clusters_per_user")


def cluster_config(chosen: Mapping[str, Any], team: Mapping[str, Any]) -> dict[str, Any]:
    """TeamOptions' configuration of a cluster -> KubeClusterConfig traits for the chosen team's pods."""
    container = {"env": [dict(e) for e in team["env"]]}  # dask-gateway appends it to the pods' own env
    labels = {TEAM_LABEL: chosen["team"]}
    config = {key: value for key, value in chosen.items() if key not in LOCAL_ONLY}
    return config | {
        "image": team["image"],
        "scheduler_extra_container_config": container,
        "worker_extra_container_config": container,
        "scheduler_extra_pod_labels": labels,
        "worker_extra_pod_labels": labels,
    }


class KubeTeamOptions(TeamOptions):
    """TeamOptions whose clusters run as pods: the same fields and checks, a Kubernetes configuration."""

    def configure(self, options: Any, user: Any) -> dict[str, Any]:
        chosen = super().configure(options, user)
        return cluster_config(chosen, self.teams[chosen["team"]])


def configure(c: Any, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Called from the dask-gateway chart's gateway.extraConfig, after the chart's own config."""
    settings = json.loads((os.environ if env is None else env)[SETTINGS_VAR])
    c.KubeBackend.cluster_options = KubeTeamOptions(settings["teams"])
    # Schedulers and workers run the dask of a kernel environment of the notebook image (it has dask-gateway).
    c.KubeClusterConfig.scheduler_cmd = settings["scheduler_cmd"]
    c.KubeClusterConfig.worker_cmd = settings["worker_cmd"]
    return settings
