"""Throwaway embedded stacks on free loopback ports, for the test suite and the benchmarks.

Each stack gets its own state directory under <repo>/.cubelab/scratch (the postgres system user must be able
to traverse to it, which 0700 temporary folders do not allow) and shares the installed service environment
of `make up` through CUBELAB_INSTALL_DIR, so the services are installed once.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cubelab.backends.local.paths import EXTERNAL_ROOT, reachable_by_others
from cubelab.backends.local.stack import LocalBackend
from cubelab.config import PlatformConfig, load
from cubelab.procs import port_owner

REPO = Path(__file__).resolve().parents[2]
SCRATCH = REPO / ".cubelab" / "scratch"
DEFAULT_USERS = ["alice", "bob", "carol", "dave", "erin"]
DEFAULT_TEAMS: list[dict[str, Any]] = [
    {"name": "ocean", "members": ["alice", "bob"], "admins": ["alice"]},
    {"name": "land", "members": ["bob", "carol"]},
]


def use_shared_installs() -> None:
    """Share one install dir between all scratch stacks (and `make up`, when users can reach it)."""
    shared = REPO / ".cubelab" / "install"
    if os.geteuid() == 0 and not reachable_by_others(shared):
        shared = EXTERNAL_ROOT / "shared-install"
    os.environ.setdefault("CUBELAB_INSTALL_DIR", str(shared))


def free_inner_block() -> int:
    """The first of 4 free ports below 1024 (ports.inner: as root, dask-gateway's and Prometheus's own ports), at
    random, so that stacks running side by side do not share them."""
    for _ in range(200):
        base = random.randrange(600, 1020, 4)  # noqa: S311 - not for secrets
        if all(port_owner(p) is None for p in range(base, base + 4)):
            return base
    raise RuntimeError("no free block of ports below 1024 found")


def free_port_block() -> dict[str, int]:
    """Ports for one stack: 64 free ports from a base (and the +10000 gRPC twins SeaweedFS needs), the Dask
    dashboards' 40 included, so that stacks running side by side (the suite's two workers) share no port, and no
    firewall chain of one stack covers another's."""
    for _ in range(200):
        # Below the kernel's ephemeral range (32768+), so outgoing connections never take these ports.
        base = random.randrange(12000, 22000 - 64, 64)  # noqa: S311 - not for secrets
        ports = range(base, base + 64)
        if all(port_owner(p) is None for p in ports) and all(port_owner(p + 10000) is None for p in ports[1:8]):
            return {"postgres": base, "s3": base + 1, "hub": base + 8, "prometheus": base + 11, "tracking": base + 12,
                    "dask_gateway": base + 16, "dask_dashboards": base + 20, "inner": free_inner_block()}  # fmt: skip
    raise RuntimeError("no free block of loopback ports found")


class ScratchStacks:
    """Makes configs and LocalBackends; `close` stops and removes every stack it made."""

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        use_shared_installs()
        self.progress = progress
        self.backends: list[LocalBackend] = []
        self.dirs: list[Path] = []

    def config(self, teams: list[dict[str, Any]] | None = None, users: list[str] | None = None, **extra: Any) -> Path:
        """A new stack's config; `extra` adds top-level sections (supervision: {...})."""
        SCRATCH.mkdir(parents=True, exist_ok=True)
        os.chmod(SCRATCH.parent, 0o711)  # noqa: S103 - postgres must traverse
        folder = Path(tempfile.mkdtemp(prefix="stack-", dir=SCRATCH))
        os.chmod(folder, 0o711)  # noqa: S103 - postgres must traverse
        self.dirs.append(folder)
        doc = {
            "state_dir": "state",
            # dave, in no team, is a hub admin: the tests check admins get no team's data; erin is an operator.
            "users": [{"name": u, "admin": u == "dave", "operator": u == "erin"} for u in (users or DEFAULT_USERS)],
            "teams": teams if teams is not None else DEFAULT_TEAMS,
            "ports": free_port_block(),
            **extra,
        }
        path = folder / "cubelab.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def backend(self, config: Path | PlatformConfig) -> LocalBackend:
        cfg = config if isinstance(config, PlatformConfig) else load(config)
        backend = LocalBackend(cfg, progress=self.progress)
        self.backends.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.backends:
            backend.down()
            home = backend.postgres.home
            if not any(home.is_relative_to(folder) for folder in self.dirs):
                shutil.rmtree(home.parent, ignore_errors=True)  # a cluster moved out of a private state dir
        for folder in self.dirs:
            shutil.rmtree(folder, ignore_errors=True)
