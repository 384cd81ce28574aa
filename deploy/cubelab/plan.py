"""The deployment plan: what a cubelab deployment is, computed once from the platform config.

Every target renders what these functions return: the embedded stack (local processes), docker compose and
Helm. A target supplies only its `Addresses`, how its services reach each other, and where its hub keeps a few
files; names, URLs, variables, roles and services are made here and nowhere else. Secrets appear as references,
`$(NAME)` (Kubernetes' own syntax), never as values: the embedded stack resolves them from its secret store,
compose turns them into `${NAME}` filled from .env, and on Kubernetes kubelet or the hub expands them from
variables set from Secrets. The names are `cubelab.provision.TeamSecrets`' and `HUB_SECRETS`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from cubelab import storage
from cubelab.config import PlatformConfig, Team
from cubelab.hub import render
from cubelab.provision import HUB_DATABASE, HUB_ROLE, TeamSecrets, user_password_var

REF = re.compile(r"\$\(([A-Z][A-Z0-9_]*)\)")
# Ports inside containers (compose and Kubernetes): each service has its own address there.
# The listening sockets the embedded stack's socket holder handed a service, "PORT=FD,..." (set by cubelab.procs;
# read by cubelab.tracking.serve and cubelab.gateway.backend).
LISTEN_FDS_VAR = "CUBELAB_LISTEN_FDS"
POSTGRES_AUTH = "scram-sha-256"  # the only way the platform's clients let its Postgres servers check them
CONTAINER_PORTS = {"hub": 8000, "hub_api": 8081, "tracking": 5000, "s3": storage.CONTAINER_PORTS["s3"],
                   "postgres": 5432, "dask_gateway": 8000, "dask_gateway_api": 8001}  # fmt: skip
# The hub's own secrets, for the targets that run the hub themselves (embedded, compose).
ADMIN_TOKEN, HUB_DB_PASSWORD, HUB_COOKIE_SECRET, HUB_PROXY_TOKEN = (
    "CUBELAB_ADMIN_TOKEN", "HUB_DB_PASSWORD", "HUB_COOKIE_SECRET", "HUB_PROXY_TOKEN")  # fmt: skip
# The token of the hub service render.METRICS_SERVICE (read:metrics only): what Prometheus scrapes with.
METRICS_TOKEN = "CUBELAB_METRICS_TOKEN"  # noqa: S105 - a variable name
# Where the metrics are served: the hub's own path (JupyterHub's), and each tracking server's, outside its
# service prefix so the hub's proxy never routes to it.
HUB_METRICS_PATH, TRACKING_METRICS_PATH = "/hub/metrics", "/metrics"
S3_REGION = "us-east-1"
# dask-gateway (cubelab.gateway): its hub service token, and the key its database encrypts clusters' TLS keys with.
GATEWAY_TOKEN, GATEWAY_DB_KEY = "CUBELAB_GATEWAY_TOKEN", "CUBELAB_GATEWAY_DB_KEY"
# The kernel environment whose dask runs clusters' schedulers and workers (its `dask` command), in every target;
# in the notebook image (images/notebook: each kernel at /opt/conda/envs/cubelab-NAME) that is this command.
GATEWAY_WORKER_KERNEL = "sklearn"
IMAGE_GATEWAY_DASK = f"/opt/conda/envs/cubelab-{GATEWAY_WORKER_KERNEL}/bin/dask"
# cubelab's front of the gateway (cubelab.gateway.front) reaches dask-gateway's own HTTP proxy at this URL.
GATEWAY_UPSTREAM_VAR = "CUBELAB_GATEWAY_UPSTREAM"
# The chart's gateway (cubelab.gateway.kubernetes) reads its team table from this variable, as JSON.
GATEWAY_SETTINGS_VAR = "CUBELAB_GATEWAY_SETTINGS_JSON"
# A hub user NAME runs as the account PREFIX+NAME, for their servers and Dask clusters (embedded stack, compose).
USER_PREFIX = "cl-"


def ref(name: str) -> str:
    """A reference to the secret that travels in variable `name`."""
    return f"$({name})"


def resolve(value: Any, lookup: Callable[[str], str]) -> Any:
    """value with every $(NAME) replaced by lookup(NAME), in strings nested in lists and dicts."""
    if isinstance(value, str):
        return REF.sub(lambda m: lookup(m.group(1)), value)
    if isinstance(value, list):
        return [resolve(v, lookup) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, lookup) for k, v in value.items()}
    return value


def references(value: Any) -> list[str]:
    """The secret names value refers to, in order of first use."""
    found: list[str] = []
    resolve(value, lambda name: found.append(name) or "")
    return list(dict.fromkeys(found))


def team_secret_keys(team: Team) -> dict[str, str]:
    """Variable of each of a team's secrets -> its key in the team's Kubernetes Secret."""
    t = TeamSecrets(team.name)
    return {t.db_password: "db-password", t.s3_access_key: "s3-access-key", t.s3_secret_key: "s3-secret-key",
            t.hub_token: "hub-token"}  # fmt: skip


@dataclass(frozen=True)
class Addresses:
    """How one target's services reach each other: the only part of the plan a target decides."""

    public_url: str  # where browsers reach the hub
    hub_api: str  # the hub's REST API, as the tracking servers reach it
    s3: str  # the S3 endpoint of tracking servers and users' kernels
    postgres: tuple[str, int]  # host (or the folder of its unix socket: a path) and port of the Postgres server
    tracking_bind: Mapping[str, tuple[str, int]]  # team -> where its server listens
    tracking: Mapping[str, str]  # team -> its server's base URL, as the hub and users' kernels reach it
    tracking_hosts: Mapping[str, tuple[str, ...]]  # team -> other Host values its server answers to
    gateway_bind: tuple[str, int] = ("", 0)  # where dask-gateway's proxy serves HTTP (API, dashboards)
    gateway: str = ""  # that HTTP address as the hub's proxy reaches it
    gateway_tls: str = ""  # host:port of its TLS proxy (schedulers by SNI), as kernels and workers reach it
    user_proxy: str = ""  # the hub's proxy as users' kernels reach it (the gateway's API); empty: public_url
    gateway_front: bool = False  # cubelab's front serves clusters' dashboards to their owners (hub OAuth login)
    # What clients insist the Postgres server asks them for (libpq's require_auth): the platform's own servers
    # use SCRAM, so a client never sends a password in clear, not even to something that took the server's
    # place. Empty for an operator's external server, whose methods the plan does not know.
    postgres_auth: str = POSTGRES_AUTH


