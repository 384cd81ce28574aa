"""Platform config -> the hub's groups, roles and services. Pure functions, shared by every deployment target."""

from __future__ import annotations

from typing import Any

from cubelab.config import PlatformConfig, Team

ADMIN_SERVICE = "cubelab"


def service_prefix(team: Team) -> str:
    """The path a team's tracking server is served under, through the hub and on its own port alike."""
    return f"/services/{team.service}"


def groups(config: PlatformConfig) -> dict[str, list[str]]:
    """Teams are hub groups: team name -> member names."""
    return {team.name: sorted(team.members) for team in config.teams}


def roles(config: PlatformConfig, culler: bool) -> list[dict[str, Any]]:
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
    if culler:
        out.append({
            "name": "idle-culler",
            "description": "stop idle user servers",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        })  # fmt: skip
    return out


def team_services(config: PlatformConfig, urls: dict[str, str], tokens: dict[str, str]) -> list[dict[str, Any]]:
    """One hub service per team, proxied at /services/mlflow-TEAM/ with the hub's OAuth for browsers."""
    return [
        {
            "name": team.service,
            # Listed on cubelab's home page for members only, not in every admin's service menu.
            "display": False,
            "url": urls[team.name],
            "api_token": tokens[team.name],
            "oauth_client_id": f"service-{team.service}",
            "oauth_redirect_uri": f"{service_prefix(team)}/oauth_callback",
            "oauth_no_confirm": True,
            "info": {"team": team.name, "kind": "mlflow"},
        }
        for team in config.teams
    ]
