"""Where the embedded stack keeps things under its state directory."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

EXTERNAL_ROOT = Path("/var/lib/cubelab")


# What cubelab itself puts into a state directory (the test suite's shared installs and scratch stacks too).
OWN_ENTRIES = frozenset({"secrets", "run", "logs", "postgres", "s3", "home", "hub", "homes", "service-homes",
                         "install", "scratch", "ports.json", "deployment.json", "gateway",
                         "dask-clusters", "sockets"})  # fmt: skip


class StateDirError(Exception):
    """The state directory cannot be used."""


def reachable_by_others(path: Path) -> bool:
    """Whether every existing folder above path lets other users through."""
    return all(not folder.exists() or folder.stat().st_mode & 0o001 for folder in path.parents)


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def s3(self) -> Path:
        return self.root / "s3"

    @property
    def home(self) -> Path:
        """HOME of the services (mlflow writes small caches there)."""
        return self.root / "home"

    @property
    def install(self) -> Path:
        """Installed environments; CUBELAB_INSTALL_DIR lets several stacks (the tests') share one.

        Users' servers run from the hub environment as their own accounts, so as root it must be somewhere
        they can reach: outside the state dir when that sits in a private folder.
        """
        if env := os.environ.get("CUBELAB_INSTALL_DIR"):
            return Path(env)
        return self.reachable_or_external(self.root / "install")

    def external(self, name: str) -> Path:
        """A folder for this stack under /var/lib/cubelab, for what must not sit in a private state dir."""
        ident = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        return EXTERNAL_ROOT / ident / name

    def reachable_or_external(self, path: Path) -> Path:
        if os.geteuid() == 0 and not reachable_by_others(path):
            return self.external(path.name)
        return path

    def placed(self, name: str, movable: bool) -> Path:
        """Where the service data folder NAME lives: <state>/NAME, or, if movable and the service's account could
        not pass through to that (a state dir under a private folder such as /root), /var/lib/cubelab/<id>/NAME.
        Once recorded in <state>/NAME-location (remember_place), the choice never changes."""
        record = self.root / f"{name}-location"
        if record.exists():
            return Path(record.read_text().strip())
        inside = self.root / name
        return self.external(name) if movable and not reachable_by_others(inside) else inside

    def remember_place(self, name: str, folder: Path) -> None:
        record = self.root / f"{name}-location"
        if not record.exists():
            record.write_text(f"{folder}\n")

    def service_home(self, name: str) -> Path:
        """HOME of the service called name (a tracking server, the proxy) when it runs as its own account."""
        return self.reachable_or_external(self.root / "service-homes") / name

    @property
    def sockets(self) -> Path:
        """The services' unix sockets, one folder each, which only that service's account may write to: no other
        account can put a socket in a service's place. Outside a private state dir, since clients pass through."""
        return self.reachable_or_external(self.root / "sockets")

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    @property
    def gateway(self) -> Path:
        """dask-gateway's settings and database (root only)."""
        return self.root / "gateway"

    @property
    def dask_clusters(self) -> Path:
        """Clusters' working folders: each owned by the cluster's user, so the folder above is traversable."""
        return self.reachable_or_external(self.root / "dask-clusters")

    @property
    def homes(self) -> Path:
        """Users' homes when they are not separate Unix accounts (cubelab not run as root)."""
        return self.root / "homes"

    @property
    def ports(self) -> Path:
        return self.root / "ports.json"

    @property
    def description(self) -> Path:
        return self.root / "deployment.json"

    @property
    def marker(self) -> Path:
        """Says whether cubelab created the state directory ("created") or was given an empty one ("adopted")."""
        return self.root / ".cubelab-state"

    def create(self) -> None:
        """Make the state directory, or use one cubelab made. An existing folder that is not cubelab's is refused
        if it holds anything, and used as it is if empty; only a folder cubelab created has its mode changed."""
        if not self.root.exists():
            self.root.mkdir(parents=True)
            self.marker.write_text("created\n")
        elif not self.marker.exists():
            entries = {entry.name for entry in self.root.iterdir()}
            if entries and entries <= OWN_ENTRIES:
                # made by a cubelab from before the marker, or by the test suite (its install/ and scratch/)
                self.marker.write_text("created\n")
            elif entries:
                raise StateDirError(f"{self.root} exists, is not empty and was not made by cubelab; "
                                    "set state_dir to a new folder")  # fmt: skip
            else:
                self.marker.write_text("adopted\n")
        if self.marker.read_text().strip() == "created":
            # 0711: the postgres system user must traverse to its own data folder, but not list ours.
            os.chmod(self.root, 0o711)  # noqa: S103 - traverse only, no listing
        for folder in (self.run, self.logs, self.s3, self.home, self.hub):
            folder.mkdir(exist_ok=True, mode=0o700)
        self.secrets.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.secrets, 0o700)
