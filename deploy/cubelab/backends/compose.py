"""Platform config -> docker compose: `docker-compose.yml` and `.env` (the secrets), by `cubelab render compose`.

The compose file holds no secret: every password, key and token is a `${NAME}` that compose fills from `.env`,
which is generated here on first render (mode 0600) and kept on later renders, so adding a team adds its
secrets and changes nothing else. Names of the variables: `cubelab.provision.TeamSecrets`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from cubelab import plan, storage
from cubelab.config import PlatformConfig
from cubelab.hub import render
from cubelab.provision import TeamSecrets, user_password_var
from cubelab.secrets import new_access_key, new_fernet_key, new_password, new_token, write_private

HEADER = """\
# cubelab on one machine, rendered by `cubelab render compose` from {config}.
# Do not edit: change the platform config and render again (secrets live in .env, generated, mode 0600).
# Start: docker compose up -d --build      Hub: {public_url}      Tests: docker compose run --rm platform-tests
"""
# The gateway's image is built on the users' image: that one first.
GATEWAY_HEADER = "# With the Dask gateway: docker compose --profile build build notebook, before `up --build`.\n"
POSTGRES_IMAGE = "postgres:15.14-bookworm"
SEAWEEDFS_IMAGE = "chrislusf/seaweedfs:4.48"
PORTS = plan.CONTAINER_PORTS
HUB_PORT, S3_PORT, GATEWAY_PORT = PORTS["hub"], PORTS["s3"], PORTS["dask_gateway"]
# Secrets of an external service: the operator puts them into .env; cubelab cannot make them.
EXTERNAL_VARS = {"postgres": ("POSTGRES_PASSWORD",), "s3": ("S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY")}
PASSWORDS_FILE = "/srv/cubelab/passwords.json"
BACKUPS = "/backups"
IDENTITIES_DIR = str(Path(plan.IDENTITIES_FILE).parent)
OIDC_SECRET = Path("/run/secrets/oidc-client-secret")  # compose mounts secrets under /run/secrets/
# images/gateway: dask-gateway-server's venv, its state (the database: root only) and the clusters' folders.
GATEWAY_VENV, GATEWAY_STATE, GATEWAY_CLUSTERS = "/opt/gateway", "/var/lib/cubelab-gateway", "/var/lib/cubelab-clusters"
# What the gateway, as root, needs to run clusters as members' accounts: make the accounts and chown their folders
# (CHOWN), switch to them (SETUID, SETGID), stop their processes (KILL) and remove their folders (DAC_OVERRIDE).
GATEWAY_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "KILL", "SETGID", "SETUID"]
PLATFORM_VARS = (*EXTERNAL_VARS["postgres"], *EXTERNAL_VARS["s3"], plan.HUB_DB_PASSWORD, plan.HUB_COOKIE_SECRET,
                 plan.HUB_PROXY_TOKEN, plan.ADMIN_TOKEN, plan.METRICS_TOKEN)  # fmt: skip


def _ref(name: str, operators: bool = False) -> str:
    """A required variable: compose stops with this message when .env lacks it."""
    if operators:
        return f"${{{name}:?set {name} in .env: the admin credentials of your external Postgres or S3}}"
    return f"${{{name}:?run cubelab render compose to generate .env}}"


def _fill(config: PlatformConfig, value: Any) -> Any:
    """The plan's $(NAME) secret references as compose variables."""
    theirs = {name for service in _external(config) for name in EXTERNAL_VARS[service]}
    return plan.resolve(value, lambda name: _ref(name, name in theirs))


def _external(config: PlatformConfig) -> set[str]:
    return {name for name in ("postgres", "s3") if getattr(config.containers, name) is not None}


def secret_names(config: PlatformConfig) -> dict[str, Any]:
    """Every variable .env must hold -> how to make a new value."""
    names: dict[str, Any] = dict.fromkeys(PLATFORM_VARS, new_password)
    names["S3_ADMIN_ACCESS_KEY"] = new_access_key
    for name in (plan.HUB_COOKIE_SECRET, plan.HUB_PROXY_TOKEN, plan.ADMIN_TOKEN, plan.METRICS_TOKEN):
        names[name] = new_token
    for service in _external(config):
        for name in EXTERNAL_VARS[service]:
            del names[name]
    for team in config.teams:
        t = TeamSecrets(team.name)
        names |= {t.db_password: new_password, t.s3_access_key: new_access_key, t.s3_secret_key: new_password,
                  t.hub_token: new_token}  # fmt: skip
    if config.dask_gateway.enabled:
        names |= {plan.GATEWAY_TOKEN: new_token, plan.GATEWAY_DB_KEY: new_fernet_key}
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


