"""The embedded hub: JupyterHub with its proxy, its database in the stack's Postgres, settings from the config."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cubelab import plan
from cubelab.backends.local.accounts import USER_PREFIX, ensure_service_home, service_account
from cubelab.backends.local.paths import StatePaths
from cubelab.backends.local.postgres import LocalPostgres
from cubelab.backends.local.seaweed import LocalS3
from cubelab.backends.local.tracking import LocalTracking
from cubelab.config import PlatformConfig
from cubelab.hub import render
from cubelab.passwords import PasswordFile, hash_password
from cubelab.procs import Launch, ProcessTable, StartError, http_ok, kill_marked, wait_until
from cubelab.provision import HUB_DATABASE, HUB_ROLE
from cubelab.secrets import SecretStore, new_token, write_private

NAME = "hub"


def unix_url(path: Path) -> str:
    """JupyterHub's URL of a unix socket."""
    return "http+unix://" + quote(str(path), safe="")


HUB_FAMILY = "CUBELAB_HUB_FAMILY"  # in the environment of the hub and the processes it starts for itself
HUB_DIR = Path(__file__).resolve().parents[2] / "hub"


class LocalHub:
    def __init__(
        self,
        config: PlatformConfig,
        paths: StatePaths,
        procs: ProcessTable,
        postgres: LocalPostgres,
        s3: LocalS3,
        tracking: LocalTracking,
        gateway_token: Callable[[], str],
    ) -> None:
        self.config = config
        self.gateway_token = gateway_token
        self.paths = paths
        self.procs = procs
        self.postgres = postgres
        self.s3 = s3
        self.tracking = tracking
        self.secrets = SecretStore(paths.secrets)
        self.port = config.ports.hub
        # Users are separate Unix accounts only when cubelab can create them and switch to them.
        self.system_users = os.geteuid() == 0

    # -- addresses -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.config.embedded_public_url

    @property
    def api_url(self) -> str:
        """The hub's own API, straight (not through the proxy)."""
        return self.tracking.addresses().hub_api

    def home_of(self, user: str) -> str:
        if self.system_users:
            try:
                return pwd.getpwnam(f"{USER_PREFIX}{user}").pw_dir
            except KeyError:
                return str(Path("/home") / f"{USER_PREFIX}{user}")
        return str(self.paths.homes / user)

    def admin_token(self) -> str:
        return self.secrets.get("hub-admin-token", new_token)

    # -- provisioning ----------------------------------------------------------------------------
    def ensure_passwords(self, progress: Callable[[str], None]) -> None:
        """Generate each local user's first password (secrets/users/NAME) and keep only its hash for the hub."""
        store = PasswordFile(self.paths.hub / "passwords.json")
        hashes = store.load()
        wanted = {u.name for u in self.config.users}
        changed = False
        for user in self.config.users:
            if user.name not in hashes:
                password = self.secrets.get(f"users/{user.name}")
                hashes[user.name] = hash_password(password)
                changed = True
                progress(f"password of {user.name} generated: {self.secrets.path(f'users/{user.name}')}")
        for gone in set(hashes) - wanted:
            del hashes[gone]
            changed = True
        if changed:
            store.save(hashes)
        admins = self.config.admins
        admin_file = self.secrets.path("admin-password")
        first = self.secrets.path(f"users/{admins[0]}") if admins else None
        if first is None or not first.exists():
            # No admin, or a restored one whose first password is not known here: no stale copy either.
            admin_file.unlink(missing_ok=True)
        elif not admin_file.exists() or admin_file.read_text() != first.read_text():
            write_private(admin_file, first.read_text())

    def ensure_system_users(self, progress: Callable[[str], None]) -> None:
        if not self.system_users:
            return
        for user in self.config.users:
            name = USER_PREFIX + user.name
            try:
                pwd.getpwnam(name)
                continue
            except KeyError:
                pass
            home = Path("/home") / name
            done = subprocess.run(
                ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group",
                 "--comment", f"cubelab user {user.name}", name],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                try:  # another stack starting at the same moment may have made it first
                    pwd.getpwnam(name)
                    continue
                except KeyError:
                    raise StartError(NAME, f"cannot create the Unix account {name}: {done.stderr.strip()}") from None
            os.chmod(home, 0o700)
            progress(f"Unix account {name} created for {user.name} (home {home}, mode 0700)")

    def secret_values(self) -> dict[str, str]:
        """Every secret the plan refers to, by its name there, from this stack's secret store."""
        values = {
            plan.ADMIN_TOKEN: self.admin_token(),
            plan.HUB_DB_PASSWORD: self.secrets.get("hub-db-password"),
            plan.HUB_COOKIE_SECRET: self.secrets.get("hub-cookie-secret", new_token),
            plan.HUB_PROXY_TOKEN: self.secrets.get("hub-proxy-token", new_token),
            plan.METRICS_TOKEN: self.tracking.metrics_token(),
        }
        if self.config.dask_gateway.enabled:
            values[plan.GATEWAY_TOKEN] = self.gateway_token()
        for team in self.config.teams:
            values |= self.tracking.secret_values(team)
        return values

    def settings(self, venv: Path, proxy: Path) -> dict[str, Any]:
        config, ports = self.config, self.config.ports
        # The stack's marker, so that `down` finds the culler even if the hub that started it is gone.
        marker = {"CUBELAB_STACK": str(self.paths.root), HUB_FAMILY: "1"}
        files = plan.HubFiles(
            templates=str(HUB_DIR / "templates"),
            passwords=str(self.paths.hub / "passwords.json"),
            client_secret=str(Path(config.path).parent / config.hub.auth.client_secret_file),
            culler=render.culler_service(str(venv / "bin/python"), config.hub.cull_idle_seconds, marker),
        )
        addr = self.tracking.addresses()
        settings = plan.hub_settings(config, addr, files) | plan.hub_state(addr)
        settings |= {
            # The proxy and the hub listen on unix sockets in folders of their own accounts; the stack's socket
            # holder keeps ports.hub and ports.hub_api and relays them there (cubelab.backends.local.sockets).
            # The proxy's API is reached by the hub alone, on its socket.
            "bind_url": unix_url(self.proxy_socket("public")),
            "proxy_api_url": unix_url(self.proxy_socket("api")),
            "hub_bind_url": unix_url(self.hub_socket),
            "hub_connect_url": f"http://127.0.0.1:{ports.hub_api}",
            "proxy_command": self.proxy_command(proxy),
            "spawner_class": "cubelab.hub.spawner.CubelabSpawner",
            "spawner_cmd": [str(venv / "bin/jupyterhub-singleuser")],
            "spawner_timeout": config.hub.spawn_timeout_seconds,
            "run_as_system_users": self.system_users,
            "system_user_prefix": USER_PREFIX,
            "homes_dir": str(self.paths.homes),
            "stack_marker": str(self.paths.root),
        }
        return plan.resolve(settings, self.secret_values().__getitem__)

    @property
    def hub_socket(self) -> Path:
        return self.paths.sockets / NAME / "api.sock"

    def proxy_socket(self, which: str) -> Path:
        return self.paths.sockets / "proxy" / f"{which}.sock"

    def make_socket_dirs(self) -> None:
        """The hub's and the proxy's socket folders: 0700, each its own account's, in root's sockets folder."""
        self.paths.sockets.mkdir(parents=True, exist_ok=True, mode=0o755)
        for folder, account in ((self.hub_socket.parent, None), (self.proxy_socket("api").parent,
                                                                  self.proxy_account())):  # fmt: skip
            folder.mkdir(exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)
            if account:
                shutil.chown(folder, account, account)
            for stale in folder.glob("*.sock"):  # left by a killed proxy, which would not start over it
                stale.unlink()

    def proxy_account(self) -> str | None:
        """The proxy's own system account when cubelab runs as root: the hub stays root (it starts each user's
        server as that user's account), the proxy, which faces the network, does not."""
        return service_account("proxy") if self.system_users else None

    def proxy_command(self, proxy: Path) -> list[str]:
        if (account := self.proxy_account()) is None:
            return [str(proxy)]
        # setpriv execs in place: the hub's pid record and signals reach the proxy itself. The account (and its
        # group, made with it) exists by the time the hub starts: `provision` makes it.
        return ["setpriv", f"--reuid={account}", f"--regid={account}", "--clear-groups", "--no-new-privs", "--",
                str(proxy)]  # fmt: skip

    def provision(self, progress: Callable[[str], None]) -> None:
        self.postgres.provision_database(HUB_ROLE, HUB_DATABASE, self.secret_values()[plan.HUB_DB_PASSWORD])
        if self.config.hub.auth.type == "local":
            self.ensure_passwords(progress)
        self.ensure_system_users(progress)
        if account := self.proxy_account():
            ensure_service_home(account, self.paths.service_home("proxy"), "cubelab proxy (configurable-http-proxy)")
        if not self.system_users:
            progress(
                "WARNING: cubelab is not running as root, so every user's server runs as this account: "
                "users on this host are NOT isolated from each other or from the platform's secrets."
            )

    # -- running ---------------------------------------------------------------------------------
    def launch(self, venv: Path, proxy: Path, progress: Callable[[str], None]) -> Launch:
        """The hub, with its settings written where it reads them."""
        settings_file = self.paths.hub / "settings.json"
        settings = self.settings(venv, proxy)
        write_private(settings_file, json.dumps(settings, indent=1, sort_keys=True))
        env = {
            "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.paths.hub),
            "LANG": "C.UTF-8",
            "CUBELAB_HUB_SETTINGS": str(settings_file),
            "CUBELAB_STACK": str(self.paths.root),
            HUB_FAMILY: "1",  # inherited by the proxy; the culler gets it in its own environment
        }
        argv = [str(venv / "bin/jupyterhub"), "-f", str(HUB_DIR / "jupyterhub_config.py")]

        def clear_orphans() -> None:
            # A hub that died left its proxy (holding the hub's sockets) and its services running: they carry
            # the hub's environment. Users' servers are spared: the new hub finds them again.
            if orphans := kill_marked(str(self.paths.root), spare="JUPYTERHUB_USER", only=HUB_FAMILY):
                progress(f"stopped {len(orphans)} process(es) left by a hub that is no longer running")
            self.make_socket_dirs()

        ports = self.config.ports
        return Launch(
            NAME, argv, env, self.paths.logs / "hub.log", self.paths.hub,
            relayed={ports.hub: ("ports.hub", self.proxy_socket("public")),
                     ports.hub_api: ("ports.hub + 2, the hub's API", self.hub_socket)},
            # Membership is not part of the fingerprint: `sync` applies it through the hub's API, so a member
            # joining or leaving a team restarts nothing. New teams do restart the hub: their roles exist only in
            # its config. New hub code or templates restart it too.
            settings=json.dumps({k: v for k, v in settings.items() if k != "groups"}, sort_keys=True),
            code=tuple(p for p in sorted(HUB_DIR.rglob("*")) if p.is_file() and p.suffix in (".py", ".html")),
            before_start=clear_orphans,
        )  # fmt: skip

    def healthy(self) -> bool:
        # The proxy answers before the hub is ready; the hub's API through the proxy answers only when both are.
        return http_ok(f"http://127.0.0.1:{self.port}/hub/api/")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.api_url}{path}", data=data, method=method, headers={"Authorization": f"token {self.admin_token()}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            raw = resp.read()
        return json.loads(raw) if raw else None

    def issue_token(self, user: str, note: str = "issued by cubelab", expires_in: int | None = 3600) -> str:
        """A new hub API token of user (for tests and scripts); it carries the user's own permissions."""
        return str(self.api("POST", f"/users/{user}/tokens", {"note": note, "expires_in": expires_in})["token"])

    def wait_token_checks(self, timeout: float = 30.0) -> None:
        """Wait until the hub can check tokens again. JupyterHub answers 403 to every token while its database is
        unreachable (after a Postgres restart its pool reconnects within seconds)."""
        record = self.procs.get(NAME)
        if record is None:
            raise StartError(NAME, "the hub is not running")
        wait_until(
            lambda: self.api("GET", "/user") is not None, timeout, what="hub token checks", record=record, interval=0.5
        )

    def sync(self, progress: Callable[[str], None]) -> None:
        """Make hub users and groups match the config through the hub's API (load_groups applies only at the
        hub's start, and only ever adds), so membership changes need no restart. With OIDC only the groups:
        their members come from the provider at each login."""
        self.wait_token_checks()
        local = self.config.hub.auth.type == "local"
        if local:
            wanted = {u.name for u in self.config.users}
            have = {user["name"] for user in self.api("GET", "/users")}
            for name in sorted(have - wanted):
                self.api("DELETE", f"/users/{name}")
                progress(f"hub user {name} deleted (no longer in the config)")
            if missing := sorted(wanted - have):
                self.api("POST", "/users", {"usernames": missing})
        want_groups = render.groups(self.config)
        have_groups = {g["name"]: g for g in self.api("GET", "/groups")}
        for name, group in have_groups.items():
            if name not in want_groups:
                self.api("DELETE", f"/groups/{name}")
                progress(f"hub group {name} removed (team no longer in the config)")
            elif local:
                if extra := sorted(set(group["users"]) - set(want_groups[name])):
                    self.api("DELETE", f"/groups/{name}/users", {"users": extra})
                    progress(f"removed {', '.join(extra)} from team {name}")
                if joined := sorted(set(want_groups[name]) - set(group["users"])):
                    self.api("POST", f"/groups/{name}/users", {"users": joined})
                    progress(f"added {', '.join(joined)} to team {name}")
