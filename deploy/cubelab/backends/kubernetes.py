"""Platform config -> Helm values for helm/cubelab, written by `cubelab render helm`.

Two parts: `teams` etc. for the templates cubelab owns (a tracking Deployment, Service, Secret and NetworkPolicy
per team), and `jupyterhub`, passed to the zero-to-jupyterhub chart: roles, the hub image with cubelab's code,
the extraConfig hook that registers the teams' services, profiles per team (GPU ones only for teams allowed),
and the users' network policy. No secret is rendered: the chart generates them into Secrets at install time.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from cubelab.config import PlatformConfig, Team
from cubelab.hub import render
from cubelab.provision import TeamSecrets, user_password_var

TRACKING_PORT = 5000
OIDC_MOUNT = "/srv/cubelab/oidc"  # where the hub pod finds the OIDC client secret
HEADER = """\
# Helm values rendered by `cubelab render helm` from {config}: the teams and what the hub needs to know of
# them. Install with: helm install cubelab helm/cubelab -f {name} [-f your-site-values.yaml]
# Do not edit: change the platform config and render again. No secrets here; the chart generates them.
"""
CPU_PROFILE = {"cpu_limit": 4, "mem_limit": "16G"}
GPU_PROFILE = {"cpu_limit": 8, "mem_limit": "64G", "extra_resource_limits": {"nvidia.com/gpu": "1"}}


def _tracking_url(release_prefix: str, team: Team) -> str:
    return f"http://{release_prefix}-tracking-{team.name}:{TRACKING_PORT}"


def team_env(config: PlatformConfig, team: Team, prefix: str, s3_endpoint: str) -> dict[str, str]:
    """What a user's pod of this team gets; $(NAME) are hub environment variables from the team's Secret."""
    t = TeamSecrets(team.name)
    return render.team_environment(
        config, team, tracking_uri=f"{_tracking_url(prefix, team)}{render.service_prefix(team)}",
        s3_endpoint=s3_endpoint, access_key=f"$({t.s3_access_key})", secret_key=f"$({t.s3_secret_key})",
    )  # fmt: skip


def hub_settings(config: PlatformConfig, prefix: str, s3_endpoint: str) -> dict[str, Any]:
    urls = {t.name: _tracking_url(prefix, t) for t in config.teams}
    tokens = {t.name: f"$({TeamSecrets(t.name).hub_token})" for t in config.teams}
    settings: dict[str, Any] = {
        "services": [*render.team_services(config, urls, tokens, config.containers.public_url),
                     {"name": render.ADMIN_SERVICE, "api_token": "$(CUBELAB_ADMIN_TOKEN)"}],
        "groups": render.load_groups(config),
        "template_paths": ["/opt/cubelab/templates"],
        "template_vars": render.template_vars(config, config.containers.public_url),
        "subdomain_host": render.subdomain_host(config, config.containers.public_url),
        "team_env": {t.name: team_env(config, t, prefix, s3_endpoint) for t in config.teams},
        "server_token_scopes": render.SERVER_TOKEN_SCOPES,
        "admin_users": list(config.admins),
    }  # fmt: skip
    settings |= render.auth_settings(
        config,
        passwords_file="/srv/jupyterhub/cubelab-passwords.json",
        client_secret_file=f"{OIDC_MOUNT}/client-secret",
        callback_url=f"{config.containers.public_url}/hub/oauth_callback",
    )
    return settings


def profiles(config: PlatformConfig, gpu_image: str) -> list[dict[str, Any]]:
    """One CPU profile per team, and a GPU one for teams allowed GPUs; the hub shows users their teams' only."""
    out: list[dict[str, Any]] = []
    for team in config.teams:
        out.append({"display_name": f"{team.name}: CPU", "slug": f"{team.name}-cpu",
                    "description": f"Runs, models and data go to team {team.name}. 4 CPUs, 16 GB.",
                    "kubespawner_override": dict(CPU_PROFILE)})  # fmt: skip
        if team.gpu:
            out.append({"display_name": f"{team.name}: GPU", "slug": f"{team.name}-gpu",
                        "description": f"Team {team.name} with one NVIDIA GPU (CUDA builds of PyTorch and TensorFlow).",
                        "kubespawner_override": {**copy.deepcopy(GPU_PROFILE), "image": gpu_image}})  # fmt: skip
    if out:
        out[0]["default"] = True
    return out