def hub_settings(config: PlatformConfig) -> dict[str, Any]:
    """The settings cubelab.hub.configure maps to traits, for the hub container with DockerSpawner."""
    addr = plan.compose_addresses(config)
    files = plan.HubFiles(
        templates="/opt/cubelab/templates",
        passwords=PASSWORDS_FILE,
        client_secret=str(OIDC_SECRET),
        culler=render.culler_service("python3", config.hub.cull_idle_seconds),
    )
    settings = plan.hub_settings(config, addr, files) | plan.hub_state(addr)
    settings |= {
        "bind_url": f"http://0.0.0.0:{HUB_PORT}",
        "hub_bind_url": f"http://0.0.0.0:{PORTS['hub_api']}",
        "hub_connect_url": f"http://hub:{PORTS['hub_api']}",
        "spawner_class": "dockerspawner.DockerSpawner",
        "spawner_timeout": config.hub.spawn_timeout_seconds,
        "docker_image": config.containers.image("notebook"),
        # Users' containers join the network of the tracking servers and S3, not the one Postgres is on.
        "docker_network": "cubelab-users",
        "docker_volumes": {"cubelab-home-{username}": "/home/jovyan/work"},
    }
    return _fill(config, settings)


def _healthcheck(test: list[str], start: str = "30s") -> dict[str, Any]:
    return {"test": test, "interval": "10s", "timeout": "5s", "retries": 5, "start_period": start}


def _python_health(url: str) -> list[str]:
    return ["CMD", "python3", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=4)"]


def _after(services: dict[str, Any], service: plan.Service, jobs: set[str]) -> dict[str, Any]:
    """compose's depends_on for what the plan says comes first (of what this file runs)."""
    when = lambda name: "service_completed_successfully" if name in jobs else "service_healthy"  # noqa: E731
    return {name: {"condition": when(name)} for name in service.after if name in services}


def _run(config: PlatformConfig, service: plan.Service, services: dict[str, Any], jobs: set[str]) -> dict[str, Any]:
    """A plan service as a compose service: its image, command, environment, health check and order."""
    out: dict[str, Any] = {
        "image": config.containers.image(service.image),
        "command": list(service.command),
        "environment": _fill(config, service.env),
    }
    if after := _after(services, service, jobs):
        out["depends_on"] = after
    if service.job:
        out |= {"user": "root", "restart": "no"}  # writes into volumes other accounts own
    else:
        out["restart"] = "unless-stopped"
    if service.health:
        out["healthcheck"] = _healthcheck(_python_health(f"http://127.0.0.1:{service.port}{service.health}"), "60s")
    return out


def _bundled(config: PlatformConfig, build: Any) -> dict[str, Any]:
    """Postgres and SeaweedFS, for whichever of them the config does not name an external server."""
    external = _external(config)
    addr = plan.compose_addresses(config)
    services: dict[str, Any] = {}
    if "postgres" not in external:
        services["postgres"] = {
            "image": POSTGRES_IMAGE,
            "restart": "unless-stopped",
            "environment": {"POSTGRES_PASSWORD": _ref("POSTGRES_PASSWORD")},
            "volumes": ["postgres-data:/var/lib/postgresql/data"],
            "networks": ["backend"],
            "healthcheck": _healthcheck(["CMD", "pg_isready", "-U", "postgres"]),
        }
    if "s3" in external:
        return services
    services |= {
        # One-shot: SeaweedFS reads its S3 identities (one per team, limited to its bucket) from a file at start.
        "s3-identities": _run(config, plan.s3_identities_service(config, addr), services, set())
        | {"build": build("tracking"), "volumes": [f"s3-config:{IDENTITIES_DIR}"], "networks": ["backend"]},
        # SeaweedFS on a network of its own (internal: no route out, no one else on it): its master, volume,
        # filer and admin servers and every gRPC port ignore the teams' S3 identities.
        "s3-store": {
            "image": SEAWEEDFS_IMAGE,
            "restart": "unless-stopped",
            # The binary itself, not the image's entrypoint script (which knows the classic subcommands only).
            "entrypoint": ["/usr/bin/weed"],
            "command": storage.container_args(),
            "volumes": ["s3-data:/data", f"s3-config:{IDENTITIES_DIR}:ro"],
            "depends_on": {"s3-identities": {"condition": "service_completed_successfully"}},
            "networks": ["storage"],
            "healthcheck": _healthcheck(
                ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{S3_PORT}/healthz"]
            ),
        },
        # The S3 API, and nothing else of SeaweedFS, for the other services and users' containers.
        "s3": {
            "image": config.containers.image("tracking"),
            "restart": "unless-stopped",
            "command": ["python3", "-m", "cubelab.relay", str(S3_PORT), f"s3-store:{S3_PORT}"],
            "depends_on": {"s3-store": {"condition": "service_healthy"}},
            "networks": ["storage", "backend", "users"],
            "healthcheck": _healthcheck(_python_health(f"http://127.0.0.1:{S3_PORT}/healthz")),
        },
    }
    return services


