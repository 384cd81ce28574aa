"""One interface for bringing a cubelab platform up and down, with one implementation per target."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cubelab.config import PlatformConfig

Progress = Callable[[str], None]


@dataclass
class ServiceStatus:
    name: str
    kind: str
    team: str | None
    url: str
    pid: int | None
    healthy: bool
    rss_mb: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(abc.ABC):
    """Starts, provisions and stops the platform described by a PlatformConfig."""

    def __init__(self, config: PlatformConfig, progress: Progress | None = None) -> None:
        self.config = config
        self.progress: Progress = progress or (lambda _msg: None)

    @abc.abstractmethod
    def up(self) -> None:
        """Bring every service up and provision every team. Idempotent: running services stay."""

    @abc.abstractmethod
    def apply(self) -> None:
        """Provision what the config adds or changes; leave everything else running untouched."""

    @abc.abstractmethod
    def down(self) -> None:
        """Stop every service. Data is kept."""

    @abc.abstractmethod
    def status(self) -> list[ServiceStatus]:
        """Each service with its URL, pid, health and memory."""

    @abc.abstractmethod
    def log_path(self, service: str) -> Any:
        """Where the named service's log is."""

    @abc.abstractmethod
    def description(self) -> dict[str, Any]:
        """The deployment description platform_tests/ reads: URLs and credentials per team."""
