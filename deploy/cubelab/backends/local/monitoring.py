"""The embedded stack's Prometheus (Debian's package), scraping the plan's metrics endpoints.

It runs as its own account when cubelab runs as root, with its configuration (cubelab.plan.prometheus_config) and
the metrics token in that account's home (0600), and its samples in a folder of the state directory. Its web UI
and query API have no login, so, as root, the loopback firewall lets only root and Prometheus's own account
connect to its port: users' kernels on the same machine cannot read other teams' numbers through it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from cubelab import plan
from cubelab.backends.local.accounts import ensure_service_home, service_account
from cubelab.backends.local.firewall import LoopbackGuard
from cubelab.backends.local.paths import StatePaths
from cubelab.config import PlatformConfig
from cubelab.prereqs import _apt_command, _apt_install
from cubelab.procs import Launch, StartError, http_ok
from cubelab.secrets import write_private

NAME = "prometheus"
PACKAGE = "prometheus"  # Debian's: FACTS.md, 2.42 on bookworm


def binary() -> str | None:
    return shutil.which("prometheus") or next((p for p in ("/usr/bin/prometheus",) if Path(p).exists()), None)


def ensure_installed(progress: Callable[[str], None]) -> str:
    """The prometheus program, installed with apt-get first when missing and cubelab runs as root."""
    if found := binary():
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StartError(NAME, f"monitoring.enabled needs Prometheus; install it as root: {_apt_command([PACKAGE])}")
    progress(f"installing Debian's {PACKAGE} for monitoring (apt-get)...")
    # The package would start its own Prometheus (port 9090, /etc/prometheus) where an init system runs: Debian's
    # policy-rc.d, while it is there, tells the package scripts not to start anything.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\n# cubelab: no service starts while it installs Prometheus\nexit 101\n")
        policy.chmod(0o755)
    try:
        status = _apt_install([PACKAGE])  # shows apt's output when it fails
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    if status != 0 or not (found := binary()):
        raise StartError(NAME, f"`{_apt_command([PACKAGE])}` failed (exit {status}; apt's output above)")
    return found


class LocalPrometheus:
    def __init__(self, config: PlatformConfig, paths: StatePaths, token: Callable[[], str],
                 addresses: Callable[[], plan.Addresses]) -> None:  # fmt: skip
        self.config = config
        self.paths = paths
        self.token = token
        self.addresses = addresses
        self.guard = LoopbackGuard(paths.root, part="prom")

    @property
    def port(self) -> int:
        return self.config.ports.prometheus

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def inner_port(self) -> int | None:
        """As root, where Prometheus itself listens: below ip_unprivileged_port_start (ports.inner + 3), which its
        account may bind with CAP_NET_BIND_SERVICE and no member can take; the socket holder relays ports.prometheus
        there. None without root: Prometheus binds ports.prometheus."""
        return self.config.ports.inner + 3 if self.account() else None

    @property
    def home(self) -> Path:
        return self.paths.service_home(NAME)

    @property
    def data(self) -> Path:
        return self.home / "data"

    def account(self) -> str | None:
        return service_account(NAME) if os.geteuid() == 0 else None

    def settings(self) -> str:
        """The configuration file's text: the plan's targets, the token read from the file beside it."""
        cfg = plan.prometheus_config(self.config, self.addresses(), str(self.home / "metrics-token"))
        return "# Written by cubelab from the platform config at each `cubelab up`; edits are lost.\n" + yaml.safe_dump(
            cfg, sort_keys=False
        )

    def launch(self, program: str) -> Launch:
        account = self.account()
        retention = f"{self.config.monitoring.retention_days}d"
        inner = self.inner_port
        argv = [program, f"--config.file={self.home / 'prometheus.yml'}", f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{inner or self.port}",
                f"--storage.tsdb.retention.time={retention}"]  # fmt: skip
        if account:  # setpriv execs in place, as the account, with the one capability it needs
            argv = ["setpriv", f"--reuid={account}", f"--regid={account}", "--clear-groups",
                    "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service", "--", *argv]  # fmt: skip
        settings = self.settings()

        def prepare() -> None:
            if account:
                ensure_service_home(account, self.home, "cubelab Prometheus")
            else:
                self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Only root and Prometheus's account may connect to its ports (its API has no login).
            self.guard.close(NAME, [self.port, *([inner] if inner else [])], [account])
            self.data.mkdir(exist_ok=True, mode=0o700)
            write_private(self.home / "metrics-token", self.token())
            write_private(self.home / "prometheus.yml", settings)
            if account:
                for path in (self.home / "metrics-token", self.home / "prometheus.yml", self.data):
                    shutil.chown(path, account, account)

        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8"}
        log = self.paths.logs / f"{NAME}.log"
        if inner:
            return Launch(NAME, argv, env, log, self.home, ports={inner: "ports.inner + 3"},
                          relayed={self.port: ("ports.prometheus", f"tcp:127.0.0.1:{inner}")}, settings=settings,
                          before_start=prepare)  # fmt: skip
        return Launch(NAME, argv, env, log, self.home, ports={self.port: "ports.prometheus"}, settings=settings,
                      before_start=prepare)  # fmt: skip

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/-/ready")