def gateway_settings(config: PlatformConfig) -> dict[str, Any]:
    """The settings cubelab.gateway.configure maps to traits, for the gateway container: clusters run in it."""
    settings = plan.gateway_settings(config, plan.compose_addresses(config))
    settings |= {
        # The private API (schedulers' heartbeats) on loopback: clusters run in the same container.
        "api_address": f"127.0.0.1:{PORTS['dask_gateway_api']}",
        "db_url": f"sqlite:///{GATEWAY_STATE}/gateway.sqlite",
        "backend": {
            "class": "cubelab.gateway.container.ContainerLocalBackend",
            "account_prefix": plan.USER_PREFIX,
            "clusters_dir": GATEWAY_CLUSTERS,
            # Clusters inherit only these from the gateway (the rest is the team's storage and dask's TLS).
            "inherited_environment": ["PATH", "LANG"],
            "scheduler_cmd": [plan.IMAGE_GATEWAY_DASK, "scheduler"],
            "worker_cmd": [plan.IMAGE_GATEWAY_DASK, "worker"],
        },
    }
    return _fill(config, settings)


def gateway_service(config: PlatformConfig, build: Any) -> dict[str, Any]:
    """dask-gateway with its clusters (schedulers and workers) inside its container, on the users' network only:
    users' containers reach its proxy, it reaches the hub's API, and workers reach S3; nothing of the backend."""
    health = f"http://127.0.0.1:{GATEWAY_PORT}{render.GATEWAY_PREFIX}/api/health"
    return {
        "image": config.containers.image("gateway"),
        "build": build("gateway") | {"args": {"BASE_IMAGE": config.containers.image("notebook")}},
        "restart": "unless-stopped",
        "command": [f"{GATEWAY_VENV}/bin/dask-gateway-server", "-f", f"{GATEWAY_VENV}/dask_gateway_config.py"],
        "environment": {"CUBELAB_GATEWAY_SETTINGS_JSON": json.dumps(gateway_settings(config), indent=1)},
        # Root, to run each member's clusters as their own account, with no capability beyond that.
        "user": "root",
        "cap_drop": ["ALL"],
        "cap_add": list(GATEWAY_CAPABILITIES),
        "security_opt": ["no-new-privileges:true"],
        # A real PID 1 (tini): signals reach the gateway, and workers' orphans are reaped.
        "init": True,
        "depends_on": {"provision": {"condition": "service_completed_successfully"}},
        "networks": ["users"],
        "healthcheck": _healthcheck(_python_health(health)),
    }


