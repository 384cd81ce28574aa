"""Fixtures over the deployment description (see README.md); `deployment` itself is in the root conftest."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import botocore.config
import pytest
import requests


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that take `team` run once per team; tests that take `pair` once per ordered pair of teams."""
    if "team" in metafunc.fixturenames:
        metafunc.parametrize("team_index", [0, 1], ids=["team0", "team1"], scope="session")


@pytest.fixture
def team(deployment: dict[str, Any], team_index: int) -> dict[str, Any]:
    teams = deployment["teams"]
    if len(teams) < 2:
        pytest.fail("the deployment description must list at least two teams")
    return teams[team_index]


def issue_token(deployment: dict[str, Any], user: str, expires_in: int = 900) -> str:
    """A fresh hub token of user, issued with the control plane's token from the description."""
    resp = requests.post(
        f"{deployment['hub_api_url']}/users/{user}/tokens",
        headers={"Authorization": f"token {deployment['hub_admin_token']}"},
        json={"note": "platform_tests", "expires_in": expires_in},
        timeout=10,
    )
    resp.raise_for_status()
    return str(resp.json()["token"])


@contextmanager
def client_as(deployment: dict[str, Any], team: dict[str, Any], user: str) -> Iterator[Any]:
    """An mlflow client of the team's server holding user's fresh token (for the time of the with block)."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", issue_token(deployment, user))
        yield mlflow.MlflowClient(team["tracking_uri"])


@pytest.fixture
def member_token(deployment: dict[str, Any], team: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """A token of the team's first member, also set as MLFLOW_TRACKING_TOKEN for mlflow clients."""
    token = issue_token(deployment, team["members"][0])
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    return token


@pytest.fixture
def unique() -> str:
    return f"platform-test-{uuid.uuid4().hex[:10]}"


def s3_client(deployment: dict[str, Any], access_key: str, secret_key: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=deployment["s3_endpoint"],
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def team_server(deployment: dict[str, Any]) -> Any:
    """The first team's first member's server, started for that team (shared by a test module)."""
    from platform_tests.hubclient import UserServer

    team = deployment["teams"][0]
    user = team["members"][0]
    server = UserServer(deployment["hub_url"], user, issue_token(deployment, user))
    server.start(team=team["name"])
    yield server
    server.stop()