def local_addresses(config: PlatformConfig, tracking_ports: Mapping[str, int], postgres_socket: str) -> Addresses:
    """The embedded stack: every service on loopback, on the config's ports; Postgres on its unix socket only, in
    a folder no other account can write to (so none can put a socket of its own in its place)."""
    loop = "127.0.0.1"
    return Addresses(
        public_url=config.embedded_public_url,
        hub_api=f"http://{loop}:{config.ports.hub_api}/hub/api",
        s3=f"http://{loop}:{config.ports.s3}",
        postgres=(postgres_socket, config.ports.postgres),
        tracking_bind={t.name: (loop, tracking_ports[t.name]) for t in config.teams},
        tracking={t.name: f"http://{loop}:{tracking_ports[t.name]}" for t in config.teams},
        tracking_hosts={t.name: () for t in config.teams},
        gateway_bind=(loop, config.ports.dask_gateway),
        gateway=f"http://{loop}:{config.ports.dask_gateway}",
        gateway_tls=f"{loop}:{config.ports.dask_gateway_tls}",
        gateway_front=True,
    )


def _container_addresses(
    config: PlatformConfig, name: Callable[[str], str], hub: str, hosts: Callable[[str], tuple[str, ...]]
) -> Addresses:
    port = CONTAINER_PORTS
    external_pg, external_s3 = config.containers.postgres, config.containers.s3
    return Addresses(
        public_url=config.containers.public_url.rstrip("/"),
        hub_api=f"http://{hub}:{port['hub_api']}/hub/api",
        s3=external_s3.endpoint if external_s3 else f"http://{name('s3')}:{port['s3']}",
        postgres=(external_pg.host, external_pg.port) if external_pg else (name("postgres"), port["postgres"]),
        postgres_auth="" if external_pg else POSTGRES_AUTH,
        tracking_bind={t.name: ("0.0.0.0", port["tracking"]) for t in config.teams},  # noqa: S104 - in a container
        tracking={t.name: f"http://{name(f'tracking-{t.name}')}:{port['tracking']}" for t in config.teams},
        tracking_hosts={t.name: hosts(t.name) for t in config.teams},
    )


