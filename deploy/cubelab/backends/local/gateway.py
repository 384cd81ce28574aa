"""The embedded stack's Dask gateway: dask-gateway-server with cubelab's team options and local backend.

It stays root when cubelab runs as root, as the hub does, because it starts each member's scheduler and workers
as that member's own account (`cl-NAME`): never as root, never as another member. Its settings (the hub service
token, the database key, every team's S3 keys) are in a 0600 file of a 0700 folder; its database holds clusters'
TLS keys, encrypted. Clusters run the scikit-learn kernel's environment, so workers have what kernels have.

The hub's proxy reaches it through cubelab's front (cubelab.gateway.front, its own process `dask-gateway-front`
on ports.dask_gateway), which admits a cluster's dashboard to its owner only. dask-gateway's private API, its own
HTTP proxy and the schedulers' dashboards listen on loopback ports that, as root, only root (and the front) may
connect to (an iptables chain); schedulers send their heartbeats through the front.

Ports another account could take while the gateway restarts (issue 25): as root, the gateway and its Go proxy
bind their private API and HTTP proxy on ports.inner and the one after it, below ip_unprivileged_port_start,
where only root may bind; the socket holder keeps ports.dask_gateway and hands it to the front. The TLS proxy
binds the TLS port (ports.dask_gateway + 1) itself: an account that took it during a gateway restart would get
TLS handshakes it cannot complete (clients check the cluster's certificate), and would stop the restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cubelab import plan
from cubelab.backends.local.accounts import USER_PREFIX, ensure_service_home, service_account
from cubelab.backends.local.firewall import LoopbackGuard
from cubelab.backends.local.paths import StatePaths
from cubelab.backends.local.tracking import LocalTracking
from cubelab.config import PlatformConfig
from cubelab.hub import render
from cubelab.procs import Launch, http_ok
from cubelab.secrets import SecretStore, new_fernet_key, new_token, write_private

NAME = "dask-gateway"
FRONT_NAME = "dask-gateway-front"
CODE_DIR = Path(__file__).resolve().parents[2] / "gateway"
WORKER_KERNEL = plan.GATEWAY_WORKER_KERNEL  # the kernel environment clusters run in (its install folder kernel-NAME)


class LocalGateway:
    def __init__(self, config: PlatformConfig, paths: StatePaths, tracking: LocalTracking) -> None:
        self.config = config
        self.paths = paths
        self.tracking = tracking
        self.secrets = SecretStore(paths.secrets)
        self.port = config.ports.dask_gateway
        self.guard = LoopbackGuard(paths.root, part="dask")

    @property
    def account_prefix(self) -> str:
        """Clusters run as the account PREFIX+NAME when cubelab runs as root; else as this process's account."""
        return USER_PREFIX if os.geteuid() == 0 else ""

    @staticmethod
    def worker_bin(install: Path) -> Path:
        """The bin folder of the kernel environment clusters run in."""
        return install / f"kernel-{WORKER_KERNEL}" / "bin"

    @property
    def url(self) -> str:
        return f"{self.config.embedded_public_url}{render.GATEWAY_PREFIX}"

    def token(self) -> str:
        """The gateway's hub service token."""
        return self.secrets.get("dask-gateway-token", new_token)

    def secret_values(self) -> dict[str, str]:
        values = {plan.GATEWAY_TOKEN: self.token(), plan.GATEWAY_DB_KEY: self.secrets.get("dask-gateway-db-key",
                                                                                          new_fernet_key)}  # fmt: skip
        for team in self.config.teams:
            values |= self.tracking.secret_values(team)
        return values

    @property
    def inner_ports(self) -> dict[str, int]:
        """Where dask-gateway's private API, its HTTP proxy and its TLS proxy listen: as root, below
        ip_unprivileged_port_start (ports.inner and after); else the three after ports.dask_gateway."""
        ports = self.config.ports
        if os.geteuid() == 0:
            # The TLS proxy binds the public TLS port itself (a relay by the holder made a connected client's
            # recovery from a gateway restart flaky: test_gateway_restart). ports.inner + 2 stays unused.
            base = ports.inner
            return {"api": base, "proxy": base + 1, "tls": ports.dask_gateway_tls}
        return {"api": ports.dask_gateway_api, "proxy": ports.dask_gateway_proxy, "tls": ports.dask_gateway_tls}

    def settings(self, install: Path) -> dict[str, Any]:
        ports = self.config.ports
        inner = self.inner_ports
        bin_dir = self.worker_bin(install)
        settings = plan.gateway_settings(self.config, self.tracking.addresses())
        settings |= {
            # dask-gateway's own proxy, behind the front (which has ports.dask_gateway).
            "http_address": f"127.0.0.1:{inner['proxy']}",
            "tls_address": f"127.0.0.1:{inner['tls']}",
            "api_address": f"127.0.0.1:{inner['api']}",
            # Schedulers (members' accounts) reach the private API through the front: its port is closed to them.
            "api_url": f"http://127.0.0.1:{ports.dask_gateway}{render.GATEWAY_PREFIX}/api",
            "db_url": f"sqlite:///{self.paths.gateway / 'gateway.sqlite'}",
            "backend": {
                "account_prefix": self.account_prefix,
                "clusters_dir": str(self.paths.dask_clusters),
                # Clusters inherit only these from the gateway (the rest is the team's storage and dask's TLS).
                "inherited_environment": ["PATH", "LANG", "CUBELAB_STACK"],
                "scheduler_cmd": [str(bin_dir / "dask"), "scheduler"],
                "worker_cmd": [str(bin_dir / "dask"), "worker"],
                "dashboard_ports": list(ports.dask_dashboard_range),
                "dashboard_check": str(self.dashboard_check),
            },
        }
        return plan.resolve(settings, self.secret_values().__getitem__)

    @property
    def dashboard_check(self) -> Path:
        """The schedulers' preload (cubelab.gateway.dashboard_check), copied where clusters' accounts read it: a
        folder of its own they may list (Python's import lists it; they may not list the clusters' folder)."""
        return self.paths.dask_clusters / "preload" / "cubelab_dashboard_check.py"

    def closed_ports(self) -> list[int]:
        """Loopback ports only root (and the front) may connect to: dask-gateway's private API, its own proxy and
        the clusters' dashboards."""
        inner = self.inner_ports
        return [inner["api"], inner["proxy"], *self.config.ports.dask_dashboard_range]

    def front_account(self) -> str | None:
        """The front's own account (as root): it holds the gateway's hub token, nothing else of the platform."""
        return service_account(FRONT_NAME) if os.geteuid() == 0 else None

    def make_front_home(self) -> None:
        """The front's HOME, and its account when cubelab runs as root (the gateway's start needs its uid)."""
        home = self.paths.service_home(FRONT_NAME)
        if account := self.front_account():
            ensure_service_home(account, home, "cubelab's front of the Dask gateway")
        else:
            home.mkdir(parents=True, exist_ok=True)

    def launch(self, services_venv: Path, install: Path) -> Launch:
        settings = self.settings(install)
        settings_file = self.paths.gateway / "settings.json"
        ports = self.config.ports
        env = {
            "PATH": f"{self.worker_bin(install)}:{services_venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.paths.gateway),
            "LANG": "C.UTF-8",
            "CUBELAB_GATEWAY_SETTINGS": str(settings_file),
            "CUBELAB_STACK": str(self.paths.root),
        }
        argv = [str(services_venv / "bin/dask-gateway-server"), "-f", str(CODE_DIR / "dask_gateway_config.py")]

        def prepare() -> None:
            self.paths.gateway.mkdir(mode=0o700, exist_ok=True)
            write_private(settings_file, json.dumps(settings, indent=1, sort_keys=True))
            clusters = self.paths.dask_clusters
            clusters.mkdir(parents=True, exist_ok=True)
            os.chmod(clusters, 0o711)  # noqa: S103 - each cluster's user reaches its own folder, lists none
            self.dashboard_check.parent.mkdir(mode=0o755, exist_ok=True)
            self.dashboard_check.write_text((CODE_DIR / "dashboard_check.py").read_text())
            os.chmod(self.dashboard_check, 0o644)
            # The closed ports let through root (the gateway and its proxy) and the front's account only.
            self.make_front_home()
            self.guard.close(NAME, self.closed_ports(), [self.front_account()])

        inner = self.inner_ports
        busy = "ports.inner, the one after it, and ports.dask_gateway + 1" if os.geteuid() == 0 else (
            "the three ports after ports.dask_gateway")  # fmt: skip
        return Launch(
            NAME, argv, env, self.paths.logs / f"{NAME}.log", self.paths.root,
            ports=dict.fromkeys(inner.values(), busy),
            # The dashboards' ports, kept by the socket holder and handed to the gateway, which hands each to its
            # scheduler (cubelab.gateway.backend): no account can take one.
            handed=dict.fromkeys(ports.dask_dashboard_range, "ports.dask_dashboards"),
            code=tuple(sorted(CODE_DIR.glob("*.py"))),
            settings=json.dumps(settings, sort_keys=True),
            before_start=prepare,
        )  # fmt: skip

    def front_launch(self, services_venv: Path) -> Launch:
        """cubelab's front on ports.dask_gateway, in front of dask-gateway's own proxy."""
        env = plan.gateway_front_env(
            service_url=self.url, prefix=render.GATEWAY_PREFIX, hub_api_url=self.tracking.addresses().hub_api,
            hub_public_url=self.config.embedded_public_url, token=self.token(),
            upstream=f"http://127.0.0.1:{self.inner_ports['proxy']}",
        )  # fmt: skip
        home = self.paths.service_home(FRONT_NAME)
        env |= {"PATH": f"{services_venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        argv = [str(services_venv / "bin/python"), "-m", "uvicorn", "cubelab.gateway.front:create_app", "--factory",
                "--fd", f"{{fd:{self.port}}}", "--no-access-log", "--ws", "websockets"]  # fmt: skip
        return Launch(
            FRONT_NAME, argv, env, self.paths.logs / f"{FRONT_NAME}.log", home,
            handed={self.port: "ports.dask_gateway"}, code=(CODE_DIR / "front.py",), user=self.front_account(),
            settings=json.dumps({k: v for k, v in env.items() if k != "CUBELAB_SERVICE_TOKEN"}, sort_keys=True),
            before_start=self.make_front_home,
        )  # fmt: skip

    def healthy(self) -> bool:
        """dask-gateway itself, on its own proxy."""
        return http_ok(f"http://127.0.0.1:{self.inner_ports['proxy']}{render.GATEWAY_PREFIX}/api/health")

    def front_healthy(self) -> bool:
        """The front, and the gateway through it (as the hub's proxy reaches them)."""
        return http_ok(f"http://127.0.0.1:{self.port}{render.GATEWAY_PREFIX}/api/health")

    def description(self) -> dict[str, Any]:
        """What platform_tests need to know of the gateway (no secrets)."""
        return plan.gateway_description(self.config, self.tracking.addresses()) | {
            "dashboards": True,
            "dashboard_ports": list(self.config.ports.dask_dashboard_range),
            "dashboard_ports_held": True,  # by the socket holder: no account can bind one
            # Closed to every account but root (as root only; without root there are no other accounts).
            "closed_ports": self.closed_ports() if LoopbackGuard.needed() else [],
        }
