"""The embedded stack's Prometheus (monitoring.enabled): it runs beside the services as its own account, scrapes
the targets the plan lists with the metrics token, finds a logged run's requests, comes back after a SIGKILL, is
out of reach of users' accounts, and stops when monitoring is turned off. The endpoints themselves are checked
against every target by platform_tests/test_metrics.py."""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from typing import Any

import mlflow
import pytest
import requests
import yaml
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab import plan
from cubelab.backends.local.monitoring import NAME
from cubelab.backends.local.stack import LocalBackend
from cubelab.procs import wait_until

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def stack(stacks: ScratchStacks) -> LocalBackend:
    teams = [{"name": "ocean", "members": ["alice"]}, {"name": "land", "members": ["bob"]}]
    backend = stacks.backend(stacks.config(teams=teams, users=["alice", "bob"],
                                           monitoring={"enabled": True, "scrape_interval_seconds": 1}))  # fmt: skip
    backend.up()
    return backend


def query(stack: LocalBackend, promql: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{stack.prometheus.url}/api/v1/query", params={"query": promql}, timeout=10)
    resp.raise_for_status()
    return list(resp.json()["data"]["result"])


def test_prometheus_scrapes_every_target_of_the_plan(stack: LocalBackend) -> None:
    row = next(r for r in stack.status() if r.name == NAME)
    assert row.healthy and row.url == stack.prometheus.url
    written = yaml.safe_load((stack.prometheus.home / "prometheus.yml").read_text())
    token_file = str(stack.prometheus.home / "metrics-token")
    assert written == plan.prometheus_config(stack.config, stack.tracking.addresses(), token_file)
    expected = {t.url for t in plan.scrape_targets(stack.config, stack.tracking.addresses())}
    assert len(expected) == 3  # the hub and two teams

    def all_up() -> bool:
        resp = requests.get(f"{stack.prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["scrapeUrl"] for t in resp if t["health"] == "up"} == expected

    wait_until(all_up, 30, what="every target scraped")
    for path in (stack.prometheus.home / "metrics-token", stack.prometheus.home / "prometheus.yml"):
        mode = os.stat(path)
        assert stat.S_IMODE(mode.st_mode) == 0o600
        if ROOT:
            assert pwd.getpwuid(mode.st_uid).pw_name == stack.prometheus.account()
    if ROOT:
        process = stack.procs.running(NAME)
        assert process is not None and process.username() == stack.prometheus.account()


def test_a_logged_run_reaches_prometheus(stack: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    team = stack.config.team("ocean")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", stack.hub.issue_token("alice"))
    client = mlflow.MlflowClient(stack.tracking.url(team))
    run = client.create_run(client.create_experiment("monitored"))
    client.log_metric(run.info.run_id, "rmse", 0.3)
    series = 'cubelab_tracking_requests_total{team="ocean",route="create_run",status="200"}'
    wait_until(lambda: bool(query(stack, series)), 30, what="the run's requests in Prometheus")
    assert float(query(stack, series)[0]["value"][1]) >= 1
    assert not query(stack, 'cubelab_tracking_requests_total{team="land",route="create_run"}')
    wait_until(lambda: bool(query(stack, 'cubelab_team_database_bytes{team="ocean"} > 0')), 30, what="sizes")
    assert query(stack, 'jupyterhub_request_duration_seconds_count{handler=~".*SelfAPIHandler"}')


@pytest.mark.skipif(not ROOT, reason="without root there are no separate accounts to keep out")
def test_users_accounts_cannot_reach_prometheus(stack: LocalBackend) -> None:
    """Prometheus's API has no login: the loopback firewall lets only root and its own account connect."""
    probe = ("import socket,sys\ns=socket.socket()\ns.settimeout(5)\n"
             "try:\n s.connect(('127.0.0.1', int(sys.argv[1])))\nexcept OSError as e:\n print('refused', e)\n"
             "else:\n print('connected')\n")  # fmt: skip
    for account in ("cl-alice", stack.tracking.account(stack.config.team("ocean"))):
        done = subprocess.run(["/usr/bin/python3", "-c", probe, str(stack.prometheus.port)], user=account,
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        assert done.stdout.startswith("refused"), (account, done.stdout, done.stderr)
    with socket.create_connection(("127.0.0.1", stack.prometheus.port), timeout=5):
        pass  # root (the operator) still gets in


def test_prometheus_comes_back_after_a_kill_and_stops_when_turned_off(stack: LocalBackend) -> None:
    record = stack.procs.running(NAME)
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)

    def back() -> bool:
        now = stack.procs.running(NAME)
        return now is not None and now.pid != record.pid and stack.prometheus.healthy()

    t0 = time.monotonic()
    wait_until(back, 60, what="prometheus restarted by the supervisor")
    print(f"prometheus back {time.monotonic() - t0:.1f} s after SIGKILL")
    monitoring = dataclasses.replace(stack.config.monitoring, enabled=False)
    off = LocalBackend(dataclasses.replace(stack.config, monitoring=monitoring))
    off.up()
    assert off.procs.running(NAME) is None and NAME not in {r.name for r in off.status()}
    assert (off.prometheus.home / "data").is_dir()  # its samples are kept
