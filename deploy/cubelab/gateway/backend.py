"""dask-gateway's local backend, made fit to run as root for many users.

What LocalBackend (2026.3.0) does not do, and this does:
- It looks the user's account up by the hub user's name; cubelab's users are the accounts `cl-NAME`.
- Its `setup_working_directory` passes `set_file_permissions` a list into which each certificate path was
  `extend`ed character by character, so as root it would chown "/" and other one-letter paths to the user. Here
  the working directory's own tree is chowned, nothing else: bottom-up, links not followed, the folder itself
  last, so its owner cannot swap a part for a link while root walks it.
- Its `start_process` opens each process's log file as root, in `logs/` of a folder the member owns: a member
  who replaced `logs` with a link made root create a file wherever the link pointed. Here the file is opened in
  the new process after it has become the member, so a link leads only where the member could write anyway.
- It has limits per cluster only. A member's clusters and workers are also limited per user here
  (cubelab.gateway.options, shared with the Kubernetes backend).
- Schedulers and workers serve their dashboards and HTTP pages (worker logs, call stacks, task names, and an
  API that retires workers; no login) on random ports of every interface. Here a scheduler's dashboard takes a
  loopback port of its own from `dashboard_ports`, which only the platform's accounts may connect to (the
  embedded stack's firewall). On the embedded stack the socket holder binds all of them at `up` and hands them
  to the gateway; a scheduler gets its port's listening socket and serves its dashboard there
  (dashboard_check), so no account can take a dashboard's port. Elsewhere, the scheduler serves no dashboard
  if it is anywhere else (a port taken by someone else: dask would silently move it), and with every port
  taken clusters start without one. Members reach a dashboard through cubelab's front
  (cubelab.gateway.front), which admits a cluster's owner only. Workers serve no HTTP routes at all (their
  HTTP servers still listen on loopback, and answer 404 to everything).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
from collections.abc import Callable
from typing import Any

from dask_gateway_server.backends.base import ClusterConfig
from dask_gateway_server.backends.local import LocalBackend, LocalClusterConfig
from dask_gateway_server.traitlets import Type
from traitlets import Integer, List, Unicode

from cubelab.gateway.options import TeamLimits, check_cluster_count, workers_allowed


class TeamClusterConfig(TeamLimits, LocalClusterConfig):
    """A cluster's configuration, with the team it was started for and that team's per-user limits."""


class TeamLocalBackend(LocalBackend):
    cluster_config_class = Type(
        "cubelab.gateway.backend.TeamClusterConfig", klass=ClusterConfig, help="the cluster config class", config=True
    )
    account_prefix = Unicode(
        "", help="Run a user's clusters as the account PREFIX+NAME (as root). Empty: as the gateway's own account.",
        config=True,
    )  # fmt: skip

    # Schedulers, workers and their HTTP servers on loopback: clients reach schedulers through the gateway's TLS
    # proxy, which runs beside them (dask-gateway's default is every interface).
    default_host = "127.0.0.1"

    dashboard_ports = List(Integer(), help="Loopback ports for schedulers' dashboards (empty: no dashboards)",
                           config=True)  # fmt: skip
    dashboard_check = Unicode("", help="A scheduler preload that exits unless the dashboard got its port", config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dashboards: dict[str, int] = {}  # cluster name -> the dashboard port chosen for its scheduler

    def get_scheduler_command(self, cluster: Any) -> list[str]:
        argv = super().get_scheduler_command(cluster)
        port = self.dashboard_port(cluster)
        if port is None:
            return _without_dashboard(argv)
        i = argv.index("--dashboard-address")
        argv[i + 1] = f"127.0.0.1:{port}"
        return [*argv, "--preload", self.dashboard_check]

    def get_worker_command(self, cluster: Any, worker_name: str, scheduler_address: str | None = None) -> list[str]:
        argv = super().get_worker_command(cluster, worker_name, scheduler_address)
        return [*_without_dashboard(argv), "--host", self.default_host]

    def dashboard_port(self, cluster: Any) -> int | None:
        """A free port of dashboard_ports for the cluster's scheduler, or None for no dashboard."""
        if not self.dashboard_ports or not self.dashboard_check:
            return None
        # Each running cluster's port: the one chosen here (in memory), or the address its scheduler reported
        # (in the database, so a restarted gateway knows it too).
        others = [c for c in self.db.list_clusters() if c.name != cluster.name]
        taken = {self._dashboards.get(c.name) for c in others}
        taken |= {int(c.dashboard_address.rsplit(":", 1)[1]) for c in others if c.dashboard_address}
        held = held_sockets()
        for port in self.dashboard_ports:
            if port not in taken and (port in held or _bindable(port)):
                self._dashboards[cluster.name] = port
                return port
        # Every port is taken: by other clusters, or by an account that bound them all to stop everyone's
        # clusters. The cluster starts all the same, without a dashboard.
        self.log.warning("cluster %s starts without a dashboard: all %d dashboard ports are in use", cluster.name,
                         len(self.dashboard_ports))  # fmt: skip
        return None

    def account(self, username: str) -> pwd.struct_passwd:
        return pwd.getpwnam(self.account_prefix + username)

    def set_file_permissions(self, paths: list[str], username: str) -> None:
        if not self.account_prefix:
            return
        entry = self.account(username)
        chown_tree(paths[0], entry.pw_uid, entry.pw_gid)

    def make_preexec_fn(self, cluster: Any, log_path: str | None = None) -> Callable[[], None]:
        workdir = cluster.state["workdir"]
        entry = self.account(cluster.username) if self.account_prefix else None

        def preexec() -> None:
            if entry is not None:
                os.setgid(entry.pw_gid)
                os.initgroups(entry.pw_name, entry.pw_gid)
                os.setuid(entry.pw_uid)
            os.chdir(workdir)
            if log_path is not None:  # as the member now: a link in their folder leads only where they may write
                fd = os.open(log_path, LOG_FLAGS, 0o640)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)

        return preexec

    async def start_process(self, cluster: Any, cmd: list[str], env: dict[str, str], name: str) -> int:
        """dask-gateway's start_process, with the log file opened by the new process as the member."""
        log_path = os.path.join(self.get_logs_directory(cluster.state["workdir"]), name + ".log")
        handed = (int(env[DASHBOARD_FD_VAR]),) if DASHBOARD_FD_VAR in env else ()  # its dashboard's socket
        proc = await asyncio.create_subprocess_exec(
            *cmd, preexec_fn=self.make_preexec_fn(cluster, log_path), start_new_session=True, env=env,
            stdin=asyncio.subprocess.DEVNULL, pass_fds=handed,
        )  # fmt: skip
        return int(proc.pid)

    def get_env(self, cluster: Any) -> dict[str, str]:
        # dask-gateway builds a scheduler's command before its environment, so the port is chosen by now; a
        # scheduler without it in its environment fails dashboard_check.
        env = super().get_env(cluster) | NO_WORKER_ROUTES
        port = self._dashboards.get(cluster.name)
        if port is None:
            env |= NO_SCHEDULER_ROUTES
        else:
            env[DASHBOARD_PORT_VAR] = str(port)
            if (fd := held_sockets().get(port)) is not None:
                env[DASHBOARD_FD_VAR] = str(fd)
        if self.account_prefix:
            entry = self.account(cluster.username)
            env |= {"USER": entry.pw_name, "HOME": entry.pw_dir}
        return env

    async def start_cluster(self, user: Any, cluster_options: dict[str, Any]) -> str:
        _options, config = await self.process_cluster_options(user, cluster_options)
        check_cluster_count(user.name, len(self.db.list_clusters(username=user.name)), config)  # active ones
        return await super().start_cluster(user, cluster_options)

    async def _check_cluster_scale(self, cluster: Any) -> None:
        """Create the workers a scale asked for, but no more than the owner's per-user limit leaves room for."""
        limit = cluster.config.get("max_workers_per_user") or 0
        if not limit:
            return await super()._check_cluster_scale(cluster)
        mine = self.db.list_clusters(username=cluster.username)
        others = sum(len(c.active_workers()) for c in mine if c.name != cluster.name)
        wanted = cluster.count
        cluster.count = workers_allowed(self.log, cluster.name, cluster.username, wanted, others, limit)
        try:
            await super()._check_cluster_scale(cluster)
        finally:
            cluster.count = wanted


