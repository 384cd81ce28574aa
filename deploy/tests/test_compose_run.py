"""The compose deployment, run: `cubelab render compose` output brought up with podman-compose (no Docker engine
here) and platform_tests/ run unchanged inside it by the platform-tests service.

Two departures from `docker compose up`, both because of what this machine has: Postgres and SeaweedFS are
stand-in images built here (deploy/tests/standins: no registry), and podman 4.3 cannot wait on healthchecks, so
`depends_on` is removed from the file it runs and this test starts the services in the order the conditions
give, waiting for each healthcheck (run by hand: podman's timers need systemd). The users' image is
images/notebook built with KERNEL_ENVS=venv (docker-stacks' base and conda-forge are not reachable: the same
kernels at the same prefixes, from the lock files), started by the hub's DockerSpawner through podman's Docker API,
so the hub tests of platform_tests (login, spawn, a kernel logging to the team's server, isolation, TensorBoard,
team choice) run for real, and each kernel runs its framework in a user's container (nested.COMPOSE_SUITE; the
notebooks and model training run once, on the embedded stack).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import compose_project  # deploy/tests/compose_project.py
import nested  # deploy/tests/nested.py
import podman_images as containers  # deploy/tests/podman_images.py
import pytest

from cubelab.backends import compose
from platform_tests import probes
from platform_tests.hubclient import login

ROOT = Path(__file__).resolve().parents[2]
# The Dask gateway's limits that platform_tests/test_gateway.py can reach in a test (the root conftest's, for the
# embedded stack): a member of ocean may run 3 workers in all, 2 per cluster; land's clusters stop after 20 s idle.
GATEWAY_LIMITS = {
    "ocean": {"max_workers_per_cluster": 2, "max_workers_per_user": 3, "max_clusters_per_user": 2},
    "land": {"idle_timeout_seconds": 20},
}


def with_gateway(config: dict[str, Any], project: Path) -> None:
    config["dask_gateway"] = {"enabled": True}
    for team in config["teams"]:
        team["dask_gateway"] = GATEWAY_LIMITS[team["name"]]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with compose_project.up(tmp_path_factory, with_gateway) as project:
        yield project


def test_platform_tests_pass_against_the_compose_deployment(deployment: Path) -> None:
    suite = " ".join(nested.COMPOSE_SUITE)
    command = ("python3 -m cubelab.provision describe /tmp/d.json && "
               f"CUBELAB_DEPLOYMENT=/tmp/d.json pytest -p no:cacheprovider --color=no -q -rs {suite}")  # fmt: skip
    done = compose_project.podman_compose(
        deployment, "run", "--rm", "platform-tests", "bash", "-c", command, timeout=1200
    )
    out = done.stdout + done.stderr
    print("\n".join(line for line in out.splitlines() if "SKIPPED" in line or " passed" in line))
    nested.check_run(out, done.returncode, "compose")


def test_hub_of_the_compose_deployment_serves_the_teams(deployment: Path) -> None:
    import requests

    env = compose.read_env(deployment / ".env")
    hub = f"http://127.0.0.1:{env['CUBELAB_HTTP_PORT']}"
    admin = {"Authorization": f"token {env['CUBELAB_ADMIN_TOKEN']}"}
    groups = requests.get(f"{hub}/hub/api/groups", headers=admin, timeout=10)
    assert {g["name"]: sorted(g["users"]) for g in groups.json()} == {"ocean": ["alice", "bob"],
                                                                      "land": ["bob", "carol"]}  # fmt: skip
    # A user logs in with the first password from .env (hashed by the provision service into the hub's volume).
    _, login_page = login(hub, "alice", env["USER_ALICE_PASSWORD"])
    assert login_page.status_code == 302, login_page.text[:300]
    # The team's tracking server through the hub's proxy, with the member's token.
    token = requests.post(f"{hub}/hub/api/users/alice/tokens", headers=admin, json={"expires_in": 300}, timeout=10)
    bearer = {"Authorization": f"Bearer {token.json()['token']}"}
    search = requests.post(f"{hub}/services/mlflow-ocean/api/2.0/mlflow/experiments/search", timeout=10,
                           headers=bearer, json={"max_results": 1})  # fmt: skip
    assert search.status_code == 200, search.text[:300]


def _listening(container: str) -> set[int]:
    """TCP ports the container listens on, read from its own /proc (so a server a later release adds shows)."""
    out = containers.podman("exec", container, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout
    return {int(f[1].rsplit(":", 1)[1], 16) for line in out.splitlines()[1:] if len(f := line.split()) > 3
            and f[3] == "0A"}  # fmt: skip


def _addresses(container: str) -> dict[str, str]:
    """network name -> the container's address on it."""
    out = containers.podman("inspect", container, "--format", "{{json .NetworkSettings.Networks}}").stdout
    return {name: net["IPAddress"] for name, net in json.loads(out).items()}


