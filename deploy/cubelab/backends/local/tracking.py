"""One persistent mlflow tracking server per team, on loopback, with its own database and bucket."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cubelab import plan
from cubelab.backends.local.accounts import ensure_service_home, service_account
from cubelab.backends.local.paths import StatePaths
from cubelab.backends.local.postgres import LocalPostgres
from cubelab.backends.local.seaweed import LocalS3
from cubelab.config import PlatformConfig, Team
from cubelab.hub.render import service_prefix
from cubelab.procs import Launch, ProcessTable, http_ok
from cubelab.provision import TeamSecrets
from cubelab.secrets import SecretStore, new_token

TRACKING_CODE = Path(__file__).resolve().parents[2] / "tracking"


class PortBook:
    """Tracking-server ports, assigned once per team and kept, so adding a team never moves another."""

    def __init__(self, config: PlatformConfig, path: Path) -> None:
        self.config = config
        self.path = path

    def assign(self) -> dict[str, int]:
        saved: dict[str, int] = json.loads(self.path.read_text()) if self.path.exists() else {}
        fixed = {t.name: t.port for t in self.config.teams if t.port is not None}
        book = {name: port for name, port in saved.items() if name not in fixed}
        book.update(fixed)
        taken = set(book.values()) | set(self.config.ports.reserved())
        port = self.config.ports.tracking
        for team in self.config.teams:
            if team.name in book:
                continue
            while port in taken:
                port += 1
            book[team.name] = port
            taken.add(port)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(book, indent=2, sort_keys=True))
        return book


class LocalTracking:
    def __init__(
        self,
        config: PlatformConfig,
        paths: StatePaths,
        procs: ProcessTable,
        postgres: LocalPostgres,
        s3: LocalS3,
    ) -> None:
        self.config = config
        self.paths = paths
        self.procs = procs
        self.postgres = postgres
        self.s3 = s3
        self.secrets = SecretStore(paths.secrets)
        self._ports: dict[str, int] | None = None

    def port(self, team: Team) -> int:
        if self._ports is None:
            self._ports = PortBook(self.config, self.paths.ports).assign()
        return self._ports[team.name]

    def url(self, team: Team) -> str:
        """The tracking URI of the team's server on its own port (it serves under the hub's service path)."""
        return self.addresses().tracking[team.name] + service_prefix(team)

    def service_token(self, team: Team) -> str:
        """The server's hub service token (also its OAuth client secret)."""
        return self.secrets.get(f"teams/{team.name}/hub-service-token", new_token)

    def metrics_token(self) -> str:
        """The token of the hub's metrics service (read:metrics): Prometheus scrapes the hub and the servers with it."""
        return self.secrets.get("metrics-token", new_token)

    def db_password(self, team: Team) -> str:
        return self.secrets.get(f"teams/{team.name}/db-password")

    def account(self, team: Team) -> str | None:
        """The system account the team's server runs as (when cubelab runs as root): one per team, so no
        server can read another's environment (its database password and S3 keys) through /proc."""
        return service_account(team.service) if os.geteuid() == 0 else None

    def home(self, team: Team) -> Path:
        return self.paths.service_home(team.service)

    def addresses(self) -> plan.Addresses:
        ports = {t.name: self.port(t) for t in self.config.teams}
        return plan.local_addresses(self.config, ports, str(self.postgres.socket_dir))

    def secret_values(self, team: Team) -> dict[str, str]:
        """The team's secrets under the plan's names (cubelab.plan.team_secret_keys), and the metrics token."""
        t, creds = TeamSecrets(team.name), self.s3.team_credentials(team)
        return {t.db_password: self.db_password(team), t.s3_access_key: creds.access_key,
                t.s3_secret_key: creds.secret_key, t.hub_token: self.service_token(team),
                plan.METRICS_TOKEN: self.metrics_token()}  # fmt: skip

    def launch(self, team: Team, venv: Path) -> Launch:
        # The plan's service, as the containers run it, on the services venv's Python; secrets never in argv.
        service = plan.tracking_service(self.config, team, self.addresses())
        argv = [str(venv / "bin/python"), *service.command[1:]]
        env = plan.resolve(service.env, self.secret_values(team).__getitem__)
        home = self.home(team)
        env |= {
            "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            # Fewer, smaller malloc arenas: an idle server keeps ~40 MB less.
            "MALLOC_ARENA_MAX": "2",
            "PYTHONDONTWRITEBYTECODE": "1",
            "CUBELAB_STACK": str(self.paths.root),
        }
        account = self.account(team)

        def make_home() -> None:
            if account:  # never root: the server reads only the shared install, its HOME and its environment
                ensure_service_home(account, home, f"cubelab tracking server of team {team.name}")
            else:
                home.mkdir(parents=True, exist_ok=True)

        return Launch(
            team.service, argv, env, self.paths.logs / f"{team.service}.log", home,
            handed={service.port: f"tracking server of team {team.name!r}"}, user=account,
            code=tuple(sorted(TRACKING_CODE.glob("*.py"))),  # new server code restarts the servers
            before_start=make_home,
        )  # fmt: skip

    def healthy(self, team: Team) -> bool:
        service = plan.tracking_service(self.config, team, self.addresses())
        return http_ok(f"http://127.0.0.1:{service.port}{service.health}")
