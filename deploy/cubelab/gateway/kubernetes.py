"""dask-gateway on Kubernetes (the Helm chart's `daskGateway`, dask-gateway's own chart): cubelab's team options.

The dask-gateway chart's config sets up its KubeBackend, the hub authentication and the addresses; its
`gateway.extraConfig` then calls `configure`, which adds what cubelab owns, from the team table that
`cubelab render helm` passes in plan.GATEWAY_SETTINGS_VAR: a member picks one of their teams
(cubelab.gateway.options checks the bounds and the membership), and the cluster's pods get that team's
notebook image, its label and its storage variables, the secrets as references to the team's own Secret (never values).

KubeBackend has limits per cluster only; `TeamKubeBackend` adds the team's per-user limits, as the embedded
backend does: it refuses a cluster over max_clusters_per_user, and it lowers the worker count a scheduler's
heartbeat asks for (which KubeBackend writes into the DaskCluster's replicas, for its controller to create pods)
to what max_workers_per_user leaves after the owner's other clusters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from dask_gateway_server.backends.base import ClusterConfig
from dask_gateway_server.backends.kubernetes import KubeBackend, KubeClusterConfig
from dask_gateway_server.traitlets import Type

from cubelab.gateway.options import TeamLimits, TeamOptions, check_cluster_count, workers_allowed
from cubelab.plan import GATEWAY_SETTINGS_VAR

TEAM_LABEL = "cubelab.io/team"  # on schedulers and workers: the team's NetworkPolicy selects its pods by it


class TeamKubeClusterConfig(TeamLimits, KubeClusterConfig):
    """KubeClusterConfig with the team a cluster is for and that team's per-user limits."""


class TeamKubeBackend(KubeBackend):
    """KubeBackend with the team's per-user limits."""

    cluster_config_class = Type("cubelab.gateway.kubernetes.TeamKubeClusterConfig", klass=ClusterConfig,
                                help="the cluster config class", config=True)  # fmt: skip

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.granted: dict[str, int] = {}  # cluster name -> the replicas this gateway last wrote for it

    async def start_cluster(self, user: Any, cluster_options: dict[str, Any]) -> str:
        _options, config = await self.process_cluster_options(user, cluster_options)
        check_cluster_count(user.name, len(await self.list_clusters(username=user.name)), config)  # active ones
        return str(await super().start_cluster(user, cluster_options))

    def replicas(self, cluster_name: str) -> int:
        """The workers a cluster is granted: as this gateway last wrote, or, after a restart, as its object says."""
        if cluster_name in self.granted:
            return self.granted[cluster_name]
        obj = self.informer.get(cluster_name) or {}
        return int(obj.get("spec", {}).get("replicas", 0))

    async def on_cluster_heartbeat(self, cluster_name: str, msg: dict[str, Any]) -> None:
        cluster = self.clusters.get(cluster_name)
        if cluster is not None:
            count = int(msg["count"])
            # KubeBackend applies this cap too, after; applied here first, so that `granted` holds what is written.
            if cap := cluster.config.get("cluster_max_workers"):
                count = min(count, int(cap))
            if limit := int(cluster.config.get("max_workers_per_user") or 0):
                mine = await self.list_clusters(username=cluster.username)  # active ones
                others = sum(self.replicas(c.name) for c in mine if c.name != cluster_name)
                count = workers_allowed(self.log, cluster_name, cluster.username, count, others, limit)
            self.granted = {name: n for name, n in self.granted.items() if name in self.clusters}
            self.granted[cluster_name] = count
            msg = {**msg, "count": count}
        await super().on_cluster_heartbeat(cluster_name, msg)


def cluster_config(chosen: Mapping[str, Any], team: Mapping[str, Any]) -> dict[str, Any]:
    """TeamOptions' configuration of a cluster -> KubeClusterConfig traits for the chosen team's pods."""
    container = {"env": [dict(e) for e in team["env"]]}  # dask-gateway appends it to the pods' own env
    labels = {TEAM_LABEL: chosen["team"]}
    return dict(chosen) | {
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
    settings = json.loads((os.environ if env is None else env)[GATEWAY_SETTINGS_VAR])
    c.DaskGateway.backend_class = f"{TeamKubeBackend.__module__}.{TeamKubeBackend.__name__}"
    c.KubeBackend.cluster_options = KubeTeamOptions(settings["teams"])
    # Schedulers and workers run the dask of a kernel environment of the notebook image (it has dask-gateway).
    c.KubeClusterConfig.scheduler_cmd = settings["scheduler_cmd"]
    c.KubeClusterConfig.worker_cmd = settings["worker_cmd"]
    return settings