def _probe(network: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    code = probes.reach([f"{host}:{port}" for host, port in targets])
    done = containers.podman("run", "--rm", "--network", network, "localhost/cubelab/notebook:test",
                             "python3", "-c", code, timeout=300)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def _relay_diagnosis(store: str, relay: str) -> str:
    """What to read when the S3 API does not answer through the relay: its log, the store's state and address
    now, what the relay resolves the store's name to, and whether it reaches that address itself."""
    state = containers.podman("inspect", store, "--format", "{{.State.Status}} started {{.State.StartedAt}} "
                              "restarts {{.RestartCount}}", check=False).stdout.strip()  # fmt: skip
    check = (
        "import socket; a = socket.getaddrinfo('s3-store', 8333, type=socket.SOCK_STREAM); print(a)\n"
        "for *_, addr in a:\n s = socket.socket(); s.settimeout(5)\n"
        " try: s.connect(addr); print(addr, 'connects')\n except OSError as e: print(addr, repr(e))"
    )
    probe = containers.podman("exec", relay, "python3", "-c", check, check=False)
    logs = containers.podman("logs", "--tail", "20", relay, check=False)
    return (
        f"store: {state}, addresses {_addresses(store)}\nfrom the relay: {probe.stdout}{probe.stderr[-500:]}\n"
        f"relay log:\n{logs.stdout}{logs.stderr}"
    )


def test_users_containers_reach_the_s3_api_and_no_other_storage_port(deployment: Path) -> None:
    """From the users' network, by address (not only by name): every port SeaweedFS listens on is out of reach,
    and the relay listens on the S3 API port only. The same probe from the storage network reaches the filer,
    so the probe can tell an open port from a closed one."""
    store, relay = f"{deployment.name}_s3-store_1", f"{deployment.name}_s3_1"
    store_ports, relay_ports = _listening(store), _listening(relay)
    assert relay_ports == {8333}, relay_ports
    assert {8333, 9333, 8888, 18888} <= store_ports, store_ports
    store_ip = next(iter(_addresses(store).values()))
    relay_ip = _addresses(relay)["cubelab-users"]
    targets = [(store_ip, p) for p in sorted(store_ports)] + [(relay_ip, 8333), ("s3", 8333)]
    from_users = _probe("cubelab-users", targets)
    api = {f"{relay_ip}:8333": "answered", "s3:8333": "answered"}
    # The S3 API must answer through the relay (by address and by name). That is the positive control; on a
    # loaded machine a first answer can be late, so it gets two more tries (the closed ports get none).
    for _ in range(2):
        if {k: from_users[k] for k in api} == api:
            break
        time.sleep(5)
        from_users |= _probe("cubelab-users", [(relay_ip, 8333), ("s3", 8333)])
    assert {k: from_users.pop(k) for k in api} == api, f"{from_users}\n{_relay_diagnosis(store, relay)}"
    assert all(v not in probes.REACHED for v in from_users.values()), from_users
    storage_network = next(iter(_addresses(store)))
    from_inside = _probe(storage_network, [(store_ip, 8888)])
    assert from_inside == {f"{store_ip}:8888": "answered"}


def test_backup_service_backs_up_and_restores_the_compose_deployment(deployment: Path) -> None:
    """What README and docs/operations.md tell compose operators to run: a backup into the backups volume, then,
    with the servers stopped, a restore of it; the deployment serves again afterwards. Last in this module:
    it stops and starts the servers."""
    env = compose.read_env(deployment / ".env")

    def maintenance(*args: str) -> str:
        done = compose_project.podman_compose(deployment, "--profile", "maintenance", "run", "--rm", *args,
                                              timeout=600)  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-3000:]
        assert env["POSTGRES_PASSWORD"] not in out and env["TEAM_OCEAN_DB_PASSWORD"] not in out
        return out

    out = maintenance("backup")
    assert "databases dumped: hub and 2 team(s)" in out and "complete" in out, out[-2000:]
    servers = ["tracking-ocean", "tracking-land", "hub"]
    assert compose_project.podman_compose(deployment, "stop", *servers).returncode == 0
    out = maintenance("backup", "restore", "/backups", "--force")
    assert "hub database and users' password hashes restored" in out and "complete" in out, out[-2000:]
    assert compose_project.podman_compose(deployment, "start", *servers).returncode == 0
    for service in servers:
        compose_project.wait_healthy(f"{deployment.name}_{service}_1")
    hub = f"http://127.0.0.1:{env['CUBELAB_HTTP_PORT']}"
    _, page = login(hub, "alice", env["USER_ALICE_PASSWORD"])
    assert page.status_code == 302, page.text[:300]
