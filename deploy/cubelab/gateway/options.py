"""A member's cluster options: which of their teams the cluster is for, and worker sizes within that team's bounds.

dask-gateway asks for the options of each user (`Backend.cluster_options` as a callable), then hands the chosen
values to a handler that returns the cluster's configuration. The fields are fixed before the team is chosen, so
they span the widest bounds of the member's teams, and the handler checks the values against the chosen team's.
The team decides the workers' environment: its bucket and keys, nothing of any other team.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.options import Float, Integer, Options, Select
from traitlets import Integer as IntegerTrait
from traitlets import Unicode
from traitlets.config import Configurable

GIB = 1 << 30


class TeamLimits(Configurable):
    """The traits a cluster's configuration adds to dask-gateway's (mixed into each backend's ClusterConfig): the
    team it was started for, and that team's per-user limits, which dask-gateway's backends do not have."""

    team = Unicode("", help="the team the cluster is for (its workers have that team's storage)", config=True)
    max_workers_per_user = IntegerTrait(0, help="most workers of one user across clusters (0: no limit)",
                                        config=True)  # fmt: skip
    max_clusters_per_user = IntegerTrait(0, help="most clusters one user may run at once (0: no limit)", config=True)


def check_cluster_count(username: str, running: int, config: Any) -> None:
    """Refuse a new cluster to a user who runs the most the cluster's team allows (config: TeamLimits)."""
    limit = config.max_clusters_per_user
    if limit and running >= limit:
        raise PublicException(f"{username} already runs {running} cluster(s), the most team {config.team} allows; "
                              "stop one first")  # fmt: skip


def workers_allowed(log: Any, cluster: str, username: str, wanted: int, others: int, limit: int) -> int:
    """Workers one cluster may have: what its owner asked for, within the per-user `limit` (0: none) less the
    workers of the owner's other clusters; a lowered count is logged (log: the backend's logger)."""
    allowed = min(wanted, max(0, limit - others)) if limit else wanted
    if allowed < wanted:
        log.info("Cluster %s: %d workers asked, %s may run %d more (max_workers_per_user %d)",
                 cluster, wanted, username, allowed, limit)  # fmt: skip
    return allowed


class TeamOptions:
    """Backend.cluster_options: called with the authenticated user (name and hub groups)."""

    def __init__(self, teams: Mapping[str, Mapping[str, Any]]) -> None:
        self.teams = teams  # team -> {"limits": ClusterLimits as a dict, "environment": {...}, ...}

    def teams_of(self, user: Any) -> list[str]:
        return sorted(set(user.groups) & set(self.teams))

    def __call__(self, user: Any) -> Options:
        mine = self.teams_of(user)
        if not mine:
            raise ValueError(f"{user.name} is in no team: Dask clusters run for a team, with its storage")
        limits = [self.teams[t]["limits"] for t in mine]
        first = limits[0]
        return Options(
            Select("team", mine, default=mine[0], label="Team"),
            Integer("worker_cores", default=first["worker_cores"], min=min(x["worker_cores_min"] for x in limits),
                    max=max(x["worker_cores_max"] for x in limits), label="Cores per worker"),
            Float("worker_memory", default=first["worker_memory_gib"],
                  min=min(x["worker_memory_gib_min"] for x in limits),
                  max=max(x["worker_memory_gib_max"] for x in limits), label="Memory per worker (GiB)"),
            handler=self.configure,
        )  # fmt: skip

    def configure(self, options: Any, user: Any) -> dict[str, Any]:
        """The cluster's configuration (TeamClusterConfig traits) for the chosen options."""
        team = options.team
        if team not in self.teams_of(user):  # Select already refuses other values; checked again here
            raise ValueError(f"{user.name} is not a member of team {team!r}")
        limits = self.teams[team]["limits"]
        cores, memory = int(options.worker_cores), float(options.worker_memory)
        if not limits["worker_cores_min"] <= cores <= limits["worker_cores_max"]:
            raise ValueError(f"team {team}: worker_cores must be between {limits['worker_cores_min']} and "
                             f"{limits['worker_cores_max']}, not {cores}")  # fmt: skip
        if not limits["worker_memory_gib_min"] <= memory <= limits["worker_memory_gib_max"]:
            raise ValueError(f"team {team}: worker_memory must be between {limits['worker_memory_gib_min']} and "
                             f"{limits['worker_memory_gib_max']} GiB, not {memory}")  # fmt: skip
        return {
            "team": team,
            "worker_cores": cores,
            "worker_threads": cores,
            "worker_memory": int(memory * GIB),
            "cluster_max_workers": limits["max_workers_per_cluster"],
            "max_workers_per_user": limits["max_workers_per_user"],
            "max_clusters_per_user": limits["max_clusters_per_user"],
            "idle_timeout": float(limits["idle_timeout_seconds"]),
            # On Kubernetes the team's variables come as the containers' env instead (cubelab.gateway.kubernetes).
            "environment": dict(self.teams[team].get("environment", {})),
        }
