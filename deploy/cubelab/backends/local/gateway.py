"""The embedded stack's Dask gateway: dask-gateway-server with cubelab's team options and local backend.

It stays root when cubelab runs as root, as the hub does, because it starts each member's scheduler and workers
as that member's own account (`cl-NAME`): never as root, never as another member. Its settings (the hub service
token, the database key, every team's S3 keys) are in a 0600 file of a 0700 folder; its database holds clusters'
TLS keys, encrypted. Clusters run the scikit-learn kernel's environment, so workers have what kernels have.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from cubelab import plan
from cubelab.backends.local.accounts import USER_PREFIX
from cubelab.backends.local.paths import StatePaths
from cubelab.backends.local.tracking import LocalTracking
from cubelab.config import PlatformConfig
from cubelab.hub import render
from cubelab.procs import Launch, http_ok
from cubelab.secrets import SecretStore, new_token, write_private

NAME = "dask-gateway"
CODE_DIR = Path(__file__).resolve().parents[2] / "gateway"
WORKER_KERNEL = plan.GATEWAY_WORKER_KERNEL  # the kernel environment clusters run in (its install folder kernel-NAME)


def new_fernet_key() -> str:
    """A key for the gateway's database encryption (Fernet: 32 random bytes, URL-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


class LocalGateway:
    def __init__(self, config: PlatformConfig, paths: StatePaths, tracking: LocalTracking) -> None:
        self.config = config
        self.paths = paths
        self.tracking = tracking
        self.secrets = SecretStore(paths.secrets)
        self.port = config.ports.dask_gateway

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

    def settings(self, install: Path) -> dict[str, Any]:
        ports = self.config.ports
        bin_dir = self.worker_bin(install)
        settings = plan.gateway_settings(self.config, self.tracking.addresses())
        settings |= {
            "api_address": f"127.0.0.1:{ports.dask_gateway_api}",
            "db_url": f"sqlite:///{self.paths.gateway / 'gateway.sqlite'}",
            "backend": {
                "account_prefix": self.account_prefix,
                "clusters_dir": str(self.paths.dask_clusters),
                # Clusters inherit only these from the gateway (the rest is the team's storage and dask's TLS).
                "inherited_environment": ["PATH", "LANG", "CUBELAB_STACK"],
                "scheduler_cmd": [str(bin_dir / "dask"), "scheduler"],
                "worker_cmd": [str(bin_dir / "dask"), "worker"],
            },
        }
        return plan.resolve(settings, self.secret_values().__getitem__)

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

        busy = "ports.dask_gateway and the two after it"
        return Launch(
            NAME, argv, env, self.paths.logs / f"{NAME}.log", self.paths.root,
            ports={ports.dask_gateway: busy, ports.dask_gateway_tls: busy, ports.dask_gateway_api: busy},
            code=tuple(sorted(CODE_DIR.glob("*.py"))),
            settings=json.dumps(settings, sort_keys=True),
            before_start=prepare,
        )  # fmt: skip

    def healthy(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.port}{render.GATEWAY_PREFIX}/api/health")

    def description(self) -> dict[str, Any]:
        """What platform_tests need to know of the gateway (no secrets)."""
        addr = self.tracking.addresses()
        return {
            "address": self.url,
            "proxy_address": f"gateway://{addr.gateway_tls}",
            "teams": {t.name: dataclasses.asdict(t.dask) for t in self.config.teams},
        }