def render_compose(config: PlatformConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """The compose file's content; out_dir (default: the config's folder) is where it will be written, for paths
    relative to it."""
    images = config.containers
    addr = plan.compose_addresses(config)
    build = lambda name: {"context": ".", "dockerfile": f"images/{name}/Dockerfile"}  # noqa: E731
    services = _bundled(config, build)
    jobs = {"s3-identities", "provision"}
    provision = plan.provision_service(config, addr, passwords_file=PASSWORDS_FILE)
    services["provision"] = _run(config, provision, services, jobs) | {
        "volumes": ["hub-data:/srv/cubelab"],
        "networks": ["backend"],
    }
    if "s3-identities" not in services:
        services["provision"]["build"] = build("tracking")  # the first service of the tracking image builds it
    for team in config.teams:
        tracking = plan.tracking_service(config, team, addr)
        services[tracking.name] = _run(config, tracking, services, jobs) | {"networks": ["backend", "users"]}
    if config.dask_gateway.enabled:
        services["dask-gateway"] = gateway_service(config, build)
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
        "depends_on": {"provision": {"condition": "service_completed_successfully"}},
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
        "environment": _fill(config, plan.s3_identity_env(config, addr)) | _describe_env(config),
        "depends_on": {"hub": {"condition": "service_healthy"}},
        "networks": ["backend", "users"],
        "restart": "no",
    }
    # Never started by `up`: `docker compose run --rm backup` backs up into the backups volume,
    # `docker compose run --rm backup restore /backups` puts the newest backup back (README: Backup and restore).
    backup = plan.backup_service(config, addr, to=BACKUPS, passwords_file=PASSWORDS_FILE)
    services["backup"] = _run(config, backup, services, jobs) | {
        "entrypoint": list(plan.BACKUP_COMMAND),
        "command": list(backup.command[len(plan.BACKUP_COMMAND) :]),
        "profiles": ["maintenance"],
        "volumes": [f"backups:{BACKUPS}", "hub-data:/srv/cubelab"],
        "networks": ["backend"],
    }
    services["backup"].pop("depends_on", None)  # run by hand against a running deployment
    doc: dict[str, Any] = {
        "services": services,
        "networks": {"backend": {}, "users": {"name": "cubelab-users"}, "storage": {"internal": True}},
        "volumes": {"postgres-data": {}, "s3-data": {}, "s3-config": {}, "hub-data": {}, "backups": {}},
    }
    if config.hub.auth.type == "oidc":
        # The provider's client secret, from the file the config names, at the path the hub settings give.
        source = Path(
            os.path.relpath(config.path.parent / config.hub.auth.client_secret_file, out_dir or config.path.parent)
        )
        services["hub"]["secrets"] = [{"source": "oidc-client-secret", "target": OIDC_SECRET.name}]
        doc["secrets"] = {"oidc-client-secret": {"file": str(source)}}
    return doc


def _describe_env(config: PlatformConfig) -> dict[str, str]:
    addr = plan.compose_addresses(config)
    env = plan.describe_env(config, addr, backend="compose", hub_url=f"http://hub:{HUB_PORT}")
    if "s3" not in _external(config):
        # What a user's container must not reach: SeaweedFS itself, every port (its S3 API only via the relay).
        internal = [S3_PORT, *storage.internal_ports(storage.CONTAINER_PORTS)]
        env["CUBELAB_STORAGE_INTERNAL"] = " ".join(f"s3-store:{port}" for port in internal)
    # The services platform_tests' fault tests kill, when the Docker socket is mounted into their container.
    faults = {"hub": "hub", "tracking": "tracking-{team}"}
    faults |= {name: service for name, service in (("postgres", "postgres"), ("s3", "s3-store")) if name not in
               _external(config)}  # fmt: skip
    env["CUBELAB_FAULT_SERVICES"] = json.dumps(faults)
    if "CUBELAB_GATEWAY" in env:
        # Clusters run as accounts of the gateway's container, not as the kernel's (platform_tests/test_gateway.py).
        gateway = json.loads(env["CUBELAB_GATEWAY"]) | {"cluster_account": plan.USER_PREFIX + "{user}"}
        env["CUBELAB_GATEWAY"] = json.dumps(gateway)
    return _fill(config, env)


def write(config: PlatformConfig, out_dir: Path) -> tuple[Path, Path, list[str]]:
    """Write docker-compose.yml and complete .env in out_dir. Returns both paths and the secrets added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env_added = write_env(config, out_dir / ".env")
    text = HEADER.format(config=config.path.name, public_url=config.containers.public_url)
    text += GATEWAY_HEADER if config.dask_gateway.enabled else ""
    text += yaml.safe_dump(render_compose(config, out_dir), sort_keys=False, width=120)
    compose = out_dir / "docker-compose.yml"
    compose.write_text(text)
    return compose, out_dir / ".env", env_added
