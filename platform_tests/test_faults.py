"""Faults during logging: a member logs metrics and small artefacts while Postgres, the hub, the team's tracking
server or S3 is killed with SIGKILL and brought back. The member's client sees retries (503s, refused
connections), never a 401, and everything the server acknowledged is stored.

Runs where the description says how to kill services (`faults`, see faults.py): the embedded stack the suite
starts itself, a compose deployment whose Docker socket the operator mounted into the test container, and a
Helm release installed with `tests.faults: true`."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient

from platform_tests import faults
from platform_tests.conftest import issue_token


@pytest.fixture(scope="module")
def injector(deployment: dict[str, Any]) -> faults.Injector:
    found = faults.injector(deployment)
    if found is None:
        pytest.skip("the description says no way to kill services (`faults`; see platform_tests/faults.py)")
    return found


def wait_serving(deployment: dict[str, Any], team: dict[str, Any], timeout: float = 180) -> None:
    """Until the hub's API and the team's tracking server answer again (a restarted container takes a while)."""
    deadline = time.monotonic() + timeout
    for url in (f"{deployment['hub_api_url']}/", f"{team['tracking_uri']}/health"):
        while True:
            try:
                if requests.get(url, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} does not answer after the fault")
            time.sleep(1)


@pytest.mark.parametrize("role", ["tracking", "hub", "postgres", "s3"])
def test_a_killed_service_costs_retries_not_data(
    deployment: dict[str, Any], injector: faults.Injector, role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if role not in injector.roles:
        pytest.skip(f"this deployment's {role} is not its own to kill (external)")
    team = deployment["teams"][0]
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", issue_token(deployment, team["members"][0]))
    client = MlflowClient(team["tracking_uri"])
    run_id = client.create_run(
        client.create_experiment(f"platform-test-fault-{role}-{uuid.uuid4().hex[:8]}")
    ).info.run_id
    acknowledged: list[int] = []
    errors: list[str] = []

    def log() -> None:
        for step in range(30):
            try:
                client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
                client.log_text(run_id, str(step), f"steps/{step}.txt")
                acknowledged.append(step)
            except Exception as exc:  # noqa: BLE001 - every failure is collected and checked below
                errors.append(repr(exc)[:300])
            time.sleep(0.1)

    worker = threading.Thread(target=log)
    worker.start()
    time.sleep(1.0)
    try:
        injector.kill(role)
        time.sleep(2.0)
    finally:
        injector.restore()
        wait_serving(deployment, team)  # the next test finds the platform as it was
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert not [e for e in errors if "401" in e or "UNAUTHENTICATED" in e], errors
    steps = {m.step for m in client.get_metric_history(run_id, "loss")}
    assert set(acknowledged) <= steps, (sorted(set(acknowledged) - steps), errors)
    files = {f.path for f in client.list_artifacts(run_id, "steps")}
    assert {f"steps/{s}.txt" for s in acknowledged} <= files
    assert len(acknowledged) >= 25, errors  # the client's retries carried nearly everything through
