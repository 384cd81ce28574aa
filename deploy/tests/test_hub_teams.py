"""Team sessions for any spawner: the choice form and the environment (pure logic, stand-in spawners)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from tornado import web

from cubelab.hub.teams import TeamChoice, TeamEnvironment, chosen_team, options_from_form

TEAM_ENV = {
    "ocean": {"MLFLOW_TRACKING_URI": "http://t/ocean", "S3_USER_STORAGE_BUCKET": "cubelab-ocean", "AWS_X": "o"},
    "land": {"MLFLOW_TRACKING_URI": "http://t/land", "S3_USER_STORAGE_BUCKET": "cubelab-land", "AWS_X": "l"},
}


def spawner(name: str, groups: list[str], team: str | None = None) -> Any:
    user = SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups])
    return SimpleNamespace(user=user, user_options={"team": team} if team else {}, environment={}, api_token="tok")


def test_form_only_for_users_in_several_teams() -> None:
    form = TeamChoice(TEAM_ENV)
    assert form(spawner("alice", ["ocean"])) == ""
    both = form(spawner("bob", ["ocean", "land", "not-a-team"]))
    assert '<option value="land">' in both and '<option value="ocean">' in both and "not-a-team" not in both
    assert options_from_form({"team": ["land"]}) == {"team": "land"}


def test_chosen_team_is_checked_against_membership() -> None:
    assert chosen_team(spawner("alice", ["ocean"]), TEAM_ENV) == "ocean"
    assert chosen_team(spawner("bob", ["ocean", "land"], "land"), TEAM_ENV) == "land"
    assert chosen_team(spawner("dave", []), TEAM_ENV) is None
    with pytest.raises(web.HTTPError):
        chosen_team(spawner("alice", ["ocean"], "land"), TEAM_ENV)


def test_environment_follows_the_session_and_forgets_the_last_team() -> None:
    hook = TeamEnvironment(TEAM_ENV)
    bob = spawner("bob", ["ocean", "land"], "land")
    hook(bob)
    env = bob.environment
    assert env["MLFLOW_TRACKING_URI"] == "http://t/land" and env["CUBELAB_TEAM"] == "land"
    assert env["TENSORBOARD_LOGDIR"] == "tensorboard/land"  # a folder; cubelab.hub.tbsync copies it to the bucket
    assert env["CUBELAB_TENSORBOARD_SHARED"] == "s3://cubelab-land/tensorboard"
    assert env["MLFLOW_TRACKING_TOKEN"](bob) == "tok"
    bob.user.groups = []  # bob left both teams; the same spawner object starts again
    bob.user_options = {}
    hook(bob)
    assert not {"MLFLOW_TRACKING_URI", "AWS_X", "CUBELAB_TEAM", "MLFLOW_TRACKING_TOKEN",
                "CUBELAB_TENSORBOARD_SHARED"} & set(bob.environment)  # fmt: skip
    assert bob.environment["TENSORBOARD_LOGDIR"] == "tensorboard"


def test_docker_sessions_get_gpus_only_for_teams_allowed() -> None:
    hook = TeamEnvironment(TEAM_ENV, gpu_teams=["land"])
    bob = spawner("bob", ["ocean", "land"], "land")
    bob.extra_host_config = {"mem_limit": "8g"}
    hook(bob)
    assert bob.extra_host_config["device_requests"][0]["capabilities"] == [["gpu"]]
    assert bob.extra_host_config["mem_limit"] == "8g"
    bob.user_options = {"team": "ocean"}  # next session in a team without GPUs
    hook(bob)
    assert "device_requests" not in bob.extra_host_config
    plain = spawner("carol", ["land"])  # a spawner without extra_host_config (local, KubeSpawner) is left alone
    hook(plain)
    assert not hasattr(plain, "extra_host_config")


def test_kubernetes_pods_are_labelled_with_their_team() -> None:
    hook = TeamEnvironment(TEAM_ENV)
    bob = spawner("bob", ["ocean", "land"], "land")
    bob.extra_labels = {"hub.jupyter.org/network-access-hub": "true"}
    hook(bob)
    assert bob.extra_labels == {"hub.jupyter.org/network-access-hub": "true", "cubelab.io/team": "land"}
    bob.user.groups, bob.user_options = [], {}
    hook(bob)
    assert "cubelab.io/team" not in bob.extra_labels
