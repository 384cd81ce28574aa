"""Hub settings -> JupyterHub traits: the one configuration code of every target's hub.

The embedded hub and compose's hub load it through cubelab's jupyterhub_config.py; zero-to-jupyterhub's hub
through its `hub.extraConfig` hook (cubelab.hub.kubernetes), after z2jh's own jupyterhub_config.py has set
KubeSpawner, the proxy and the database. So what the embedded tests prove about teams, services, roles, login
and sessions is the same code on the same settings (cubelab.plan.hub_settings) in every target. Lists and
dicts another config set first (z2jh's services, template paths) are extended, not replaced.
"""

from __future__ import annotations

from typing import Any

from cubelab.hub.authconfig import configure_authenticator
from cubelab.hub.teams import TeamChoice, TeamEnvironment, options_from_form

# setting -> (configurable, trait), set as given where the settings have it
TRAITS = {
    "bind_url": ("JupyterHub", "bind_url"),
    "hub_bind_url": ("JupyterHub", "hub_bind_url"),
    "hub_connect_url": ("JupyterHub", "hub_connect_url"),
    "db_url": ("JupyterHub", "db_url"),
    "subdomain_host": ("JupyterHub", "subdomain_host"),
    "spawner_class": ("JupyterHub", "spawner_class"),
    "proxy_api_url": ("ConfigurableHTTPProxy", "api_url"),
    "proxy_command": ("ConfigurableHTTPProxy", "command"),
    "proxy_token": ("ConfigurableHTTPProxy", "auth_token"),
    "spawner_cmd": ("Spawner", "cmd"),
    "spawner_timeout": ("Spawner", "start_timeout"),
    "server_token_scopes": ("Spawner", "server_token_scopes"),
    "run_as_system_users": ("CubelabSpawner", "run_as_system_users"),
    "system_user_prefix": ("CubelabSpawner", "system_user_prefix"),
    "homes_dir": ("CubelabSpawner", "homes_dir"),
    "stack_marker": ("CubelabSpawner", "stack_marker"),
    "docker_image": ("DockerSpawner", "image"),
    "docker_network": ("DockerSpawner", "network_name"),
    "docker_volumes": ("DockerSpawner", "volumes"),
}


def _given(c: Any, section: str, trait: str, empty: Any) -> Any:
    """What an earlier config set (traitlets hands out a lazy placeholder for anything unset)."""
    return c[section][trait] if section in c and trait in c[section] else empty


def apply(c: Any, settings: dict[str, Any]) -> None:
    for key, (section, trait) in TRAITS.items():
        if settings.get(key) not in (None, ""):
            setattr(c[section], trait, settings[key])
    if "spawner_timeout" in settings:
        c.Spawner.http_timeout = settings["spawner_timeout"]
    if "cookie_secret" in settings:
        c.JupyterHub.cookie_secret = bytes.fromhex(settings["cookie_secret"])
    if "db_url" in settings:
        # The hub's database is the platform's Postgres: connections left broken by a Postgres restart are
        # tested and replaced before use, so the hub keeps working without a restart of its own.
        c.JupyterHub.db_kwargs = {"pool_pre_ping": True}
    c.JupyterHub.services = [*_given(c, "JupyterHub", "services", []), *settings["services"]]
    c.JupyterHub.load_roles = [*_given(c, "JupyterHub", "load_roles", []), *settings.get("load_roles", [])]
    c.JupyterHub.load_groups = {name: {"users": members} for name, members in settings["groups"].items()}
    c.JupyterHub.template_paths = [*settings["template_paths"], *_given(c, "JupyterHub", "template_paths", [])]
    c.JupyterHub.template_vars = {**_given(c, "JupyterHub", "template_vars", {}), **settings["template_vars"]}
    # After login, the home page with the user's teams (not an immediate spawn); servers open JupyterLab.
    c.JupyterHub.default_url = "/hub/home"
    c.Spawner.default_url = "/lab"
    # Users' servers outlive a hub restart; `cubelab down` stops them itself.
    c.JupyterHub.cleanup_servers = False
    # Team sessions: the spawn form's team choice, and the team's environment in the server.
    c.Spawner.options_from_form = options_from_form
    c.Spawner.pre_spawn_hook = TeamEnvironment(settings["team_env"], gpu_teams=settings.get("gpu_teams", ()))
    profiles = list(_given(c, "KubeSpawner", "profile_list", []))
    if profiles:
        from cubelab.hub.kubernetes import TeamProfiles

        # KubeSpawner's profile form is the team choice: TEAM-cpu / TEAM-gpu, each user sees their own teams'.
        c.KubeSpawner.profile_list = TeamProfiles(profiles)
    else:
        c.Spawner.options_form = TeamChoice(settings["team_env"])
    if settings.get("docker_image"):
        # Containers are removed when servers stop; homes live on in the per-user volumes.
        c.DockerSpawner.remove = True
        # The hub reaches users' containers by their address on the users' network, not through host ports.
        c.DockerSpawner.use_internal_ip = True
        c.DockerSpawner.notebook_dir = "/home/jovyan/work"
    configure_authenticator(c, settings)
    c.Authenticator.admin_users = set(settings["admin_users"])
