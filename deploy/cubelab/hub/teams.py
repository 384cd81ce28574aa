"""Team sessions for any spawner (local processes, DockerSpawner, KubeSpawner): the spawn form's team choice
and the chosen team's environment (tracking URI and token, S3 keys, TensorBoard log directory)."""

from __future__ import annotations

import html
from typing import Any

from tornado import web

from cubelab.hub.tbsync import SHARED as TENSORBOARD_SHARED


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


PROFILE_SUFFIXES = ("-cpu", "-gpu")


def chosen_team(spawner: Any, team_env: dict[str, Any]) -> str | None:
    """The team of this session: the one asked for (if the user is in it), else the user's only/first team."""
    teams = user_teams(spawner, team_env)
    options = spawner.user_options or {}
    wanted = options.get("team")
    if not wanted and str(options.get("profile", "")).endswith(PROFILE_SUFFIXES):
        wanted = str(options["profile"]).rsplit("-", 1)[0]  # KubeSpawner profiles: TEAM-cpu, TEAM-gpu
    if not wanted:
        return teams[0] if teams else None
    if wanted not in teams:
        raise web.HTTPError(403, f"{spawner.user.name} is not a member of team {wanted!r}")
    return str(wanted)


class TeamEnvironment:
    """Spawner.pre_spawn_hook: put the chosen team's environment into the spawner's environment."""

    def __init__(
        self, team_env: dict[str, dict[str, str]], home_logdir: str = "tensorboard", gpu_teams: Any = ()
    ) -> None:
        self.team_env = team_env
        self.home_logdir = home_logdir
        self.gpu_teams = set(gpu_teams)

    def __call__(self, spawner: Any) -> None:
        env = spawner.environment
        # The spawner object outlives a session: clear what an earlier session with another team left.
        for key in {k for team_env in self.team_env.values() for k in team_env} | {
            "CUBELAB_TEAM",
            "MLFLOW_TRACKING_TOKEN",
            TENSORBOARD_SHARED,
        }:
            env.pop(key, None)
        env["HUB_USER"] = spawner.user.name
        env["TENSORBOARD_LOGDIR"] = self.home_logdir  # relative: under the server's home folder
        team = chosen_team(spawner, self.team_env)
        set_gpus(spawner, team is not None and team in self.gpu_teams)
        set_team_label(spawner, team)
        if team is None:
            return
        env.update(self.team_env[team])
        env["CUBELAB_TEAM"] = team
        # A folder every framework can write (relative: cubelab.hub.tbsync makes it absolute under the server's
        # home), copied to the team's bucket, which the session's TensorBoard reads with the teammates' runs.
        env["TENSORBOARD_LOGDIR"] = f"{self.home_logdir}/{team}"
        env[TENSORBOARD_SHARED] = f"s3://{self.team_env[team]['S3_USER_STORAGE_BUCKET']}/tensorboard"
        # The server's own hub token: the tracking server accepts it for members of the team.
        env["MLFLOW_TRACKING_TOKEN"] = lambda s: s.api_token


GPU_REQUEST = {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}


def set_gpus(spawner: Any, allowed: bool) -> None:
    """DockerSpawner: all GPUs for sessions of teams allowed to use them, none otherwise. (KubeSpawner gets
    GPUs from the spawn form's profiles, offered to those teams' groups only.)"""
    if not hasattr(spawner, "extra_host_config"):
        return
    config = dict(spawner.extra_host_config)
    config.pop("device_requests", None)
    if allowed:
        config["device_requests"] = [GPU_REQUEST]
    spawner.extra_host_config = config


TEAM_LABEL = "cubelab.io/team"


def set_team_label(spawner: Any, team: str | None) -> None:
    """KubeSpawner: label the pod with its team; the team's tracking server admits only pods with its label
    (the chart's NetworkPolicy)."""
    if not hasattr(spawner, "extra_labels"):
        return
    labels = dict(spawner.extra_labels)
    labels.pop(TEAM_LABEL, None)
    if team is not None:
        labels[TEAM_LABEL] = team
    spawner.extra_labels = labels