# dask's HTTP servers start even with --no-dashboard (for /info, /json, /metrics, /health): no routes for them.
NO_WORKER_ROUTES = {"DASK_DISTRIBUTED__WORKER__HTTP__ROUTES": "[]"}
NO_SCHEDULER_ROUTES = {"DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": "[]"}
DASHBOARD_PORT_VAR = "CUBELAB_DASHBOARD_PORT"  # the port the scheduler's dashboard must have (dashboard_check)
DASHBOARD_FD_VAR = "CUBELAB_DASHBOARD_FD"  # the listening socket of that port, handed to the scheduler
# cubelab.plan.LISTEN_FDS_VAR, spelled out: the gateway's image has the gateway's modules but not the plan's
# dependencies (test_gateway_config holds the two equal).
LISTEN_FDS_VAR = "CUBELAB_LISTEN_FDS"


def held_sockets() -> dict[int, int]:
    """The dashboard ports' listening sockets this process was handed (embedded stack), by port. The holder
    binds them all at `up` and keeps them: no account can take one, so none can stop a dashboard."""
    pairs = (item.partition("=") for item in os.environ.get(LISTEN_FDS_VAR, "").split(",") if item)
    return {int(port): int(fd) for port, _, fd in pairs if port.isdigit() and fd.isdigit()}


LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def chown_tree(top: str, uid: int, gid: int) -> None:
    """Give the tree under top to uid:gid: children before their folder, top last, no link followed. Until top
    is the user's they cannot enter it, so nothing in it changes while root walks it."""
    for root, dirs, files, root_fd in os.fwalk(top, topdown=False, follow_symlinks=False):
        for name in [*files, *dirs]:
            os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)
        if root == top:
            os.chown(root_fd, uid, gid)


def _bindable(port: int) -> bool:
    """Whether nothing listens on the loopback port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _without_dashboard(argv: list[str]) -> list[str]:
    """argv with `--no-dashboard` after its `--dashboard-address ADDRESS` (the address its HTTP server takes)."""
    i = argv.index("--dashboard-address")
    return [*argv[: i + 2], "--no-dashboard", *argv[i + 2 :]]