def compose_addresses(config: PlatformConfig) -> Addresses:
    """docker compose: services by their compose names on the project's networks."""
    hub_port, gateway_port = CONTAINER_PORTS["hub"], CONTAINER_PORTS["dask_gateway"]
    addr = _container_addresses(
        config, lambda service: service, "hub",
        # Other containers reach a server by its name, and through the hub's proxy by the hub's.
        lambda team: (f"tracking-{team}:{CONTAINER_PORTS['tracking']}", f"hub:{hub_port}"),
    )  # fmt: skip
    # dask-gateway's proxy serves HTTP and TLS (schedulers, by SNI) on one port of its container; users' kernels
    # reach its API through the hub's proxy by the hub's name (the public URL may be the host's alone).
    return dataclasses.replace(
        addr, gateway_bind=("0.0.0.0", gateway_port), gateway=f"http://dask-gateway:{gateway_port}",  # noqa: S104
        gateway_tls=f"dask-gateway:{gateway_port}", user_proxy=f"http://hub:{hub_port}",
    )  # fmt: skip


def helm_gateway_name(release: str) -> str:
    """The dask-gateway chart's full name in a release (its Services are api-NAME and traefik-NAME)."""
    return f"{release}-dask-gateway"


HELM_GATEWAY_PORT = 80  # the dask-gateway chart's traefik Service: API, dashboards and schedulers (by SNI) alike


def helm_addresses(config: PlatformConfig, release: str) -> Addresses:
    """Helm: services are RELEASE-NAME; the hub's API is zero-to-jupyterhub's `hub` Service, its proxy
    `proxy-public`; dask-gateway's proxy is the dask-gateway chart's traefik Service."""
    port = CONTAINER_PORTS["tracking"]

    def hosts(team: str) -> tuple[str, ...]:
        service = f"{release}-tracking-{team}"
        # The Service's short and qualified names, and z2jh's proxy (requests through the hub keep its Host).
        return (f"{service}:{port}", f"{service}.*:{port}", "proxy-public", "proxy-public.*")

    traefik = f"traefik-{helm_gateway_name(release)}:{HELM_GATEWAY_PORT}"
    addr = _container_addresses(config, lambda service: f"{release}-{service}", "hub", hosts)
    return dataclasses.replace(addr, gateway=f"http://{traefik}", gateway_tls=traefik, user_proxy="http://proxy-public")


def postgres_url(role: str, password: str, database: str, addr: Addresses) -> str:
    """SQLAlchemy's URL of a database (psycopg2 explicitly: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3).
    A host that is a path is the folder of the server's unix socket. Generated passwords are URL-safe
    (cubelab.secrets.new_password, the chart's randAlphaNum); references to them are too."""
    host, port = addr.postgres
    query = {"require_auth": addr.postgres_auth} if addr.postgres_auth else {}
    if host.startswith("/"):
        query = {"host": host, "port": str(port)} | query
        where = ""
    else:
        where = f"{host}:{port}"
    tail = "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items()) if query else ""
    return f"postgresql+psycopg2://{role}:{password}@{where}/{database}{tail}"


