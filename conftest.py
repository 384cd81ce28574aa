"""Shared test fixtures: embedded stacks brought up by cubelab's own code, on free loopback ports.

Each stack has its own state directory under .cubelab/test-stacks (the postgres system user must be able
to traverse to it, which pytest's 0700 tmp folders do not allow) and shares the installed service
environment with `make up` through CUBELAB_INSTALL_DIR, so the services are installed once.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent
TEST_STACKS = REPO / ".cubelab" / "test-stacks"
os.environ.setdefault("CUBELAB_INSTALL_DIR", str(REPO / ".cubelab" / "install"))
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from cubelab.backends.local import LocalBackend  # noqa: E402
from cubelab.config import PlatformConfig, load  # noqa: E402
from cubelab.procs import port_owner  # noqa: E402

DEFAULT_USERS = ["alice", "bob", "carol", "dave"]
DEFAULT_TEAMS = [
    {"name": "ocean", "members": ["alice", "bob"], "admins": ["alice"]},
    {"name": "land", "members": ["bob", "carol"]},
]


def free_port_block() -> dict[str, int]:
    """A base port with 20 free ports after it (and the +10000 gRPC twins SeaweedFS needs)."""
    for _ in range(200):
        base = random.randrange(20000, 44000, 20)  # noqa: S311 - not for secrets
        ports = range(base, base + 20)
        if all(port_owner(p) is None for p in ports) and all(port_owner(p + 10000) is None for p in ports[1:8]):
            return {"postgres": base, "s3": base + 1, "tracking": base + 10}
    raise RuntimeError("no free block of loopback ports found")


class StackFactory:
    """Makes configs and LocalBackends for tests; stops and removes every stack it made."""

    def __init__(self) -> None:
        self.backends: list[LocalBackend] = []
        self.dirs: list[Path] = []

    def config(self, teams: list[dict[str, Any]] | None = None, users: list[str] | None = None) -> Path:
        TEST_STACKS.mkdir(parents=True, exist_ok=True)
        os.chmod(TEST_STACKS.parent, 0o711)
        folder = Path(tempfile.mkdtemp(prefix="stack-", dir=TEST_STACKS))
        os.chmod(folder, 0o711)
        self.dirs.append(folder)
        doc = {
            "state_dir": "state",
            "users": [{"name": u} for u in (users or DEFAULT_USERS)],
            "teams": teams if teams is not None else DEFAULT_TEAMS,
            "ports": free_port_block(),
        }
        path = folder / "cubelab.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def backend(self, config: Path | PlatformConfig) -> LocalBackend:
        cfg = config if isinstance(config, PlatformConfig) else load(config)
        backend = LocalBackend(cfg, progress=lambda m: print(f"[stack] {m}"))
        self.backends.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.backends:
            backend.down()
        for folder in self.dirs:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def stacks() -> Iterator[StackFactory]:
    factory = StackFactory()
    yield factory
    factory.close()
