"""Who may reach a team's tracking server: every cell of the matrix, through the hub and on the server's port."""

from __future__ import annotations

import time
import uuid
from typing import Any

import mlflow
import pytest
import requests

from platform_tests.conftest import issue_token

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CACHE_SECONDS = 5.0  # cubelab.tracking.auth.TOKEN_CACHE_SECONDS
SECRET_TEXT = "ocean-only results"
# A deployment description's `limits`: the harness runs Kubernetes pods with no API server (deploy/tests/kubeplay).
NO_API_SERVER = "no-api-server"


def hub_api(deployment: dict[str, Any], method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"token {deployment['hub_admin_token']}"}
    resp = requests.request(method, f"{deployment['hub_api_url']}{path}", headers=headers, timeout=10, **kwargs)
    resp.raise_for_status()
    return resp


@pytest.fixture(scope="module")
def world(deployment: dict[str, Any]) -> dict[str, Any]:
    """A run with an artefact in the first team, and a token of every kind."""
    team, other = deployment["teams"][0], deployment["teams"][1]
    member = team["members"][0]
    stranger = next(m for m in other["members"] if m not in team["members"])
    tokens = {"member": issue_token(deployment, member), "other-team": issue_token(deployment, stranger)}

    # A token that worked, then was revoked; a user who was a member, then deleted (where the hub can delete
    # users: with KubeSpawner that needs the Kubernetes API server, which a run without a cluster lacks).
    revoked = issue_token(deployment, member)
    temp = f"tmp{uuid.uuid4().hex[:8]}" if NO_API_SERVER not in deployment.get("limits", []) else None
    if temp:
        hub_api(deployment, "POST", f"/users/{temp}")
        hub_api(deployment, "POST", f"/groups/{team['name']}/users", json={"users": [temp]})
    deleted = issue_token(deployment, temp) if temp else None
    admins = [u["name"] for u in deployment["users"] if u.get("admin")]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", tokens["member"])
        mlflow.set_tracking_uri(team["tracking_uri"])
        mlflow.set_experiment(f"access-{uuid.uuid4().hex[:6]}")
        with mlflow.start_run() as run:
            mlflow.log_text(SECRET_TEXT, "secret.txt")
    for token in filter(None, (revoked, deleted)):  # both work before they are taken away (and are now cached)
        probe = requests.get(
            f"{team['tracking_uri']}/api/2.0/mlflow/runs/get",
            params={"run_id": run.info.run_id}, headers={"Authorization": f"Bearer {token}"}, timeout=10,
        )  # fmt: skip
        assert probe.status_code == 200
    token_id = requests.get(
        f"{deployment['hub_api_url']}/user", headers={"Authorization": f"token {revoked}"}, timeout=10
    ).json()["token_id"]
    hub_api(deployment, "DELETE", f"/users/{member}/tokens/{token_id}")
    if temp:
        hub_api(deployment, "DELETE", f"/users/{temp}")
        tokens["deleted-user"] = deleted
    time.sleep(CACHE_SECONDS + 1)  # past the tracking server's token cache
    tokens["revoked"] = revoked
    return {"team": team, "run": run, "tokens": tokens, "admins": admins}


ROUTES = ["through-hub", "direct-port"]
KINDS = ["none", "forged-header", "other-team", "revoked", "deleted-user", "member"]


def base_url(deployment: dict[str, Any], team: dict[str, Any], route: str) -> str:
    if route == "through-hub":
        return f"{deployment['hub_url']}/services/mlflow-{team['name']}"
    return str(team["tracking_uri"])


def headers_for(world: dict[str, Any], kind: str) -> dict[str, str]:
    if kind == "none":
        return {}
    if kind == "forged-header":
        member = world["team"]["members"][0]
        return {"X-Forwarded-User": member, "Remote-User": member, "X-Remote-User": member,
                "X-Auth-Request-User": member, "X-JupyterHub-User": member}  # fmt: skip
    return {"Authorization": f"Bearer {world['tokens'][kind]}"}


def requests_for(world: dict[str, Any], base: str) -> dict[str, tuple[str, dict[str, str]]]:
    run = world["run"].info
    artifact_path = run.artifact_uri.removeprefix("mlflow-artifacts:/") + "/secret.txt"
    return {
        "api": (f"{base}/api/2.0/mlflow/runs/get?run_id={run.run_id}", {}),
        "ui": (f"{base}/", {"Accept": "text/html"}),
        "artifact": (f"{base}/api/2.0/mlflow-artifacts/artifacts/{artifact_path}", {}),
    }


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", ["api", "ui", "artifact"])
def test_access_matrix(deployment: dict[str, Any], world: dict[str, Any], route: str, kind: str, what: str) -> None:
    if kind == "deleted-user" and kind not in world["tokens"]:
        pytest.skip("this deployment cannot delete hub users (KubeSpawner without a Kubernetes API server)")
    url, extra = requests_for(world, base_url(deployment, world["team"], route))[what]
    resp = requests.get(url, headers={**extra, **headers_for(world, kind)}, allow_redirects=False, timeout=15)
    if kind == "member":
        assert resp.status_code == 200, resp.text[:200]
        if what == "artifact":
            assert resp.text == SECRET_TEXT
        if what == "api":
            assert resp.json()["run"]["info"]["run_id"] == world["run"].info.run_id
        return
    assert SECRET_TEXT not in resp.text and world["run"].info.run_id not in resp.text
    if kind == "other-team":
        assert resp.status_code == 403
    elif what == "ui":  # a browser with no valid token is sent to log in at the hub
        assert resp.status_code == 302 and "/hub/api/oauth2/authorize" in resp.headers["location"]
    else:
        assert resp.status_code == 401


