"""Platform config -> Helm values for helm/cubelab, written by `cubelab render helm`.

Two parts: `teams` etc. for the templates cubelab owns (a tracking Deployment, Service, Secret and NetworkPolicy
per team), and `jupyterhub`, passed to the zero-to-jupyterhub chart: roles, the hub image with cubelab's code,
the extraConfig hook that registers the teams' services, profiles per team (GPU ones only for teams allowed),
and the users' network policy. With dask_gateway.enabled, `daskGateway` too: values of dask-gateway's own chart,
whose gateway runs cubelab's team options (cubelab.gateway.kubernetes) from the hub image. No secret is rendered:
the chart generates them into Secrets at install time.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from cubelab import plan
from cubelab.config import PlatformConfig, Profile, Team
from cubelab.hub import render
from cubelab.provision import user_password_var

OIDC_MOUNT = "/srv/cubelab/oidc"  # where the hub pod finds the OIDC client secret
GATEWAY_PROXY_POD_PORT = 8000  # the dask-gateway chart's traefik container port (its Service's 80)
HEADER = """\
# Helm values rendered by `cubelab render helm` from {config}: the teams and what the hub needs to know of
# them. Install with: helm install cubelab helm/cubelab -f {name} [-f your-site-values.yaml]
# Do not edit: change the platform config and render again. No secrets here; the chart generates them.
"""


def secret_sources(config: PlatformConfig, release: str) -> dict[str, tuple[str, str]]:
    """Each secret variable of the plan -> (Kubernetes Secret, key) it comes from. The chart generates these
    Secrets, except RELEASE-postgres and RELEASE-s3-admin for an external Postgres or S3 (you create them)."""
    sources = {plan.ADMIN_TOKEN: (f"{release}-hub", "admin-token"),
               plan.METRICS_TOKEN: (f"{release}-hub", "metrics-token"),
               plan.GATEWAY_TOKEN: (f"{release}-hub", "gateway-token"),
               "POSTGRES_PASSWORD": (f"{release}-postgres", "password"),
               "S3_ADMIN_ACCESS_KEY": (f"{release}-s3-admin", "access-key"),
               "S3_ADMIN_SECRET_KEY": (f"{release}-s3-admin", "secret-key")}  # fmt: skip
    for team in config.teams:
        sources |= {var: (f"{release}-team-{team.name}", key) for var, key in plan.team_secret_keys(team).items()}
    for user in config.users:
        sources[user_password_var(user.name)] = (f"{release}-users", user.name)
    return sources


def env_list(env: dict[str, str], sources: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """A container's env: first each secret the values refer to, from its Secret, then the values, whose $(NAME)
    kubelet expands (it does so only for variables defined earlier in the list). A variable that is the secret
    itself (NAME: $(NAME)) is just the Secret's entry."""
    out: list[dict[str, Any]] = []
    for name in plan.references(env):
        if env.get(name, plan.ref(name)) != plan.ref(name):
            raise ValueError(f"{name} is both a secret and a plain variable")
        secret, key = sources[name]
        out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return out + [{"name": name, "value": value} for name, value in env.items() if value != plan.ref(name)]


def hub_settings(config: PlatformConfig, release: str) -> dict[str, Any]:
    """The plan's hub settings as zero-to-jupyterhub's hub gets them (secrets stay $(NAME): cubelab's hook
    expands them from the hub's environment); roles go to z2jh's loadRoles, culling to its cull settings."""
    files = plan.HubFiles(
        templates="/opt/cubelab/templates",
        passwords="/srv/jupyterhub/cubelab-passwords.json",
        client_secret=f"{OIDC_MOUNT}/client-secret",
    )
    return plan.hub_settings(config, plan.helm_addresses(config, release), files)


def _limits(profile: Profile) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu_limit": profile.cpu_limit, "mem_limit": profile.mem_limit}
    if profile.gpus:
        limits["extra_resource_limits"] = {"nvidia.com/gpu": str(profile.gpus)}
    return limits


def _sizes(profile: Profile) -> str:
    gpus = f", {profile.gpus} NVIDIA GPU{'s' if profile.gpus > 1 else ''}" if profile.gpus else ""
    return f"{profile.cpu_limit:g} CPUs, {profile.mem_limit}B memory{gpus}"


def profiles(config: PlatformConfig, gpu_image: str) -> list[dict[str, Any]]:
    """One CPU profile per team, and a GPU one for teams allowed GPUs; the hub shows users their teams' only.
    Sizes from the config (containers.profiles)."""
    cpu, gpu = config.containers.cpu_profile, config.containers.gpu_profile
    out: list[dict[str, Any]] = []
    for team in config.teams:
        out.append({"display_name": f"{team.name}: CPU", "slug": f"{team.name}-cpu",
                    "description": f"Runs, models and data go to team {team.name}. {_sizes(cpu)}.",
                    "kubespawner_override": _limits(cpu)})  # fmt: skip
        if team.gpu:
            out.append({"display_name": f"{team.name}: GPU", "slug": f"{team.name}-gpu",
                        "description": f"Team {team.name}, CUDA builds of PyTorch and TensorFlow. {_sizes(gpu)}.",
                        "kubespawner_override": {**_limits(gpu), "image": gpu_image}})  # fmt: skip
    if out:
        out[0]["default"] = True
    return out


