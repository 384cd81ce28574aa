"""What `cubelab status` reports about a service, and the progress callback long steps report to.

There is no backend interface here on purpose: only the embedded stack is started and stopped by cubelab.
docker compose and Helm are renderings of the same deployment plan (cubelab.plan) that `docker compose` and
`helm` then run; see docs/architecture.md for why, and for when an interface would be worth having.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

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
    restarts: int = 0  # by the supervisor, since the last `cubelab down`
    note: str = ""  # why the supervisor left it down, if it did

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
