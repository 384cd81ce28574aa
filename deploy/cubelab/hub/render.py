"""Platform config -> the hub's groups, roles and services. Pure functions, shared by every deployment target."""

from __future__ import annotations

from typing import Any

from cubelab import urls
from cubelab.config import PlatformConfig, Team

ADMIN_SERVICE = "cubelab"
# The scraper's identity: a hub service whose only scope is read:metrics. Its token opens /hub/metrics and every
# tracking server's /metrics, and nothing else.
METRICS_SERVICE = "cubelab-metrics"
# What an operator may do: JupyterHub's admin page, reading users, servers and groups, stopping servers. Not
# `tokens` (a token of a member opens the team's data), not `admin:users` or `groups` (membership is access).
# dask-gateway, a hub service (cubelab.gateway): it admits only tokens that may access it, which every team
# member's session token may.
GATEWAY_SERVICE = "dask-gateway"
GATEWAY_PREFIX = f"/services/{GATEWAY_SERVICE}"
OPERATOR_SCOPES = ["admin-ui", "list:users", "read:users", "read:servers", "delete:servers", "list:groups",
                   "read:groups", "read:roles"]  # fmt: skip


def service_prefix(team: Team) -> str:
    """The path a team's tracking server is served under, through the hub and on its own port alike."""
    return f"/services/{team.service}"


def groups(config: PlatformConfig) -> dict[str, list[str]]:
    """Teams are hub groups: team name -> member names."""
    return {team.name: sorted(team.members) for team in config.teams}


def load_groups(config: PlatformConfig) -> dict[str, list[str]]:
    """The hub's load_groups. None with OIDC: the authenticator manages groups from the provider's claim
    (JupyterHub refuses to start with both), and each team's group is made from its role."""
    return {} if config.hub.auth.type == "oidc" else groups(config)


def roles(config: PlatformConfig, culler: bool, gateway: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "name": f"team-{team.name}",
            "description": f"members of team {team.name}: use its tracking server",
            "scopes": [f"access:services!service={team.service}"],
            "groups": [team.name],
        }
        for team in config.teams
    ]
    # Each tracking server asks the hub which groups a token's owner is in.
    out += [
        {
            "name": f"service-{team.service}",
            "description": f"tracking server of team {team.name}: look up users' groups",
            "scopes": ["read:users:groups", "read:users:name"],
            "services": [team.service],
        }
        for team in config.teams
    ]
    out.append({
        "name": "cubelab-control-plane",
        "description": "cubelab itself: syncs users and groups, issues tokens for tests",
        "scopes": ["admin:users", "admin:groups", "admin:servers", "tokens", "list:users", "read:users"],
        "services": [ADMIN_SERVICE],
    })  # fmt: skip
    out.append({
        "name": METRICS_SERVICE,
        "description": "Prometheus: read the hub's metrics (the tracking servers accept the same token)",
        "scopes": ["read:metrics"],
        "services": [METRICS_SERVICE],
    })  # fmt: skip
    if gateway and config.teams:
        out.append({
            "name": "dask-gateway-users",
            "description": "members of any team: start Dask clusters for their teams",
            "scopes": [f"access:services!service={GATEWAY_SERVICE}"],
            "groups": [team.name for team in config.teams],
        })  # fmt: skip
    if config.operators:
        out.append({
            "name": "cubelab-operator",
            "description": "run the platform without reaching team data: see users, servers and groups, stop servers",
            "scopes": OPERATOR_SCOPES,
            "users": list(config.operators),
        })  # fmt: skip
    if culler:
        out.append({
            "name": "idle-culler",
            "description": "stop idle user servers",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        })  # fmt: skip
    return out


def service_url(config: PlatformConfig, team: Team, public_url: str) -> str:
    """Where browsers reach the team's tracking UI (its own host in subdomain mode)."""
    return urls.service_url(public_url, team.service, service_prefix(team), config.hub.subdomains)


def subdomain_host(config: PlatformConfig, public_url: str) -> str:
    """JupyterHub.subdomain_host: the hub's public URL in subdomain mode, else empty (off)."""
    return public_url.rstrip("/") if config.hub.subdomains else ""


def team_services(
    config: PlatformConfig, server_urls: dict[str, str], tokens: dict[str, str], public_url: str
) -> list[dict[str, Any]]:
    """One hub service per team, proxied at /services/mlflow-TEAM/ with the hub's OAuth for browsers."""
    return [
        {
            "name": team.service,
            # Listed on cubelab's home page for members only, not in every admin's service menu.
            "display": False,
            "url": server_urls[team.name],
            "api_token": tokens[team.name],
            "oauth_client_id": f"service-{team.service}",
            "oauth_redirect_uri": urls.oauth_redirect_uri(service_url(config, team, public_url), public_url),
            "oauth_no_confirm": True,
            "info": {"team": team.name, "kind": "mlflow"},
        }
        for team in config.teams
    ]


def gateway_service(url: str, token: str, public_url: str, login: bool) -> dict[str, Any]:
    """dask-gateway as a hub service: the hub's proxy routes GATEWAY_PREFIX to it. With `login` (where cubelab's
    front serves clusters' dashboards) browsers log in to it with the hub's OAuth (the token is the secret)."""
    service = {"name": GATEWAY_SERVICE, "display": False, "url": url, "api_token": token}
    if login:
        service |= {"oauth_client_id": f"service-{GATEWAY_SERVICE}",
                    "oauth_redirect_uri": urls.oauth_redirect_uri(f"{public_url}{GATEWAY_PREFIX}", public_url),
                    "oauth_no_confirm": True}  # fmt: skip
    return service


# A user server's token also opens the user's teams' tracking servers (access:services is narrowed by the hub
# to the services the user's roles allow).
SERVER_TOKEN_SCOPES = ["users:activity!user", "access:servers!server", "access:services",
                       "read:users:name!user", "read:users:groups!user"]  # fmt: skip


def template_vars(config: PlatformConfig, public_url: str) -> dict[str, Any]:
    return {
        "cubelab_teams": [t.name for t in config.teams],
        "cubelab_team_urls": {
            t.name: urls.link(service_url(config, t, public_url) + "/", public_url) for t in config.teams
        },
    }


def culler_service(python: str, seconds: int, environment: dict[str, str] | None = None) -> dict[str, Any]:
    service: dict[str, Any] = {
        "name": "idle-culler",
        "command": [python, "-m", "jupyterhub_idle_culler", f"--timeout={seconds}"],
    }
    if environment:
        service["environment"] = environment  # JupyterHub starts services with only what it is given
    return service


def auth_settings(
    config: PlatformConfig, *, passwords_file: str, client_secret_file: str, callback_url: str
) -> dict[str, Any]:
    """The authenticator part of the hub settings: local accounts or OIDC (paths differ per target)."""
    auth = config.hub.auth
    if auth.type == "local":
        return {
            "authenticator_class": "cubelab.hub.auth.LocalPasswordAuthenticator",
            "passwords_file": passwords_file,
            "allowed_users": [u.name for u in config.users],
        }
    return {
        "authenticator_class": "generic-oauth",
        "oidc": {
            "client_id": auth.client_id,
            "client_secret_file": client_secret_file,
            "authorize_url": auth.authorize_url,
            "token_url": auth.token_url,
            "userdata_url": auth.userdata_url,
            "username_claim": auth.username_claim,
            "groups_claim": auth.groups_claim,
            "scope": list(auth.scope),
            "callback_url": callback_url,
        },
    }
