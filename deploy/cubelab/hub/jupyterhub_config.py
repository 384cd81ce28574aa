"""JupyterHub config of cubelab: maps the rendered settings (JSON, see cubelab.backends.local.hub) to traits.

Values live in the settings file, not here; this file only says which setting sets which trait.
"""

# ruff: noqa: F821 - `c` and `get_config` are provided by JupyterHub when it loads this file
import json
import os
from pathlib import Path

from cubelab.hub.authconfig import configure_authenticator
from cubelab.hub.teams import TeamChoice, TeamEnvironment, options_from_form

# A file (embedded stack) or the JSON itself (the compose file passes it in the environment).
if "CUBELAB_HUB_SETTINGS_JSON" in os.environ:
    settings = json.loads(os.environ["CUBELAB_HUB_SETTINGS_JSON"])
else:
    settings = json.loads(Path(os.environ["CUBELAB_HUB_SETTINGS"]).read_text())
c = get_config()

# setting -> (configurable, trait)
TRAITS = {
    "bind_url": ("JupyterHub", "bind_url"),
    "hub_bind_url": ("JupyterHub", "hub_bind_url"),
    "hub_connect_url": ("JupyterHub", "hub_connect_url"),
    "db_url": ("JupyterHub", "db_url"),
    "services": ("JupyterHub", "services"),
    "load_roles": ("JupyterHub", "load_roles"),
    "template_paths": ("JupyterHub", "template_paths"),
    "proxy_api_url": ("ConfigurableHTTPProxy", "api_url"),
    "proxy_command": ("ConfigurableHTTPProxy", "command"),
    "admin_users": ("Authenticator", "admin_users"),
    "spawner_cmd": ("Spawner", "cmd"),
    "server_token_scopes": ("Spawner", "server_token_scopes"),
    "run_as_system_users": ("CubelabSpawner", "run_as_system_users"),
    "homes_dir": ("CubelabSpawner", "homes_dir"),
    "stack_marker": ("CubelabSpawner", "stack_marker"),
    "template_vars": ("JupyterHub", "template_vars"),
    "subdomain_host": ("JupyterHub", "subdomain_host"),
    "docker_image": ("DockerSpawner", "image"),
    "docker_network": ("DockerSpawner", "network_name"),
    "docker_volumes": ("DockerSpawner", "volumes"),
}
for key, (section, trait) in TRAITS.items():
    if key in settings:
        value = settings[key]
        setattr(c[section], trait, set(value) if trait == "admin_users" else value)

if "db_url" in settings:
    # The hub's database is the stack's Postgres: connections left broken by a Postgres restart are tested and
    # replaced before use, so the hub keeps working without a restart of its own.
    c.JupyterHub.db_kwargs = {"pool_pre_ping": True}
c.JupyterHub.cookie_secret = bytes.fromhex(settings["cookie_secret"])
c.ConfigurableHTTPProxy.auth_token = settings["proxy_token"]
c.JupyterHub.load_groups = {name: {"users": members} for name, members in settings["groups"].items()}
# The spawner is a setting (local processes here; DockerSpawner or KubeSpawner elsewhere); team sessions
# work the same with each.
c.JupyterHub.spawner_class = settings.get("spawner_class", "cubelab.hub.spawner.CubelabSpawner")
c.Spawner.options_form = TeamChoice(settings["team_env"])
c.Spawner.options_from_form = options_from_form
c.Spawner.pre_spawn_hook = TeamEnvironment(settings["team_env"], gpu_teams=settings.get("gpu_teams", ()))
if settings.get("docker_image"):
    # Containers are removed when servers stop; homes live on in the per-user volumes.
    c.DockerSpawner.remove = True
    # The hub reaches users' containers by their address on the users' network, not through host ports.
    c.DockerSpawner.use_internal_ip = True
    c.DockerSpawner.notebook_dir = "/home/jovyan/work"
# Users' servers outlive a hub restart (`cubelab apply` restarts the hub when teams change);
# `cubelab down` stops them itself.
c.JupyterHub.cleanup_servers = False
# After login, the home page with the user's teams (not an immediate spawn).
c.JupyterHub.default_url = "/hub/home"
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60

configure_authenticator(c, settings)
