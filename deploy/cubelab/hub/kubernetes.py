"""cubelab inside the zero-to-jupyterhub hub: called from the chart's `hub.extraConfig` (see helm/cubelab).

z2jh's own jupyterhub_config.py sets up KubeSpawner, the proxy and the database; this adds what cubelab
owns: the teams' tracking servers as hub services (tokens from the team Secrets, through the environment),
teams as groups, the spawn form's team choice, the team environment of users' pods, cubelab's templates and,
with local accounts, the first passwords. Roles come from `hub.loadRoles` in the rendered values.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cubelab.hub.configure import apply

_ENV_REF = re.compile(r"\$\(([A-Z0-9_]+)\)")


def expand(value: Any, env: dict[str, str]) -> Any:
    """Replace $(NAME) by the environment variable NAME (Kubernetes' own syntax; kubelet expands it only for
    variables defined before, in order, so the hub does it itself). A missing variable is an error."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise KeyError(f"cubelab: environment variable {name} (referenced in the hub settings) is not set")
            return env[name]

        return _ENV_REF.sub(one, value)
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    return value


def write_first_passwords(path: Path, users: list[str], env: dict[str, str]) -> int:
    """Hash each user's first password (USER_<NAME>_PASSWORD) into the password file; changed ones are kept."""
    from cubelab.passwords import PasswordFile
    from cubelab.provision import user_password_var

    store = PasswordFile(path)
    known = store.load() if path.exists() else {}
    added = 0
    for user in users:
        if user not in known and (password := env.get(user_password_var(user))):
            store.set(user, password)
            added += 1
    return added


class TeamProfiles:
    """KubeSpawner.profile_list: the rendered profiles (one per team and kind, slug TEAM-cpu or TEAM-gpu), narrowed
    to the user's teams; GPU profiles exist only for teams allowed GPUs (rendered so from the platform config)."""

    def __init__(self, profiles: list[dict[str, Any]]) -> None:
        self.profiles = profiles

    def __call__(self, spawner: Any) -> list[dict[str, Any]]:
        teams = {g.name for g in spawner.user.groups}
        return [p for p in self.profiles if p["slug"].rsplit("-", 1)[0] in teams]


def configure(c: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Called by zero-to-jupyterhub's hub (hub.extraConfig): the same configuration as cubelab's own hubs."""
    env = dict(os.environ if env is None else env)
    settings = expand(json.loads(env["CUBELAB_HUB_SETTINGS_JSON"]), env)
    apply(c, settings)
    if passwords := settings.get("passwords_file"):
        write_first_passwords(Path(passwords), settings["allowed_users"], env)
    return settings