def _hub_env(config: PlatformConfig, prefix: str) -> dict[str, Any]:
    def ref(secret: str, key: str) -> dict[str, Any]:
        return {"valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}

    env: dict[str, Any] = {"CUBELAB_ADMIN_TOKEN": ref(f"{prefix}-hub", "admin-token")}
    for team in config.teams:
        t, secret = TeamSecrets(team.name), f"{prefix}-team-{team.name}"
        env |= {t.hub_token: ref(secret, "hub-token"), t.s3_access_key: ref(secret, "s3-access-key"),
                t.s3_secret_key: ref(secret, "s3-secret-key")}  # fmt: skip
    if config.hub.auth.type == "local":
        for user in config.users:
            env[user_password_var(user.name)] = ref(f"{prefix}-users", user.name)
    return env


def render_values(config: PlatformConfig, release: str = "cubelab") -> dict[str, Any]:
    prefix = release
    s3_endpoint = f"http://{prefix}-s3:8333"
    images = config.containers
    settings = hub_settings(config, prefix, s3_endpoint)
    profile_list = profiles(config, gpu_image=f"{images.registry}/notebook:{images.tag}-cuda")
    hub: dict[str, Any] = {
        "image": {"name": f"{images.registry}/hub", "tag": images.tag},
        # z2jh's own config applies this before cubelab's hook does: its default, `dummy`, never runs.
        "config": {"JupyterHub": {"authenticator_class": settings["authenticator_class"]}},
        "loadRoles": {role.pop("name"): role for role in render.roles(config, culler=False)},
        "extraEnv": _hub_env(config, prefix) | {"CUBELAB_HUB_SETTINGS_JSON": json.dumps(settings)},
        "extraConfig": {"cubelab": "from cubelab.hub.kubernetes import configure\nconfigure(c)\n"},
        "networkPolicy": {"enabled": True},
    }
    if config.hub.auth.type == "oidc":
        # The provider's client secret, from a Secret the operator creates (see the chart's NOTES).
        hub["extraVolumes"] = [{"name": "oidc", "secret": {"secretName": f"{prefix}-oidc"}}]
        hub["extraVolumeMounts"] = [{"name": "oidc", "mountPath": OIDC_MOUNT, "readOnly": True}]
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
                       for component, port in (("tracking", TRACKING_PORT), ("s3", 8333))],
        },
        "extraLabels": {"cubelab.io/user-server": "true"},
    }  # fmt: skip
    return {
        # The chart refuses to install under another release name: the names above depend on it.
        "renderedForRelease": release,
        "teams": [{"name": t.name, "members": list(t.members), "gpu": t.gpu,
                   "serviceUrl": render.service_url(config, t, images.public_url)} for t in config.teams],
        "users": [u.name for u in config.users] if config.hub.auth.type == "local" else [],
        "storage": {"bucketPrefix": config.storage.bucket_prefix, "artifactPrefix": config.storage.artifact_prefix},
        "images": {
            "tracking": {"repository": f"{images.registry}/tracking", "tag": images.tag},
            "platformTests": {"repository": f"{images.registry}/platform-tests", "tag": images.tag},
        },
        "hubPublicUrl": images.public_url,
        "jupyterhub": {"hub": hub, "singleuser": singleuser, "cull": {"enabled": config.hub.cull_idle_seconds > 0,
                                                                       "timeout": config.hub.cull_idle_seconds}},
    }  # fmt: skip


def write(config: PlatformConfig, path: Path, release: str = "cubelab") -> Path:
    text = HEADER.format(config=config.path.name, name=path.name)
    path.write_text(text + yaml.safe_dump(render_values(config, release), sort_keys=False, width=120))
    return path