def _hub_env(settings: dict[str, Any], sources: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """z2jh's hub.extraEnv: the secrets the settings refer to, from their Secrets."""
    return {name: {"valueFrom": {"secretKeyRef": {"name": sources[name][0], "key": sources[name][1]}}}
            for name in plan.references(settings)}  # fmt: skip


def render_values(config: PlatformConfig, release: str = "cubelab") -> dict[str, Any]:
    images = config.containers
    addr = plan.helm_addresses(config, release)
    sources = secret_sources(config, release)
    settings = hub_settings(config, release)
    roles = settings.pop("load_roles")
    profile_list = profiles(config, gpu_image=f"{images.registry}/notebook:{images.tag}-cuda")
    hub_env = _hub_env(settings, sources)
    if config.hub.auth.type == "local":
        # First passwords, which the hub hashes into its password file (cubelab.hub.kubernetes).
        hub_env |= _hub_env({u.name: plan.ref(user_password_var(u.name)) for u in config.users}, sources)
    hub: dict[str, Any] = {
        "image": {"name": f"{images.registry}/hub", "tag": images.tag},
        # z2jh's own config applies this before cubelab's hook does: its default, `dummy`, never runs.
        "config": {"JupyterHub": {"authenticator_class": settings["authenticator_class"]}},
        "loadRoles": {role.pop("name"): role for role in roles},
        "extraEnv": hub_env | {"CUBELAB_HUB_SETTINGS_JSON": json.dumps(settings)},
        "extraConfig": {"cubelab": "from cubelab.hub.kubernetes import configure\nconfigure(c)\n"},
        "networkPolicy": {"enabled": True},
    }
    if config.hub.auth.type == "oidc":
        # The provider's client secret, from a Secret the operator creates (see the chart's NOTES).
        hub["extraVolumes"] = [{"name": "oidc", "secret": {"secretName": f"{release}-oidc"}}]
        hub["extraVolumeMounts"] = [{"name": "oidc", "mountPath": OIDC_MOUNT, "readOnly": True}]
    tracking_port, s3_port = plan.CONTAINER_PORTS["tracking"], plan.CONTAINER_PORTS["s3"]
    singleuser: dict[str, Any] = {
        "image": {"name": f"{images.registry}/notebook", "tag": images.tag},
        "profileList": profile_list,
        "networkPolicy": {
            "enabled": True,
            # Nothing internal but the tracking servers and S3 (and the hub, DNS: z2jh's own rules); the
            # tracking servers' own policies then admit only pods of their team.
            "egressAllowRules": {"privateIPs": False, "nonPrivateIPs": True, "cloudMetadataServer": False},
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": release,
                                                                "app.kubernetes.io/component": component}}}],
                        "ports": [{"port": port, "protocol": "TCP"}]}
                       for component, port in (("tracking", tracking_port), ("s3", s3_port))],
        },
        "extraLabels": {"cubelab.io/user-server": "true"},
    }  # fmt: skip
    if config.dask_gateway.enabled:
        # Kernels reach the gateway's API through the hub's proxy (z2jh admits that) and schedulers through its
        # traefik proxy, by TLS with each cluster's own certificate.
        singleuser["networkPolicy"]["egress"].append({"to": [{"podSelector": {"matchLabels": gateway_proxy_labels(
            release)}}], "ports": [{"port": GATEWAY_PROXY_POD_PORT, "protocol": "TCP"}]})  # fmt: skip
    pg_host, pg_port = addr.postgres
    provision = plan.provision_service(config, addr, passwords_file=None)
    identities = plan.s3_identities_service(config, addr)
    backup = plan.backup_service(config, addr, to="/backups", passwords_file=None)  # the chart adds its own --to
    migrate = plan.migrate_service(config, addr)
    describe = plan.describe_env(config, addr, backend="helm", hub_url="http://proxy-public")
    return {
        # The chart refuses to install under another release name: the names above depend on it.
        "renderedForRelease": release,
        "teams": [_team(config, t, addr, sources) for t in config.teams],
        "users": [u.name for u in config.users] if config.hub.auth.type == "local" else [],
        "images": {
            "tracking": {"repository": f"{images.registry}/tracking", "tag": images.tag},
            "platformTests": {"repository": f"{images.registry}/platform-tests", "tag": images.tag},
        },
        "hubPublicUrl": images.public_url,
        "postgres": {"bundled": config.containers.postgres is None, "host": pg_host, "port": pg_port,
                     "user": plan.postgres_superuser(config)},
        "s3": {"bundled": config.containers.s3 is None, "endpoint": addr.s3},
        "trackingPort": plan.CONTAINER_PORTS["tracking"],
        "monitoring": {"trackingPath": plan.TRACKING_METRICS_PATH, "hubPath": plan.HUB_METRICS_PATH,
                       "serviceMonitor": {"enabled": config.monitoring.service_monitor,
                                          "interval": f"{config.monitoring.scrape_interval_seconds}s"}},
        # The chart's one-shot containers, rendered from the plan like the tracking servers.
        "commands": {"provision": list(provision.command), "s3Identities": list(identities.command),
                     "gc": list(plan.GC_COMMAND), "backup": list(plan.BACKUP_COMMAND),
                     "migrate": list(migrate.command)},
        "env": {
            "provision": env_list(provision.env, sources),
            "s3Identities": env_list(identities.env, sources),
            "backup": env_list(backup.env, sources),
            "migrate": env_list(migrate.env, sources),
            "platformTests": env_list(plan.s3_identity_env(config, addr) | describe, sources),
        },
        "jupyterhub": {"hub": hub, "singleuser": singleuser, "cull": {"enabled": config.hub.cull_idle_seconds > 0,
                                                                       "timeout": config.hub.cull_idle_seconds}},
        "daskGateway": gateway_values(config, release, addr, sources) if config.dask_gateway.enabled
        else {"enabled": False},
    }  # fmt: skip