def tracking_env(config: PlatformConfig, team: Team, addr: Addresses) -> dict[str, str]:
    """The whole environment of a team's tracking server (cubelab.tracking.serve reads it), in every target."""
    t, prefix = TeamSecrets(team.name), render.service_prefix(team)
    host, port = addr.tracking_bind[team.name]
    return {
        "CUBELAB_HOST": host,
        "CUBELAB_PORT": str(port),
        "CUBELAB_BACKEND_STORE_URI": postgres_url(team.role, ref(t.db_password), team.database, addr),
        "CUBELAB_ARTIFACTS_DESTINATION": artifact_root(config, team),
        "CUBELAB_SERVICE_PREFIX": prefix,
        "CUBELAB_SERVICE_NAME": team.service,
        "CUBELAB_TEAM_NAME": team.name,
        # Team authentication (cubelab.tracking.auth): the hub decides who is a member.
        "CUBELAB_SERVICE_TOKEN": ref(t.hub_token),
        # Metrics (cubelab.tracking.metrics): served at TRACKING_METRICS_PATH to this token only.
        "CUBELAB_METRICS_TOKEN": ref(METRICS_TOKEN),
        "CUBELAB_METRICS_PATH": TRACKING_METRICS_PATH,
        "CUBELAB_SIZES_EVERY_SECONDS": str(config.monitoring.sizes_every_seconds),
        "CUBELAB_HUB_API_URL": addr.hub_api,
        "CUBELAB_HUB_PUBLIC_URL": addr.public_url,
        "CUBELAB_SERVICE_URL": render.service_url(config, team, addr.public_url),
        # mlflow refuses unknown Host headers: the names other containers use (public hosts are added by serve).
        "CUBELAB_ALLOWED_HOSTS": ",".join(addr.tracking_hosts[team.name]),
        # The server writes artefacts with the team's own S3 identity: it can reach no other bucket.
        "AWS_ACCESS_KEY_ID": ref(t.s3_access_key),
        "AWS_SECRET_ACCESS_KEY": ref(t.s3_secret_key),
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_ENDPOINT_URL_S3": addr.s3,
        "MLFLOW_S3_ENDPOINT_URL": addr.s3,
    }


def artifact_root(config: PlatformConfig, team: Team) -> str:
    return f"s3://{config.bucket(team)}/{config.storage.artifact_prefix}"


def storage_env(config: PlatformConfig, team: Team, addr: Addresses) -> dict[str, str]:
    """A team's storage as code reads it: its bucket, its S3 keys under DeepESDL's and AWS's names, its artefact
    root. Users' servers have it (user_env), and so do the team's Dask workers (gateway_settings)."""
    t = TeamSecrets(team.name)
    access_key, secret_key = ref(t.s3_access_key), ref(t.s3_secret_key)
    return {
        "S3_USER_STORAGE_BUCKET": config.bucket(team),
        "S3_USER_STORAGE_KEY": access_key,
        "S3_USER_STORAGE_SECRET": secret_key,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_ENDPOINT_URL": addr.s3,
        "AWS_ENDPOINT_URL_S3": addr.s3,
        "S3_ENDPOINT": addr.s3,
        # Where the tracking server keeps run artefacts: the toolkit writes large ones there itself.
        "CUBELAB_ARTIFACT_ROOT": artifact_root(config, team),
    }


def user_env(config: PlatformConfig, team: Team, addr: Addresses) -> dict[str, str]:
    """What a user's server gets in a session of this team (cubelab.hub.teams.TeamEnvironment), in every target:
    the team's tracking URI and storage, and where its Dask gateway is."""
    env = {"MLFLOW_TRACKING_URI": addr.tracking[team.name] + render.service_prefix(team)}
    env |= storage_env(config, team, addr) | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    if config.dask_gateway.enabled:
        env |= gateway_client_env(team, addr)
    return env