def test_hub_admin_outside_the_team_is_refused(deployment: dict[str, Any], world: dict[str, Any]) -> None:
    outsiders = [a for a in world["admins"] if a not in world["team"]["members"]]
    if not outsiders:
        pytest.skip("no platform admin outside the team in this deployment")
    token = issue_token(deployment, outsiders[0])
    url, _ = requests_for(world, world["team"]["tracking_uri"])["api"]
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 403


def test_an_operator_runs_the_platform_without_reaching_team_data(
    deployment: dict[str, Any], world: dict[str, Any]
) -> None:
    """The operator role (users[].operator): the hub's admin views and stopping servers, but no token for another
    user and no change of groups, so no way into a team's data (unlike a hub admin)."""
    operators = [u["name"] for u in deployment["users"] if u.get("operator")]
    if not operators:
        pytest.skip("no operator in this deployment")
    operator, team = operators[0], world["team"]
    headers = {"Authorization": f"token {issue_token(deployment, operator)}"}
    api = deployment["hub_api_url"]
    users = requests.get(f"{api}/users", headers=headers, timeout=10)
    assert users.status_code == 200 and team["members"][0] in {u["name"] for u in users.json()}
    assert requests.get(f"{api}/groups", headers=headers, timeout=10).status_code == 200
    member = team["members"][0]
    minted = requests.post(f"{api}/users/{member}/tokens", headers=headers, json={"note": "x"}, timeout=10)
    assert minted.status_code == 403, minted.text[:200]
    joined = requests.post(f"{api}/groups/{team['name']}/users", headers=headers, json={"users": [operator]},
                           timeout=10)  # fmt: skip
    assert joined.status_code == 403, joined.text[:200]
    created = requests.post(f"{api}/users/intruder", headers=headers, timeout=10)
    assert created.status_code == 403
    url, _ = requests_for(world, team["tracking_uri"])["api"]
    bearer = {"Authorization": headers["Authorization"].replace("token ", "Bearer ")}
    assert requests.get(url, headers=bearer, timeout=10).status_code == 403


@pytest.mark.parametrize(
    "path",
    [
        "/api/2.0/mlflow-artifacts/artifacts/../../../etc/passwd",
        "/api/2.0/mlflow-artifacts/artifacts/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/api/2.0/mlflow-artifacts/artifacts?path=../../..",
        "/get-artifact?path=../../../../etc/passwd&run_uuid={run}",
        "/get-artifact?path=%2e%2e%2f%2e%2e%2fsecret.txt&run_uuid={run}",
    ],
)
def test_path_traversal_in_artifact_paths_is_refused(world: dict[str, Any], path: str) -> None:
    url = world["team"]["tracking_uri"] + path.format(run=world["run"].info.run_id)
    resp = requests.get(url, headers=headers_for(world, "member"), timeout=10)
    assert resp.status_code in (400, 403, 404), (resp.status_code, resp.text[:200])
    assert "root:" not in resp.text


def test_client_sent_author_cannot_stick(world: dict[str, Any]) -> None:
    base = world["team"]["tracking_uri"]
    auth = headers_for(world, "member")
    run_id = world["run"].info.run_id
    batch = {"run_id": run_id, "tags": [{"key": "mlflow.user", "value": "mallory"}]}
    assert (
        requests.post(f"{base}/api/2.0/mlflow/runs/log-batch", json=batch, headers=auth, timeout=10).status_code == 403
    )
    tag = {"run_id": run_id, "key": "mlflow.user", "value": "mallory"}
    assert requests.post(f"{base}/api/2.0/mlflow/runs/set-tag", json=tag, headers=auth, timeout=10).status_code == 403
    created = requests.post(
        f"{base}/api/2.0/mlflow/runs/create",
        json={"experiment_id": world["run"].info.experiment_id, "user_id": "mallory",
              "tags": [{"key": "mlflow.user", "value": "mallory"}]},
        headers={**auth, "X-Forwarded-User": "mallory"}, timeout=10,
    )  # fmt: skip
    info = created.json()["run"]
    member = world["team"]["members"][0]
    assert info["info"]["user_id"] == member
    assert {"key": "mlflow.user", "value": member} in info["data"]["tags"]
