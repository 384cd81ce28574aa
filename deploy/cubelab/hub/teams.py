"""Team sessions for any spawner (local processes, DockerSpawner, KubeSpawner): the spawn form's team choice
and the chosen team's environment (tracking URI and token, S3 keys, TensorBoard log directory)."""

from __future__ import annotations

import html
from typing import Any

from tornado import web


def user_teams(spawner: Any, team_env: dict[str, Any]) -> list[str]:
    return sorted(g.name for g in spawner.user.groups if g.name in team_env)


class TeamChoice:
    """Spawner.options_form: a team menu for users in more than one team (nothing for the others)."""

    def __init__(self, team_env: dict[str, Any]) -> None:
        self.team_env = team_env

    def __call__(self, spawner: Any) -> str:
        teams = user_teams(spawner, self.team_env)
        if len(teams) < 2:
            return ""
        options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in teams)
        return (
            '<label for="team">Team: runs, models and data of this session go to its tracking server and '
            f'bucket</label><select class="form-control" name="team" id="team">{options}</select>'
        )


def options_from_form(formdata: dict[str, list[str]]) -> dict[str, str]:
    return {"team": formdata.get("team", [""])[0]}


def chosen_team(spawner: Any, team_env: dict[str, Any]) -> str | None:
    """The team of this session: the one asked for (if the user is in it), else the user's only/first team."""
    teams = user_teams(spawner, team_env)
    wanted = (spawner.user_options or {}).get("team")
    if not wanted:
        return teams[0] if teams else None
    if wanted not in teams:
        raise web.HTTPError(403, f"{spawner.user.name} is not a member of team {wanted!r}")
    return str(wanted)


class TeamEnvironment:
    """Spawner.pre_spawn_hook: put the chosen team's environment into the spawner's environment."""

    def __init__(self, team_env: dict[str, dict[str, str]], home_logdir: str = "tensorboard") -> None:
        self.team_env = team_env
        self.home_logdir = home_logdir

    def __call__(self, spawner: Any) -> None:
        env = spawner.environment
        # The spawner object outlives a session: clear what an earlier session with another team left.
        for key in {k for team_env in self.team_env.values() for k in team_env} | {
            "CUBELAB_TEAM",
            "MLFLOW_TRACKING_TOKEN",
        }:
            env.pop(key, None)
        env["HUB_USER"] = spawner.user.name
        env["TENSORBOARD_LOGDIR"] = self.home_logdir  # relative: under the server's home folder
        team = chosen_team(spawner, self.team_env)
        if team is None:
            return
        env.update(self.team_env[team])
        env["CUBELAB_TEAM"] = team
        env["TENSORBOARD_LOGDIR"] = f"s3://{self.team_env[team]['S3_USER_STORAGE_BUCKET']}/tensorboard"
        # The server's own hub token: the tracking server accepts it for members of the team.
        env["MLFLOW_TRACKING_TOKEN"] = lambda s: s.api_token