def gateway_client_env(team: Team, addr: Addresses) -> dict[str, str]:
    """dask-gateway's client settings (its dask config as variables): `Gateway()` needs no arguments, and a new
    cluster is for the session's team unless the member picks another of theirs."""
    base = f"{addr.public_url}{render.GATEWAY_PREFIX}"
    api = f"{addr.user_proxy or addr.public_url}{render.GATEWAY_PREFIX}"
    return {
        "DASK_GATEWAY__ADDRESS": api,  # the API, through the hub's proxy
        "DASK_GATEWAY__PUBLIC_ADDRESS": base,  # dashboard links, for browsers
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://{addr.gateway_tls}",  # schedulers, TLS by cluster name
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",  # the server's own hub token (JUPYTERHUB_API_TOKEN)
        "DASK_GATEWAY__CLUSTER__OPTIONS__TEAM": team.name,
    }


def gateway_settings(config: PlatformConfig, addr: Addresses) -> dict[str, Any]:
    """dask-gateway's settings in every target (cubelab.gateway.configure maps them to traits): where it listens,
    how it checks tokens with the hub, and each team's cluster limits and storage environment."""
    host, port = addr.gateway_bind
    tls_port = addr.gateway_tls.rsplit(":", 1)[1]
    return {
        "service_name": render.GATEWAY_SERVICE,
        "prefix": render.GATEWAY_PREFIX,
        "hub_api_url": addr.hub_api,
        "api_token": ref(GATEWAY_TOKEN),
        "db_key": ref(GATEWAY_DB_KEY),
        "http_address": f"{host}:{port}",
        "tls_address": f"{host}:{tls_port}",
        "teams": {
            t.name: {"limits": dataclasses.asdict(t.dask), "environment": storage_env(config, t, addr)}
            for t in config.teams
        },
    }


def gateway_description(config: PlatformConfig, addr: Addresses) -> dict[str, Any]:
    """The gateway part of a deployment description (platform_tests/test_gateway.py): where clients reach it from
    where the tests run, and each team's limits; no secret."""
    return {
        "address": f"{addr.user_proxy or addr.public_url}{render.GATEWAY_PREFIX}",
        "proxy_address": f"gateway://{addr.gateway_tls}",
        "teams": {t.name: dataclasses.asdict(t.dask) for t in config.teams},
    }


@dataclass(frozen=True)
class HubFiles:
    """Where one target's hub finds its files, and its idle culler (None where the target culls by itself)."""

    templates: str
    passwords: str
    client_secret: str
    culler: dict[str, Any] | None = None


def hub_settings(config: PlatformConfig, addr: Addresses, files: HubFiles) -> dict[str, Any]:
    """The hub's settings in every target (cubelab.hub.configure maps them to traits): its services, groups,
    roles, pages, the teams' user environments and the authenticator."""
    tokens = {t.name: ref(TeamSecrets(t.name).hub_token) for t in config.teams}
    services = render.team_services(config, dict(addr.tracking), tokens, addr.public_url)
    services.append({"name": render.ADMIN_SERVICE, "api_token": ref(ADMIN_TOKEN)})
    services.append({"name": render.METRICS_SERVICE, "api_token": ref(METRICS_TOKEN)})
    if config.dask_gateway.enabled:
        services.append(render.gateway_service(addr.gateway, ref(GATEWAY_TOKEN), addr.public_url, addr.gateway_front))
    culler = files.culler is not None and config.hub.cull_idle_seconds > 0
    if culler:
        services.append(files.culler)
    settings: dict[str, Any] = {
        "admin_users": list(config.admins),
        "groups": render.load_groups(config),
        "load_roles": render.roles(config, culler, gateway=config.dask_gateway.enabled),
        "services": services,
        "template_paths": [files.templates],
        "template_vars": render.template_vars(config, addr.public_url),
        "subdomain_host": render.subdomain_host(config, addr.public_url),
        "server_token_scopes": render.SERVER_TOKEN_SCOPES,
        "team_env": {t.name: user_env(config, t, addr) for t in config.teams},
        "gpu_teams": [t.name for t in config.teams if t.gpu],
    }
    return settings | render.auth_settings(
        config, passwords_file=files.passwords, client_secret_file=files.client_secret,
        callback_url=f"{addr.public_url}/hub/oauth_callback",
    )  # fmt: skip


