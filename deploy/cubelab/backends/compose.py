"""Platform config -> docker compose: `docker-compose.yml` and `.env` (the secrets), by `cubelab render compose`.

The compose file holds no secret: every password, key and token is a `${NAME}` that compose fills from `.env`,
which is generated here on first render (mode 0600) and kept on later renders, so adding a team adds its
secrets and changes nothing else. Names of the variables: `cubelab.provision.TeamSecrets`.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import yaml

from cubelab import storage
from cubelab.config import PlatformConfig, Team
from cubelab.hub import render
from cubelab.provision import TeamSecrets, user_password_var
from cubelab.secrets import new_access_key, new_password, write_private

HEADER = """\
# cubelab on one machine, rendered by `cubelab render compose` from {config}.
# Do not edit: change the platform config and render again (secrets live in .env, generated, mode 0600).
# Start: docker compose up -d --build      Hub: {public_url}      Tests: docker compose run --rm platform-tests
"""
POSTGRES_IMAGE = "postgres:15.14-bookworm"
SEAWEEDFS_IMAGE = "chrislusf/seaweedfs:4.48"
TRACKING_PORT, HUB_PORT = 5000, 8000
S3_PORT = storage.CONTAINER_PORTS["s3"]
PLATFORM_VARS = ("POSTGRES_PASSWORD", "S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY", "HUB_DB_PASSWORD",
                 "HUB_COOKIE_SECRET", "HUB_PROXY_TOKEN", "CUBELAB_ADMIN_TOKEN")  # fmt: skip


def _ref(name: str) -> str:
    """A required variable: compose stops with this message when .env lacks it."""
    return f"${{{name}:?run cubelab render compose to generate .env}}"


def secret_names(config: PlatformConfig) -> dict[str, Any]:
    """Every variable .env must hold -> how to make a new value."""
    hex_token = lambda: secrets.token_hex(32)  # noqa: E731
    names: dict[str, Any] = dict.fromkeys(PLATFORM_VARS, new_password)
    names["S3_ADMIN_ACCESS_KEY"] = new_access_key
    names["HUB_COOKIE_SECRET"] = names["HUB_PROXY_TOKEN"] = names["CUBELAB_ADMIN_TOKEN"] = hex_token
    for team in config.teams:
        t = TeamSecrets(team.name)
        names |= {t.db_password: new_password, t.s3_access_key: new_access_key, t.s3_secret_key: new_password,
                  t.hub_token: hex_token}  # fmt: skip
    if config.hub.auth.type == "local":
        names |= {user_password_var(u.name): new_password for u in config.users}
    return names


def read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
    return values


def write_env(config: PlatformConfig, path: Path) -> list[str]:
    """Create or complete .env; existing values are kept. Returns the names added."""
    values = read_env(path)
    added = []
    for name, make in secret_names(config).items():
        if name not in values:
            values[name] = make()
            added.append(name)
    lines = ["# cubelab secrets for docker compose: generated, keep private, never commit (mode 0600)."]
    lines += [f"{k}={v}" for k, v in values.items()]
    write_private(path, "\n".join(lines) + "\n")  # atomically, mode 0600
    return added


def _team_env(config: PlatformConfig, team: Team) -> dict[str, str]:
    t = TeamSecrets(team.name)
    return render.team_environment(
        config, team, tracking_uri=f"http://tracking-{team.name}:{TRACKING_PORT}{render.service_prefix(team)}",
        s3_endpoint=f"http://s3:{S3_PORT}", access_key=_ref(t.s3_access_key), secret_key=_ref(t.s3_secret_key),
    )  # fmt: skip


def hub_settings(config: PlatformConfig) -> dict[str, Any]:
    """The settings jupyterhub_config.py maps to traits, for the hub container with DockerSpawner."""
    urls = {t.name: f"http://tracking-{t.name}:{TRACKING_PORT}" for t in config.teams}
    tokens = {t.name: _ref(TeamSecrets(t.name).hub_token) for t in config.teams}
    services = render.team_services(config, urls, tokens, config.containers.public_url)
    services.append({"name": render.ADMIN_SERVICE, "api_token": _ref("CUBELAB_ADMIN_TOKEN")})
    culler = config.hub.cull_idle_seconds > 0
    if culler:
        services.append(render.culler_service("python3", config.hub.cull_idle_seconds))
    settings: dict[str, Any] = {
        "bind_url": f"http://0.0.0.0:{HUB_PORT}",
        "hub_bind_url": "http://0.0.0.0:8081",
        "hub_connect_url": "http://hub:8081",
        "db_url": "postgresql+psycopg2://hub:" + _ref("HUB_DB_PASSWORD") + "@postgres:5432/jupyterhub",
        "cookie_secret": _ref("HUB_COOKIE_SECRET"),
        "proxy_token": _ref("HUB_PROXY_TOKEN"),
        "admin_users": list(config.admins),
        "groups": render.load_groups(config),
        "load_roles": render.roles(config, culler),
        "services": services,
        "template_paths": ["/opt/cubelab/templates"],
        "template_vars": render.template_vars(config, config.containers.public_url),
        "subdomain_host": render.subdomain_host(config, config.containers.public_url),
        "server_token_scopes": render.SERVER_TOKEN_SCOPES,
        "team_env": {t.name: _team_env(config, t) for t in config.teams},
        "spawner_class": "dockerspawner.DockerSpawner",
        "docker_image": config.containers.image("notebook"),
        # Users' containers join the network of the tracking servers and S3, not the one Postgres is on.
        "docker_network": "cubelab-users",
        "docker_volumes": {"cubelab-home-{username}": "/home/jovyan/work"},
        "gpu_teams": [t.name for t in config.teams if t.gpu],
    }  # fmt: skip
    settings |= render.auth_settings(
        config,
        passwords_file="/srv/cubelab/passwords.json",
        client_secret_file="/run/secrets/oidc-client-secret",  # noqa: S106 - a path, not a secret
        callback_url=f"{config.containers.public_url}/hub/oauth_callback",
    )
    return settings


def _healthcheck(test: list[str], start: str = "30s") -> dict[str, Any]:
    return {"test": test, "interval": "10s", "timeout": "5s", "retries": 5, "start_period": start}


def _python_health(url: str) -> list[str]:
    return ["CMD", "python3", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=4)"]


def _provision_env(config: PlatformConfig) -> dict[str, str]:
    env = {
        "CUBELAB_TEAMS": " ".join(t.name for t in config.teams),
        "CUBELAB_BUCKET_PREFIX": config.storage.bucket_prefix,
        "POSTGRES_HOST": "postgres",
        "POSTGRES_PASSWORD": _ref("POSTGRES_PASSWORD"),
        "S3_ENDPOINT": f"http://s3:{S3_PORT}",
        "S3_ADMIN_ACCESS_KEY": _ref("S3_ADMIN_ACCESS_KEY"),
        "S3_ADMIN_SECRET_KEY": _ref("S3_ADMIN_SECRET_KEY"),
        "HUB_DB_PASSWORD": _ref("HUB_DB_PASSWORD"),
    }
    for team in config.teams:
        t = TeamSecrets(team.name)
        env |= {t.db_password: _ref(t.db_password), t.s3_access_key: _ref(t.s3_access_key),
                t.s3_secret_key: _ref(t.s3_secret_key)}  # fmt: skip
    if config.hub.auth.type == "local":
        env["CUBELAB_USERS"] = " ".join(u.name for u in config.users)
        env["CUBELAB_PASSWORDS_FILE"] = "/srv/cubelab/passwords.json"
        env |= {user_password_var(u.name): _ref(user_password_var(u.name)) for u in config.users}
    return env


def _s3_identity_env(config: PlatformConfig) -> dict[str, str]:
    """The part of the provisioning environment that writing the S3 identities needs (no database secrets)."""
    names = {"CUBELAB_TEAMS", "CUBELAB_BUCKET_PREFIX", "S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY"}
    for team in config.teams:
        names |= {TeamSecrets(team.name).s3_access_key, TeamSecrets(team.name).s3_secret_key}
    return {k: v for k, v in _provision_env(config).items() if k in names}


def _tracking(config: PlatformConfig, team: Team) -> dict[str, Any]:
    t, prefix = TeamSecrets(team.name), render.service_prefix(team)
    return {
        "image": config.containers.image("tracking"),
        "restart": "unless-stopped",
        "environment": {
            "CUBELAB_BACKEND_STORE_URI": f"postgresql+psycopg2://{team.role}:{_ref(t.db_password)}"
            f"@postgres:5432/{team.database}",
            "CUBELAB_ARTIFACTS_DESTINATION": f"s3://{config.bucket(team)}/{config.storage.artifact_prefix}",
            "CUBELAB_SERVICE_PREFIX": prefix,
            "CUBELAB_SERVICE_NAME": team.service,
            "CUBELAB_TEAM_NAME": team.name,
            "CUBELAB_SERVICE_TOKEN": _ref(t.hub_token),
            "CUBELAB_HUB_API_URL": "http://hub:8081/hub/api",
            "CUBELAB_HUB_PUBLIC_URL": config.containers.public_url,
            "CUBELAB_SERVICE_URL": render.service_url(config, team, config.containers.public_url),
            # The names other containers reach it by, directly and through the hub's proxy (mlflow refuses
            # unknown Host headers; the public host is added from CUBELAB_HUB_PUBLIC_URL).
            "CUBELAB_ALLOWED_HOSTS": f"tracking-{team.name}:{TRACKING_PORT},hub:{HUB_PORT}",
            # The server writes artefacts with the team's own S3 identity: no other bucket is reachable.
            "AWS_ACCESS_KEY_ID": _ref(t.s3_access_key),
            "AWS_SECRET_ACCESS_KEY": _ref(t.s3_secret_key),
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": f"http://s3:{S3_PORT}",
        },
        "depends_on": {"init": {"condition": "service_completed_successfully"}},
        "networks": ["backend", "users"],
        "healthcheck": _healthcheck(_python_health(f"http://127.0.0.1:{TRACKING_PORT}{prefix}/health"), "60s"),
    }


def render_compose(config: PlatformConfig) -> dict[str, Any]:
    images = config.containers
    tracking_image = images.image("tracking")
    build = lambda name: {"context": ".", "dockerfile": f"images/{name}/Dockerfile"}  # noqa: E731
    services: dict[str, Any] = {
        "postgres": {
            "image": POSTGRES_IMAGE,
            "restart": "unless-stopped",
            "environment": {"POSTGRES_PASSWORD": _ref("POSTGRES_PASSWORD")},
            "volumes": ["postgres-data:/var/lib/postgresql/data"],
            "networks": ["backend"],
            "healthcheck": _healthcheck(["CMD", "pg_isready", "-U", "postgres"]),
        },
        # One-shot: SeaweedFS reads its S3 identities (one per team, limited to its bucket) from a file at start.
        "s3-identities": {
            "image": tracking_image,
            "build": build("tracking"),
            "command": ["python3", "-m", "cubelab.provision", "s3-identities", "/etc/seaweedfs/identities.json"],
            "environment": _s3_identity_env(config),
            "volumes": ["s3-config:/etc/seaweedfs"],
            "user": "root",
            "networks": ["backend"],
            "restart": "no",
        },
        # SeaweedFS on a network of its own (internal: no route out, no one else on it): its master, volume,
        # filer and admin servers and every gRPC port ignore the teams' S3 identities.
        "s3-store": {
            "image": SEAWEEDFS_IMAGE,
            "restart": "unless-stopped",
            # The binary itself, not the image's entrypoint script (which knows the classic subcommands only).
            "entrypoint": ["/usr/bin/weed"],
            "command": storage.container_args(),
            "volumes": ["s3-data:/data", "s3-config:/etc/seaweedfs:ro"],
            "depends_on": {"s3-identities": {"condition": "service_completed_successfully"}},
            "networks": ["storage"],
            "healthcheck": _healthcheck(
                ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{S3_PORT}/healthz"]
            ),
        },
        # The S3 API, and nothing else of SeaweedFS, for the other services and users' containers.
        "s3": {
            "image": tracking_image,
            "restart": "unless-stopped",
            "command": ["python3", "-m", "cubelab.relay", str(S3_PORT), f"s3-store:{S3_PORT}"],
            "depends_on": {"s3-store": {"condition": "service_healthy"}},
            "networks": ["storage", "backend", "users"],
            "healthcheck": _healthcheck(_python_health(f"http://127.0.0.1:{S3_PORT}/healthz")),
        },
        # One-shot: databases and roles (per team and the hub's), buckets, first passwords.
        "init": {
            "image": tracking_image,
            "command": ["python3", "-m", "cubelab.provision", "all"],
            "environment": _provision_env(config),
            "volumes": ["hub-data:/srv/cubelab"],
            "user": "root",
            "depends_on": {"postgres": {"condition": "service_healthy"}, "s3": {"condition": "service_healthy"}},
            "networks": ["backend"],
            "restart": "no",
        },
    }
    for team in config.teams:
        services[f"tracking-{team.name}"] = _tracking(config, team)
    settings = json.dumps(hub_settings(config), indent=1)
    services["hub"] = {
        "image": images.image("hub"),
        "build": build("hub"),
        "restart": "unless-stopped",
        "ports": [f"${{CUBELAB_HTTP_PORT:-{HUB_PORT}}}:{HUB_PORT}"],
        "environment": {"CUBELAB_HUB_SETTINGS_JSON": settings},
        # A real PID 1 (tini): signals reach the hub and the proxy it starts, zombies are reaped.
        "init": True,
        "volumes": [
            "hub-data:/srv/cubelab",
            # DockerSpawner starts users' containers through the Docker API: the hub is root-equivalent on
            # this machine. That is docker compose's model; use Helm for a multi-tenant cluster.
            "/var/run/docker.sock:/var/run/docker.sock",
        ],
        "depends_on": {"init": {"condition": "service_completed_successfully"}},
        "networks": ["backend", "users"],
        "healthcheck": _healthcheck(_python_health(f"http://127.0.0.1:{HUB_PORT}/hub/health")),
    }
    gpu_reservation = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all",
                                                                   "capabilities": ["gpu"]}]}}}  # fmt: skip
    # Never started by `up` (profiles): `docker compose --profile build build` builds the users' image,
    # `docker compose run --rm notebook` tries it (with the GPUs when a team may use them).
    services["notebook"] = {
        "image": images.image("notebook"),
        "build": build("notebook"),
        "profiles": ["build"],
        "networks": ["users"],
        "healthcheck": _healthcheck(_python_health("http://127.0.0.1:8888/api")),
    }
    if any(t.gpu for t in config.teams):
        services["notebook"]["deploy"] = gpu_reservation
    services["platform-tests"] = {
        "image": images.image("platform-tests"),
        "build": build("platform-tests"),
        "profiles": ["test"],
        "environment": _s3_identity_env(config) | _describe_env(config),
        "depends_on": {"hub": {"condition": "service_healthy"}},
        "networks": ["backend", "users"],
        "restart": "no",
    }
    return {
        "services": services,
        "networks": {"backend": {}, "users": {"name": "cubelab-users"}, "storage": {"internal": True}},
        "volumes": {"postgres-data": {}, "s3-data": {}, "s3-config": {}, "hub-data": {}},
    }


def _describe_env(config: PlatformConfig) -> dict[str, str]:
    """What `python -m cubelab.provision describe` needs to write the platform_tests deployment description."""
    env = {
        "CUBELAB_BACKEND": "compose",
        "S3_ENDPOINT": f"http://s3:{S3_PORT}",
        "CUBELAB_HUB_URL": f"http://hub:{HUB_PORT}",
        "CUBELAB_HUB_API_URL": "http://hub:8081/hub/api",
        "CUBELAB_ADMIN_TOKEN": _ref("CUBELAB_ADMIN_TOKEN"),
        "CUBELAB_ADMINS": " ".join(config.admins),
        "CUBELAB_ARTIFACT_PREFIX": config.storage.artifact_prefix,
        "CUBELAB_TRACKING_URL_PATTERN": f"http://tracking-{{team}}:{TRACKING_PORT}/services/mlflow-{{team}}",
        # The services platform_tests' fault tests kill, when the Docker socket is mounted into their container.
        "CUBELAB_FAULT_SERVICES": json.dumps(
            {"postgres": "postgres", "hub": "hub", "s3": "s3-store", "tracking": "tracking-{team}"}
        ),
        # What a user's container must not reach: SeaweedFS itself, every port (its S3 API only via the relay).
        "CUBELAB_STORAGE_INTERNAL": " ".join(
            f"s3-store:{port}" for port in [S3_PORT, *storage.internal_ports(storage.CONTAINER_PORTS)]
        ),
    }
    for team in config.teams:
        env[TeamSecrets(team.name).members] = " ".join(team.members)
    env["CUBELAB_USERS"] = " ".join(u.name for u in config.users)
    if config.hub.auth.type == "local":
        env |= {user_password_var(u.name): _ref(user_password_var(u.name)) for u in config.users}
    return env


def write(config: PlatformConfig, out_dir: Path) -> tuple[Path, Path, list[str]]:
    """Write docker-compose.yml and complete .env in out_dir. Returns both paths and the secrets added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env_added = write_env(config, out_dir / ".env")
    text = HEADER.format(config=config.path.name, public_url=config.containers.public_url)
    text += yaml.safe_dump(render_compose(config), sort_keys=False, width=120)
    compose = out_dir / "docker-compose.yml"
    compose.write_text(text)
    return compose, out_dir / ".env", env_added
