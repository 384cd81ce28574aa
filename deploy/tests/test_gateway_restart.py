"""The embedded Dask gateway under its supervisor: killed with SIGKILL while a member's cluster runs, it comes back
with no command run, finds the cluster again in its database, and the cluster keeps computing for its owner;
`cubelab down` leaves no scheduler or worker behind."""

from __future__ import annotations

import os
import pwd
import re
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
from dask_gateway import Gateway
from dask_gateway.auth import JupyterHubAuth
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab.backends.local.gateway import FRONT_NAME, NAME
from cubelab.backends.local.stack import LocalBackend
from cubelab.procs import marked_processes, wait_until


@pytest.fixture(scope="module")
def stack(stacks: ScratchStacks) -> LocalBackend:
    config = stacks.config(teams=[{"name": "ocean", "members": ["alice"]}], users=["alice"],
                           dask_gateway={"enabled": True})  # fmt: skip
    backend = stacks.backend(config)
    backend.up()
    return backend


@pytest.fixture
def gateway(stack: LocalBackend) -> Iterator[Gateway]:
    found = stack.gateway.description()
    client = Gateway(address=found["address"], proxy_address=found["proxy_address"],
                     auth=JupyterHubAuth(api_token=stack.hub.issue_token("alice")))  # fmt: skip
    yield client
    client.close()


def cluster_processes(stack: LocalBackend) -> list[psutil.Process]:
    """This stack's schedulers and workers (they inherit its CUBELAB_STACK marker from the gateway)."""
    out = []
    for proc in marked_processes(str(stack.paths.root)):
        try:
            if proc.cmdline()[2:3] in (["scheduler"], ["worker"]):  # python .../dask scheduler|worker ...
                out.append(proc)
        except psutil.Error:
            continue
    return out


def test_a_killed_gateway_comes_back_and_finds_its_running_cluster(stack: LocalBackend, gateway: Gateway) -> None:
    cluster = gateway.new_cluster(team="ocean", shutdown_on_close=False)  # left running for `down` below
    cluster.scale(1)
    client = cluster.get_client()
    client.wait_for_workers(1, timeout=120)
    assert client.submit(lambda: 41 + 1).result() == 42
    old = stack.procs.running(NAME)
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)
    t0 = time.monotonic()

    def back() -> bool:
        new = stack.procs.running(NAME)
        return new is not None and new.pid != old.pid and stack.gateway.healthy()

    wait_until(back, 60, what="the gateway's restart by the supervisor")
    print(f"gateway serving again {time.monotonic() - t0:.1f} s after SIGKILL")
    assert [(c.name, c.status.name) for c in gateway.list_clusters()] == [(cluster.name, "RUNNING")]
    assert client.submit(lambda: 1 + 1).result() == 2  # the connected client never noticed
    again = gateway.connect(cluster.name).get_client()
    assert again.submit(lambda: 2 + 1).result() == 3  # and a new connection goes through the new proxy
    again.close()
    assert cluster_processes(stack), "no scheduler or worker of this stack found: the check below would be empty"
    client.close()
    cluster.close()


def test_the_front_runs_as_its_own_account_and_alone_passes_the_closed_ports(stack: LocalBackend) -> None:
    """cubelab's front holds the gateway's hub token: its own account, not root; the firewall chain over the
    gateway's own proxy and the dashboards' ports lets through root (the gateway) and that account only."""
    record = stack.procs.running(FRONT_NAME)
    assert record is not None and stack.gateway.front_healthy()
    uid = psutil.Process(record.pid).uids().real
    if os.geteuid() != 0:
        assert uid == os.geteuid()
        return
    assert uid != 0 and pwd.getpwuid(uid).pw_name == stack.gateway.front_account()
    rules = stack.gateway.guard.rules()
    for port in stack.gateway.closed_ports():
        allowed = re.findall(rf"--dport {port} -m owner --uid-owner (\d+) -j RETURN", rules)
        assert sorted(int(u) for u in allowed) == sorted([0, uid]), (port, rules[:500])
        assert f"--dport {port} -j REJECT" in rules


def test_down_leaves_no_scheduler_or_worker(stack: LocalBackend) -> None:
    stack.down()
    assert not [p.pid for p in cluster_processes(stack) if p.is_running()]