@dataclass(frozen=True)
class ScrapeTarget:
    """One metrics endpoint: Prometheus's job and labels for it, and its URL as the target reaches it."""

    job: str
    url: str
    labels: Mapping[str, str]


def scrape_targets(config: PlatformConfig, addr: Addresses) -> list[ScrapeTarget]:
    """Every metrics endpoint of a deployment, all read with the METRICS_TOKEN: the hub's (straight, not through
    its proxy, so a proxy outage does not hide the hub) and each team's tracking server's."""
    hub = addr.hub_api.removesuffix("/api").removesuffix("/hub")
    out = [ScrapeTarget("hub", f"{hub}{HUB_METRICS_PATH}", {})]
    out += [ScrapeTarget("tracking", f"{addr.tracking[t.name]}{TRACKING_METRICS_PATH}", {"team": t.name})
            for t in config.teams]  # fmt: skip
    return out


def prometheus_config(config: PlatformConfig, addr: Addresses, token_file: str) -> dict[str, Any]:
    """Prometheus's configuration for a deployment's targets: one scrape job per kind of endpoint, each target
    labelled with its team, the bearer token read from token_file."""
    interval = f"{config.monitoring.scrape_interval_seconds}s"
    jobs: dict[str, dict[str, Any]] = {}
    for target in scrape_targets(config, addr):
        parts = urlsplit(target.url)
        job = jobs.setdefault(target.job, {
            "job_name": target.job, "scheme": parts.scheme, "metrics_path": parts.path,
            "scrape_interval": interval, "scrape_timeout": f"{min(10, config.monitoring.scrape_interval_seconds)}s",
            "authorization": {"type": "Bearer", "credentials_file": token_file}, "static_configs": [],
        })  # fmt: skip
        job["static_configs"].append({"targets": [parts.netloc], "labels": dict(target.labels)})
    return {"global": {"scrape_interval": interval}, "scrape_configs": list(jobs.values())}


def metrics_description(config: PlatformConfig, addr: Addresses) -> dict[str, Any]:
    """The metrics part of a deployment description (platform_tests scrape every target); no token."""
    return {"targets": [{"job": t.job, "url": t.url, "labels": dict(t.labels)} for t in scrape_targets(config, addr)]}


def hub_state(addr: Addresses) -> dict[str, str]:
    """The hub's database and session secrets, where the target runs the hub itself (embedded, compose)."""
    return {
        "db_url": postgres_url(HUB_ROLE, ref(HUB_DB_PASSWORD), HUB_DATABASE, addr),
        "cookie_secret": ref(HUB_COOKIE_SECRET),
        "proxy_token": ref(HUB_PROXY_TOKEN),
    }


def s3_identity_env(config: PlatformConfig, addr: Addresses) -> dict[str, str]:
    """The teams' buckets and S3 keys, and the S3 admin's: what writing SeaweedFS's identities and platform_tests'
    storage checks need (no database secrets)."""
    env = {
        "CUBELAB_TEAMS": " ".join(t.name for t in config.teams),
        "CUBELAB_BUCKET_PREFIX": config.storage.bucket_prefix,
        "S3_ENDPOINT": addr.s3,
        "S3_ADMIN_ACCESS_KEY": ref("S3_ADMIN_ACCESS_KEY"),
        "S3_ADMIN_SECRET_KEY": ref("S3_ADMIN_SECRET_KEY"),
    }
    for team in config.teams:
        t = TeamSecrets(team.name)
        env |= {name: ref(name) for name in (t.s3_access_key, t.s3_secret_key)}
    return env


def postgres_superuser(config: PlatformConfig) -> str:
    """The role the provisioning job creates databases and roles with: the external server's, or the bundled
    image's own superuser."""
    return config.containers.postgres.user if config.containers.postgres else "postgres"


