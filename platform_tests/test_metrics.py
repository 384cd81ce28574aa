"""Metrics: every endpoint the description lists answers to the metrics token only, and a run a member logs shows
up in its team's counters (and the hub's token checks for it in the hub's)."""

from __future__ import annotations

import re
from typing import Any

import mlflow
import pytest
import requests
from mlflow.entities import Metric, Param

from platform_tests.conftest import issue_token

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Prometheus's text format: one value per metric name and label set."""
    out: Samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        out[name, frozenset(LABEL.findall(labels or ""))] = float(value)
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of name whose labels include labels."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


@pytest.fixture(scope="module")
def metrics(deployment: dict[str, Any]) -> dict[str, Any]:
    if "metrics" not in deployment:
        pytest.skip("the deployment description lists no metrics endpoints (written by a cubelab before them)")
    return deployment["metrics"]


def target(metrics: dict[str, Any], job: str, team: str | None = None) -> str:
    found = [t["url"] for t in metrics["targets"] if t["job"] == job and t["labels"].get("team") == team]
    assert len(found) == 1, metrics["targets"]
    return found[0]


def near_miss(token: str) -> str:
    """The token with its last character changed (never to itself: a token ending in "0" stays a miss)."""
    return token[:-1] + ("1" if token.endswith("0") else "0")


def scrape(url: str, token: str) -> Samples:
    resp = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, (url, resp.status_code, resp.text[:300])
    return parse(resp.text)


def test_every_endpoint_answers_the_metrics_token_only(deployment: dict[str, Any], metrics: dict[str, Any]) -> None:
    team = deployment["teams"][0]
    member = issue_token(deployment, team["members"][0])
    assert {t["job"] for t in metrics["targets"]} == {"hub", "tracking"}
    assert {t["labels"].get("team") for t in metrics["targets"] if t["job"] == "tracking"} == {
        t["name"] for t in deployment["teams"]}  # fmt: skip
    for entry in metrics["targets"]:
        url = entry["url"]
        assert requests.get(url, timeout=10).status_code in (401, 403), url
        for token in (member, deployment["hub_admin_token"], near_miss(metrics["token"])):
            resp = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert resp.status_code in (401, 403), (url, resp.status_code)
        assert scrape(url, metrics["token"])


def test_the_metrics_token_opens_no_team_data(deployment: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Whoever holds the scraper's token reads numbers, not runs: the tracking API and the hub's user list refuse it."""
    for team in deployment["teams"]:
        resp = requests.get(f"{team['tracking_uri']}/api/2.0/mlflow/experiments/search?max_results=5",
                            headers={"Authorization": f"Bearer {metrics['token']}"}, timeout=10)  # fmt: skip
        assert resp.status_code in (401, 403), resp.text
    resp = requests.get(f"{deployment['hub_api_url']}/users", headers={"Authorization": f"token {metrics['token']}"},
                        timeout=10)  # fmt: skip
    assert resp.status_code == 403


def test_a_logged_run_shows_in_its_teams_counters(
    deployment: dict[str, Any], metrics: dict[str, Any], team: dict[str, Any], member_token: str, unique: str
) -> None:
    url = target(metrics, "tracking", team["name"])
    before = scrape(url, metrics["token"])
    client = mlflow.MlflowClient(team["tracking_uri"])
    experiment = client.create_experiment(unique)
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "rmse", 0.5, step=0)
    client.log_batch(run.info.run_id, metrics=[Metric("rmse", 0.4, 0, 1)], params=[Param("lr", "0.1")])
    client.set_terminated(run.info.run_id)
    refused = requests.get(f"{team['tracking_uri']}/api/2.0/mlflow/experiments/get?experiment_id={experiment}",
                           timeout=10)  # fmt: skip
    assert refused.status_code == 401
    after = scrape(url, metrics["token"])

    name = "cubelab_tracking_requests_total"
    for route, status in (("create_experiment", "200"), ("create_run", "200"), ("log_metric", "200"),
                          ("log_batch", "200"), ("update_run", "200"), ("get_experiment", "401")):  # fmt: skip
        labels = {"team": team["name"], "route": route, "status": status}
        assert total(after, name, **labels) >= total(before, name, **labels) + 1, labels
    latency = "cubelab_tracking_request_duration_seconds_count"
    assert total(after, latency, route="create_run") > total(before, latency, route="create_run")
    # A server counts only its own team's requests.
    assert {dict(ls)["team"] for (n, ls) in after if n == name} == {team["name"]}
    assert total(after, "cubelab_team_database_bytes", team=team["name"]) > 0
    assert ("cubelab_team_bucket_objects", frozenset({("team", team["name"])})) in after


def test_the_hub_counts_the_token_checks_of_a_run(
    deployment: dict[str, Any], metrics: dict[str, Any], team: dict[str, Any], unique: str
) -> None:
    """A new token is not in the tracking server's cache: the server asks the hub whose it is, which the hub's
    request metrics show."""
    url = target(metrics, "hub")
    name = "jupyterhub_request_duration_seconds_count"

    def checks(samples: Samples) -> float:
        return sum(v for (n, ls), v in samples.items()
                   if n == name and dict(ls).get("handler", "").endswith("SelfAPIHandler")
                   and dict(ls).get("code") == "200")  # fmt: skip

    before = scrape(url, metrics["token"])
    token = issue_token(deployment, team["members"][0])
    resp = requests.post(f"{team['tracking_uri']}/api/2.0/mlflow/experiments/create", json={"name": unique},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    assert resp.status_code == 200, resp.text
    after = scrape(url, metrics["token"])
    assert checks(after) >= checks(before) + 1
