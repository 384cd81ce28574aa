"""Where the embedded stack keeps things under its state directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
        """Installed environments; CUBELAB_INSTALL_DIR lets several stacks (the tests') share one."""
        return Path(os.environ.get("CUBELAB_INSTALL_DIR") or self.root / "install")

    @property
    def ports(self) -> Path:
        return self.root / "ports.json"

    @property
    def description(self) -> Path:
        return self.root / "deployment.json"

    def create(self) -> None:
        # 0711: the postgres system user must traverse to its own data folder, but not list ours.
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # noqa: S103 - traverse only, no listing
        for folder in (self.run, self.logs, self.s3, self.home):
            folder.mkdir(exist_ok=True, mode=0o700)
        self.secrets.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.secrets, 0o700)