def database_env(config: PlatformConfig, addr: Addresses, *, hub: bool) -> dict[str, str]:
    """Postgres as its superuser, each team's database password, buckets and S3 keys, and the hub's database
    password where the target keeps the hub's database in this Postgres."""
    host, port = addr.postgres
    env = s3_identity_env(config, addr) | {
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(port),
        "POSTGRES_REQUIRE_AUTH": addr.postgres_auth,
        "POSTGRES_USER": postgres_superuser(config),
        "POSTGRES_PASSWORD": ref("POSTGRES_PASSWORD"),
    }
    env |= {TeamSecrets(t.name).db_password: ref(TeamSecrets(t.name).db_password) for t in config.teams}
    if hub:
        env[HUB_DB_PASSWORD] = ref(HUB_DB_PASSWORD)
    return env


def provision_env(config: PlatformConfig, addr: Addresses, *, passwords_file: str | None) -> dict[str, str]:
    """What `python -m cubelab.provision all` needs: the teams' databases and buckets, the hub's database where
    the target runs the hub itself, and, given a passwords file, the local users' first passwords."""
    env = database_env(config, addr, hub=passwords_file is not None)
    if passwords_file is not None:
        if config.hub.auth.type == "local":
            env["CUBELAB_USERS"] = " ".join(u.name for u in config.users)
            env["CUBELAB_PASSWORDS_FILE"] = passwords_file
            env |= {user_password_var(u.name): ref(user_password_var(u.name)) for u in config.users}
    return env


def describe_env(config: PlatformConfig, addr: Addresses, *, backend: str, hub_url: str) -> dict[str, str]:
    """What `python -m cubelab.provision describe` needs to write the deployment description platform_tests
    read inside a container deployment (the embedded stack writes it directly: cubelab.backends.local.stack)."""
    env = {
        "CUBELAB_BACKEND": backend,
        "S3_ENDPOINT": addr.s3,
        "CUBELAB_HUB_URL": hub_url,
        "CUBELAB_HUB_API_URL": addr.hub_api,
        "CUBELAB_ADMIN_TOKEN": ref(ADMIN_TOKEN),
        "CUBELAB_ADMINS": " ".join(config.admins),
        "CUBELAB_ARTIFACT_PREFIX": config.storage.artifact_prefix,
        "CUBELAB_USERS": " ".join(u.name for u in config.users),
        "CUBELAB_METRICS_TOKEN": ref(METRICS_TOKEN),
        "CUBELAB_METRICS_TARGETS": json.dumps(metrics_description(config, addr)["targets"]),
    }
    if config.dask_gateway.enabled:
        env["CUBELAB_GATEWAY"] = json.dumps(gateway_description(config, addr))
    for team in config.teams:
        t = TeamSecrets(team.name)
        env[t.members] = " ".join(team.members)
        env[t.tracking_uri] = addr.tracking[team.name] + render.service_prefix(team)
    if config.hub.auth.type == "local":
        env |= {user_password_var(u.name): ref(user_password_var(u.name)) for u in config.users}
    return env


# --- cubelab's own services and jobs, as every target runs them -----------------------------------------------
# Postgres and SeaweedFS are third-party servers each target runs its own native way (Debian's binaries, the
# official images, StatefulSets); the hub runs JupyterHub with `hub_settings`. Everything else is one of these.

# Each team's clean-up of what its members deleted (cubelab gc; the chart's CronJob), in its tracking environment.
GC_COMMAND = ("python3", "-m", "cubelab.tracking.gc")
IDENTITIES_FILE = "/etc/seaweedfs/identities.json"  # where the containers' SeaweedFS reads its identities
PROVISION_TIMEOUT = 300  # seconds the provisioning job waits for Postgres and S3 to answer


