"""The embedded stack's spawner: local processes, each user as their own Unix account when the hub runs as root,
with the chosen team's tracking server, token and S3 credentials in the environment."""

from __future__ import annotations

import html
import os
import pwd
from collections.abc import Callable
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from tornado import web
from traitlets import Bool, Dict, Unicode, default


class CubelabSpawner(LocalProcessSpawner):
    team_env = Dict(help="team -> environment for that team's members (tracking URI, S3 keys, ...)").tag(config=True)
    run_as_system_users = Bool(True, help="run each user as the Unix account <prefix><name>").tag(config=True)
    system_user_prefix = Unicode("cl-").tag(config=True)
    homes_dir = Unicode(help="where homes are when users are not separate Unix accounts").tag(config=True)
    stack_marker = Unicode(help="CUBELAB_STACK value, so `cubelab down` finds every server").tag(config=True)

    @default("options_form")
    def _default_options_form(self) -> Callable[[Any], str]:
        return team_choice_form

    def user_teams(self) -> list[str]:
        return sorted(g.name for g in self.user.groups if g.name in self.team_env)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        return {"team": formdata.get("team", [""])[0]}

    def chosen_team(self) -> str | None:
        teams = self.user_teams()
        wanted = (self.user_options or {}).get("team") or (teams[0] if len(teams) == 1 else "")
        if not wanted:
            return None if not teams else teams[0]
        if wanted not in teams:
            raise web.HTTPError(403, f"{self.user.name} is not a member of team {wanted!r}")
        return str(wanted)

    @property
    def system_user(self) -> str:
        return f"{self.system_user_prefix}{self.user.name}"

    def home(self) -> str:
        if self.run_as_system_users:
            return pwd.getpwnam(self.system_user).pw_dir
        path = os.path.join(self.homes_dir, self.user.name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        if self.run_as_system_users:
            return set_user_setuid(self.system_user)
        home = self.home()
        return lambda: os.chdir(home)

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        env["HOME"] = self.home()
        env["USER"] = self.system_user if self.run_as_system_users else self.user.name
        env["SHELL"] = "/bin/bash"
        return env

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env["CUBELAB_STACK"] = self.stack_marker
        env["HUB_USER"] = self.user.name
        env["TENSORBOARD_LOGDIR"] = os.path.join(env["HOME"], "tensorboard")
        team = self.chosen_team()
        if team:
            env.update(self.team_env[team])
            env["TENSORBOARD_LOGDIR"] = f"s3://{env['S3_USER_STORAGE_BUCKET']}/tensorboard"
            env["CUBELAB_TEAM"] = team
            # The hub token of this server: the tracking server accepts it for members of the team.
            env["MLFLOW_TRACKING_TOKEN"] = self.api_token
        return env


def team_choice_form(spawner: CubelabSpawner) -> str:
    teams = spawner.user_teams()
    if len(teams) < 2:
        return ""
    options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in teams)
    return (
        '<label for="team">Team: runs, models and data of this session go to its tracking server and bucket</label>'
        f'<select class="form-control" name="team" id="team">{options}</select>'
    )
