"""Attacks by a member on their own team's tracking server: forging authorship with every encoding and method
spelling, pointing artefacts outside the team's store, handlers cubelab does not offer, and malformed bodies.
Each runs on the server's own port and through the hub."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests

from platform_tests.conftest import issue_token

ROUTES = ["direct-port", "through-hub"]
FORGED = "mallory"


def base_url(deployment: dict[str, Any], team: dict[str, Any], route: str) -> str:
    if route == "through-hub":
        return f"{deployment['hub_url']}/services/mlflow-{team['name']}"
    return str(team["tracking_uri"])


@pytest.fixture(scope="module")
def member(deployment: dict[str, Any]) -> dict[str, Any]:
    team = deployment["teams"][0]
    user = team["members"][0]
    token = issue_token(deployment, user)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    base = str(team["tracking_uri"])
    name = f"isolation-{uuid.uuid4().hex[:8]}"
    created = session.post(f"{base}/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=10)
    created.raise_for_status()
    return {"team": team, "user": user, "session": session, "experiment_id": created.json()["experiment_id"]}


def send(session: requests.Session, method: str, url: str, body: Any, encoding: str) -> requests.Response:
    """One request with its body encoded as a forger would try it."""
    headers = {"Content-Type": "application/json"}
    if encoding == "json":
        data, params = json.dumps(body), None
    elif encoding == "double-json":
        data, params = json.dumps(json.dumps(body)), None
    elif encoding == "form":
        data, params = "&".join(f"{k}={v}" for k, v in body.items() if isinstance(v, str)), None
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    else:  # query string, with an empty JSON body
        data, params = "{}", {k: v for k, v in body.items() if isinstance(v, str)}
    return session.request(method, url, data=data, params=params, headers=headers, timeout=15)


ENCODINGS = ["json", "double-json", "form", "query"]
METHODS = ["POST", "post", "pOsT"]


@pytest.mark.parametrize("route", ROUTES)
def test_no_encoding_or_method_spelling_forges_authorship(
    deployment: dict[str, Any], member: dict[str, Any], route: str
) -> None:
    base = base_url(deployment, member["team"], route)
    session, experiment = member["session"], member["experiment_id"]
    forged_tags = [{"key": "mlflow.user", "value": FORGED}]
    victim = session.post(f"{base}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment}, timeout=10)
    run_id = victim.json()["run"]["info"]["run_id"]
    attempts = [
        ("runs/create", {"experiment_id": experiment, "user_id": FORGED, "tags": forged_tags}),
        ("runs/set-tag", {"run_id": run_id, "key": "mlflow.user", "value": FORGED}),
        ("runs/log-batch", {"run_id": run_id, "tags": forged_tags}),
        ("runs/delete-tag", {"run_id": run_id, "key": "mlflow.user"}),
        ("logged-models", {"experiment_id": experiment, "source_run_id": run_id, "tags": forged_tags}),
    ]
    statuses = []
    for path, body in attempts:
        for method in METHODS:
            for encoding in ENCODINGS:
                resp = send(session, method, f"{base}/api/2.0/mlflow/{path}", body, encoding)
                statuses.append(resp.status_code)
                assert resp.status_code < 500, (path, method, encoding, resp.text[:300])
                assert resp.status_code != 401, (path, method, encoding)
    promptlab = session.post(f"{base}/ajax-api/2.0/mlflow/runs/create-promptlab-run",
                             json={"experiment_id": experiment, "user_id": FORGED}, timeout=10)  # fmt: skip
    assert promptlab.status_code == 403
    # What was stored: every run of the experiment is the member's, and so is every logged model.
    runs = session.post(f"{base}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment],
                                                                       "max_results": 1000}, timeout=10)  # fmt: skip
    runs.raise_for_status()
    found = runs.json()["runs"]
    assert len(found) > 2, statuses
    for run in found:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        assert run["info"]["user_id"] == member["user"], run["info"]
        assert tags.get("mlflow.user") == member["user"], tags
    models = session.post(f"{base}/api/2.0/mlflow/logged-models/search", json={"experiment_ids": [experiment]},
                          timeout=10)  # fmt: skip
    for model in models.json().get("models", []):
        tags = {t["key"]: t["value"] for t in model["info"].get("tags", [])}
        assert tags.get("mlflow.user", member["user"]) == member["user"], tags


BAD_LOCATIONS = [
    "file:///", "file:///var/lib/cubelab/secrets", "/tmp/elsewhere", "s3://{other}/mlflow/x",
    "s3://{bucket}/not-artifacts/x", "mlflow-artifacts://evil.example.com/x", "http://127.0.0.1:1/x",
]  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
def test_artefact_locations_stay_in_the_team_store(
    deployment: dict[str, Any], member: dict[str, Any], route: str
) -> None:
    base = base_url(deployment, member["team"], route)
    session = member["session"]
    other = next(t for t in deployment["teams"] if t["name"] != member["team"]["name"])
    for template in BAD_LOCATIONS:
        location = template.format(other=other["bucket"], bucket=member["team"]["bucket"])
        body = {"name": f"loc-{uuid.uuid4().hex[:8]}", "artifact_location": location}
        resp = session.post(f"{base}/api/2.0/mlflow/experiments/create", json=body, timeout=10)
        assert resp.status_code == 400, (location, resp.status_code, resp.text[:200])
        assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        source = {"name": f"m-{uuid.uuid4().hex[:8]}", "source": location}
        session.post(f"{base}/api/2.0/mlflow/registered-models/create", json={"name": source["name"]}, timeout=10)
        resp = session.post(f"{base}/api/2.0/mlflow/model-versions/create", json=source, timeout=10)
        assert resp.status_code == 400, (location, resp.status_code, resp.text[:200])
    inside = f"s3://{member['team']['bucket']}/{member['team']['artifact_prefix']}/own-{uuid.uuid4().hex[:8]}"
    body = {"name": f"own-{uuid.uuid4().hex[:8]}", "artifact_location": inside}
    resp = session.post(f"{base}/api/2.0/mlflow/experiments/create", json=body, timeout=10)
    assert resp.status_code == 200, resp.text[:200]


@pytest.mark.parametrize("path", ["/api/2.0/mlflow/webhooks", "/ajax-api/3.0/jobs/", "/gateway/mlflow/v1/models",
                                  "/ajax-api/3.0/mlflow/assistant/config", "/api/3.0/mlflow/mcp-servers"])  # fmt: skip
def test_handlers_cubelab_does_not_offer_are_refused(member: dict[str, Any], path: str) -> None:
    base = str(member["team"]["tracking_uri"])
    for method in ("GET", "POST"):
        resp = member["session"].request(method, f"{base}{path}", json={}, timeout=10)
        assert resp.status_code in (403, 404, 405), (method, path, resp.status_code)
        assert resp.status_code != 200


@pytest.mark.parametrize(("path", "body"), [
    ("runs/log-parameter", '{"run_id": "RUN", "key": "k\\u0000", "value": "v"}'),
    ("runs/set-tag", '{"run_id": "RUN", "key": "k", "value": "v\\u0000"}'),
    ("runs/log-batch", '{"run_id": "RUN", "tags": [1]}'),
    ("runs/log-batch", '{"run_id": "RUN", "tags": "foo"}'),
    ("runs/log-batch", '[{"run_id": "RUN"}]'),
    ("runs/log-batch", "[" * 100_000 + "]" * 100_000),
    ("experiments/create", '{"name": "a\\u0000b"}'),
])  # fmt: skip
def test_malformed_bodies_are_client_errors_not_500s(member: dict[str, Any], path: str, body: str) -> None:
    base, session = str(member["team"]["tracking_uri"]), member["session"]
    run = session.post(f"{base}/api/2.0/mlflow/runs/create", json={"experiment_id": member["experiment_id"]},
                       timeout=10).json()["run"]["info"]["run_id"]  # fmt: skip
    resp = session.post(f"{base}/api/2.0/mlflow/{path}", data=body.replace("RUN", run).encode(),
                        headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    assert "error_code" in resp.json()


def test_a_legal_large_batch_is_accepted(member: dict[str, Any]) -> None:
    base, session = str(member["team"]["tracking_uri"]), member["session"]
    run = session.post(f"{base}/api/2.0/mlflow/runs/create", json={"experiment_id": member["experiment_id"]},
                       timeout=10).json()["run"]["info"]["run_id"]  # fmt: skip
    batch = {"run_id": run, "params": [{"key": f"p{i}", "value": "v" * 6000} for i in range(100)],
             "tags": [{"key": f"t{i}", "value": "v" * 8000} for i in range(100)],
             "metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": i} for i in range(800)]}  # fmt: skip
    assert len(json.dumps(batch)) > 1_400_000
    resp = session.post(f"{base}/api/2.0/mlflow/runs/log-batch", json=batch, timeout=60)
    assert resp.status_code == 200, resp.text[:300]


def test_a_missing_artefact_is_a_404_not_a_500(member: dict[str, Any]) -> None:
    base, session = str(member["team"]["tracking_uri"]), member["session"]
    run = session.post(f"{base}/api/2.0/mlflow/runs/create", json={"experiment_id": member["experiment_id"]},
                       timeout=10).json()["run"]  # fmt: skip
    root = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/").strip("/")
    for url in (f"{base}/api/2.0/mlflow-artifacts/artifacts/{root}/no-such-file.txt",
                f"{base}/get-artifact?path=no-such-file.txt&run_uuid={run['info']['run_id']}",
                f"{base}/api/2.0/mlflow/artifacts/list?run_id={run['info']['run_id']}&path=no-such-dir"):  # fmt: skip
        resp = session.get(url, timeout=15)
        assert resp.status_code < 500, (url, resp.status_code, resp.text[:300])