@dataclass(frozen=True)
class Service:
    """One of cubelab's services or one-shot jobs: what it runs, with what environment, where it answers."""

    name: str  # its name in every target: compose service, Kubernetes component
    image: str  # the cubelab image that runs it (images/NAME)
    command: tuple[str, ...]  # the program and its arguments; `python3` is the image's (or the venv's) Python
    env: dict[str, str]  # secrets as $(NAME)
    port: int | None = None  # where it listens
    health: str | None = None  # an HTTP path that answers 200 once it serves
    after: tuple[str, ...] = ()  # what must be done (jobs) or healthy (servers) before it starts
    job: bool = False  # runs to completion (provisioning) rather than serving


def tracking_service(config: PlatformConfig, team: Team, addr: Addresses) -> Service:
    """A team's tracking server."""
    return Service(
        name=f"tracking-{team.name}",
        image="tracking",
        command=("python3", "-m", "cubelab.tracking.serve"),
        env=tracking_env(config, team, addr),
        port=addr.tracking_bind[team.name][1],
        health=f"{render.service_prefix(team)}/health",
        after=("provision",),
    )


def provision_service(config: PlatformConfig, addr: Addresses, *, passwords_file: str | None) -> Service:
    """Databases and roles (the teams', and the hub's where the target runs the hub), buckets, first passwords."""
    command = ("python3", "-m", "cubelab.provision", "all", "--timeout", str(PROVISION_TIMEOUT))
    env = provision_env(config, addr, passwords_file=passwords_file)
    return Service("provision", "tracking", command, env, after=("postgres", "s3"), job=True)


BACKUP_COMMAND = ("python3", "-m", "cubelab.backup.job")
MIGRATE_COMMAND = ("python3", "-m", "cubelab.tracking.migrate")


def migrate_service(config: PlatformConfig, addr: Addresses) -> Service:
    """Each team's mlflow database migrated to the installed mlflow's schema before new servers start
    (cubelab.tracking.migrate): Postgres's superuser, which acts as each team's role; nothing else."""
    env = {k: v for k, v in database_env(config, addr, hub=False).items() if k.startswith("POSTGRES_")}
    env["CUBELAB_TEAMS"] = " ".join(t.name for t in config.teams)
    return Service("migrate", "tracking", MIGRATE_COMMAND, env, after=("postgres",), job=True)


def backup_service(config: PlatformConfig, addr: Addresses, *, to: str, passwords_file: str | None) -> Service:
    """The container targets' backup job (cubelab.backup.job): every team's database and bucket, and the hub's
    database and password hashes where the target keeps them. Its arguments pick backup or restore."""
    env = database_env(config, addr, hub=passwords_file is not None)
    env = {k: v for k, v in env.items() if not k.startswith("S3_ADMIN_")}  # the teams' own keys are enough
    if passwords_file is not None:
        env["CUBELAB_PASSWORDS_FILE"] = passwords_file
    return Service("backup", "tracking", (*BACKUP_COMMAND, "backup", "--to", to), env, after=("postgres", "s3"),
                   job=True)  # fmt: skip


def s3_identities_service(config: PlatformConfig, addr: Addresses) -> Service:
    """SeaweedFS reads its S3 identities (one per team, limited to its bucket) from a file at start."""
    command = ("python3", "-m", "cubelab.provision", "s3-identities", IDENTITIES_FILE)
    return Service("s3-identities", "tracking", command, s3_identity_env(config, addr), job=True)


def gateway_front_env(service_url: str, prefix: str, hub_api_url: str, hub_public_url: str, token: str,
                      upstream: str) -> dict[str, str]:  # fmt: skip
    """The environment of cubelab's front of the gateway: what cubelab.gateway.front.create_app reads."""
    return {
        "CUBELAB_SERVICE_NAME": render.GATEWAY_SERVICE,
        "CUBELAB_TEAM_NAME": "",
        "CUBELAB_SERVICE_PREFIX": prefix,
        "CUBELAB_HUB_API_URL": hub_api_url,
        "CUBELAB_HUB_PUBLIC_URL": hub_public_url,
        "CUBELAB_SERVICE_TOKEN": token,
        "CUBELAB_SERVICE_URL": service_url,
        GATEWAY_UPSTREAM_VAR: upstream,
    }