def gateway_proxy_labels(release: str) -> dict[str, str]:
    """The labels of the dask-gateway chart's traefik pods in this release."""
    return {"app.kubernetes.io/instance": release, "app.kubernetes.io/name": "dask-gateway",
            "app.kubernetes.io/component": "traefik"}  # fmt: skip


def gateway_settings(config: PlatformConfig, addr: plan.Addresses, sources: dict[str, tuple[str, str]]) -> dict:
    """What the gateway's extraConfig reads (cubelab.gateway.kubernetes): each team's limits, its clusters' image,
    and its storage variables as container env, the secrets from the team's own Secret."""
    images = config.containers
    dask = plan.IMAGE_GATEWAY_DASK
    teams = {t.name: {"limits": dataclasses.asdict(t.dask), "image": f"{images.registry}/notebook:{images.tag}",
                      "env": env_list(plan.storage_env(config, t, addr), sources)}
             for t in config.teams}  # fmt: skip
    return {"teams": teams, "scheduler_cmd": [dask, "scheduler"], "worker_cmd": [dask, "worker"]}


def gateway_values(
    config: PlatformConfig, release: str, addr: plan.Addresses, sources: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    """Values of the dask-gateway chart (Chart.yaml's alias daskGateway): hub authentication with the token in
    the hub's generated Secret, admitting only tokens allowed to access its hub service; the hub image, which
    has cubelab and dask-gateway-server; the team table in plan.GATEWAY_SETTINGS_VAR."""
    images = config.containers
    secret, key = sources[plan.GATEWAY_TOKEN]
    return {
        "enabled": True,
        # Its Services are then api-NAME and traefik-NAME with the plan's NAME (an alias would put "daskGateway",
        # not a valid DNS name, in them).
        "nameOverride": "dask-gateway",
        "fullnameOverride": plan.helm_gateway_name(release),
        "gateway": {
            # The hub's proxy forwards /services/dask-gateway/... with its path; traefik strips the prefix.
            "prefix": render.GATEWAY_PREFIX,
            "image": {"name": f"{images.registry}/hub", "tag": images.tag},
            "auth": {"type": "jupyterhub", "jupyterhub": {
                "apiUrl": addr.hub_api, "apiTokenFromSecretName": secret, "apiTokenFromSecretKey": key,
                "jupyterhubServiceName": render.GATEWAY_SERVICE}},
            "env": [{"name": plan.GATEWAY_SETTINGS_VAR, "value": json.dumps(gateway_settings(config, addr, sources))}],
            "extraConfig": {"cubelab": "from cubelab.gateway.kubernetes import configure\nconfigure(c)\n"},
            "backend": {"image": {"name": f"{images.registry}/notebook", "tag": images.tag}},
        },
        # Reached inside the cluster only: through the hub's proxy (API, dashboards) and by kernels (schedulers).
        "traefik": {"service": {"type": "ClusterIP", "ports": {"web": {"port": plan.HELM_GATEWAY_PORT}}}},
    }  # fmt: skip


def _team(config: PlatformConfig, team: Team, addr: plan.Addresses, sources: dict[str, tuple[str, str]]) -> dict:
    """A team's values: its tracking server as the plan has it (HOME: the image's user has no writable one)."""
    server = plan.tracking_service(config, team, addr)
    return {"name": team.name, "members": list(team.members), "gpu": team.gpu,
            "serviceUrl": render.service_url(config, team, config.containers.public_url),
            "healthPath": server.health, "command": list(server.command),
            "trackingEnv": env_list(server.env | {"HOME": "/tmp"}, sources)}  # fmt: skip


def write(config: PlatformConfig, path: Path, release: str = "cubelab") -> Path:
    text = HEADER.format(config=config.path.name, name=path.name)
    path.write_text(text + yaml.safe_dump(render_values(config, release), sort_keys=False, width=120))
    return path
