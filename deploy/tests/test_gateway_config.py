"""The Dask gateway's configuration, without starting it: config limits, the plan's hub service, role and users'
variables, the team options a member may choose, and the local backend's file ownership (pure logic; the
gateway itself runs in platform_tests/test_gateway.py)."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dask_gateway_server.options import Options
from traitlets.config import Config

from cubelab import plan
from cubelab.config import ConfigError, PlatformConfig, parse
from cubelab.gateway import backend, configure
from cubelab.gateway.options import GIB, TeamOptions
from cubelab.hub import render

CONFIG = """\
users: [{name: alice}, {name: bob}, {name: carol}, {name: dave, admin: true}]
teams:
  - {name: ocean, members: [alice, bob]}
  - name: land
    members: [bob, carol]
    dask_gateway: {worker_cores_max: 4, worker_memory_gib_max: 8, max_workers_per_cluster: 8, max_workers_per_user: 8}
dask_gateway:
  enabled: true
  clusters: {idle_timeout_seconds: 600}
"""


def config_of(text: str = CONFIG) -> PlatformConfig:
    return parse(textwrap.dedent(text), Path("/cfg/cubelab.yaml"))


def test_team_limits_take_the_defaults_and_the_teams_own_values() -> None:
    config = config_of()
    ocean, land = config.teams
    assert ocean.dask.idle_timeout_seconds == land.dask.idle_timeout_seconds == 600
    assert (ocean.dask.worker_cores_max, land.dask.worker_cores_max) == (2, 4)
    assert config.ports.reserved()[config.ports.dask_gateway + 2] == "ports.dask_gateway"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("dask_gateway: {clusters: {worker_cores: 3}}", "worker_cores 3 is not between"),
        ("dask_gateway: {clusters: {max_workers_per_cluster: 9}}", "more than max_workers_per_user 8"),
        ("dask_gateway: {clusters: {idle_timeout_seconds: -1}}", "idle_timeout_seconds"),
        ("dask_gateway: {clusters: {workers: 2}}", "workers"),
    ],
)
def test_contradicting_limits_are_refused(section: str, expected: str) -> None:
    text = "users: [{name: alice}]\nteams: [{name: ocean, members: [alice]}]\n" + section + "\n"
    with pytest.raises(ConfigError, match=expected):
        config_of(text)


def test_a_teams_own_limits_are_checked_too() -> None:
    text = "users: [{name: a}]\nteams: [{name: ocean, members: [a], dask_gateway: {worker_memory_gib: 9}}]\n"
    with pytest.raises(ConfigError, match="team 'ocean': worker_memory_gib 9"):
        config_of(text)


def test_the_hub_registers_the_gateway_and_lets_every_team_in() -> None:
    config = config_of()
    addr = plan.local_addresses(config, {"ocean": 15100, "land": 15101}, "/run/pg")
    files = plan.HubFiles(templates="t", passwords="p", client_secret="s")
    settings = plan.hub_settings(config, addr, files)
    service = next(s for s in settings["services"] if s["name"] == render.GATEWAY_SERVICE)
    assert service["url"] == f"http://127.0.0.1:{config.ports.dask_gateway}"
    role = next(r for r in settings["load_roles"] if r["name"] == "dask-gateway-users")
    assert role == {"name": "dask-gateway-users", "description": role["description"],
                    "scopes": ["access:services!service=dask-gateway"], "groups": ["ocean", "land"]}  # fmt: skip
    # Every session of a team can find the gateway and starts clusters for that team by default.
    env = settings["team_env"]["land"]
    assert env["DASK_GATEWAY__ADDRESS"] == f"{config.embedded_public_url}/services/dask-gateway"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == f"gateway://127.0.0.1:{config.ports.dask_gateway_tls}"
    assert env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    assert env["DASK_GATEWAY__CLUSTER__OPTIONS__TEAM"] == "land"


def test_without_the_gateway_nothing_of_it_is_rendered() -> None:
    config = config_of(CONFIG.replace("enabled: true", "enabled: false"))
    addr = plan.local_addresses(config, {"ocean": 15100, "land": 15101}, "/run/pg")
    settings = plan.hub_settings(config, addr, plan.HubFiles(templates="t", passwords="p", client_secret="s"))
    assert not [s for s in settings["services"] if s["name"] == render.GATEWAY_SERVICE]
    assert not [r for r in settings["load_roles"] if "dask" in r["name"]]
    assert not [k for k in settings["team_env"]["ocean"] if k.startswith("DASK_GATEWAY")]


def test_the_gateway_settings_hold_references_not_secrets() -> None:
    config = config_of()
    settings = plan.gateway_settings(config, plan.local_addresses(config, {"ocean": 15100, "land": 15101}, "/run/pg"))
    assert settings["api_token"] == plan.ref(plan.GATEWAY_TOKEN)
    assert settings["db_key"] == plan.ref(plan.GATEWAY_DB_KEY)
    ocean = settings["teams"]["ocean"]["environment"]
    assert ocean["AWS_SECRET_ACCESS_KEY"] == "$(TEAM_OCEAN_S3_SECRET_KEY)"
    assert ocean["S3_USER_STORAGE_BUCKET"] == "cubelab-ocean"
    assert "MLFLOW_TRACKING_URI" not in ocean  # workers get the team's storage, not a tracking identity


def team_options() -> TeamOptions:
    config = config_of()
    settings = plan.gateway_settings(config, plan.local_addresses(config, {"ocean": 15100, "land": 15101}, "/run/pg"))
    return TeamOptions(settings["teams"])


def user(name: str, *groups: str) -> Any:
    return SimpleNamespace(name=name, groups=set(groups), admin=False)


def test_a_member_of_two_teams_chooses_within_the_chosen_teams_bounds() -> None:
    options = team_options()(user("bob", "ocean", "land", "not-a-team"))
    spec = {f["field"]: f for f in options.get_specification()}
    assert spec["team"]["spec"]["options"] == ["land", "ocean"]
    assert spec["worker_cores"]["spec"]["max"] == 4  # land's bound: the widest of bob's teams
    land = options.get_configuration({"team": "land", "worker_cores": 4, "worker_memory": 8.0}, user("bob", "land"))
    assert land["worker_cores"] == 4 and land["worker_memory"] == 8 * GIB and land["cluster_max_workers"] == 8
    assert land["environment"]["S3_USER_STORAGE_BUCKET"] == "cubelab-land"
    with pytest.raises(ValueError, match="team ocean: worker_cores must be between 1 and 2, not 4"):
        options.get_configuration({"team": "ocean", "worker_cores": 4, "worker_memory": 2.0},
                                  user("bob", "ocean", "land"))  # fmt: skip


def test_no_team_no_cluster_and_no_other_teams_cluster() -> None:
    with pytest.raises(ValueError, match="dave is in no team"):
        team_options()(user("dave"))
    options: Options = team_options()(user("carol", "land"))
    with pytest.raises(ValueError, match="not a valid option"):
        options.parse_options({"team": "ocean"})
    # The handler checks membership again, whatever the fields let through.
    with pytest.raises(ValueError, match="carol is not a member of team 'ocean'"):
        team_options().configure(SimpleNamespace(team="ocean", worker_cores=1, worker_memory=2.0), user("carol"))


def test_the_gateway_config_maps_the_settings_to_traits() -> None:
    config = config_of()
    settings = plan.gateway_settings(config, plan.local_addresses(config, {"ocean": 15100, "land": 15101}, "/run/pg"))
    settings |= {"api_address": "127.0.0.1:18102", "db_url": "sqlite:////x.sqlite", "backend": {
        "account_prefix": "cl-", "clusters_dir": "/c", "inherited_environment": ["PATH"],
        "scheduler_cmd": ["/k/dask", "scheduler"], "worker_cmd": ["/k/dask", "worker"]}}  # fmt: skip
    c = Config()
    configure.apply(c, settings)
    assert c.JupyterHubAuthenticator.jupyterhub_service_name == "dask-gateway"
    assert c.Proxy.prefix == "/services/dask-gateway"
    assert c.TeamLocalBackend.api_url == "http://127.0.0.1:18102/api"  # heartbeats skip the proxy
    assert c.TeamLocalBackend.account_prefix == "cl-"
    assert c.TeamClusterConfig.worker_cmd == ["/k/dask", "worker"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_only_the_clusters_working_folder_changes_owner(tmp_path: Path) -> None:
    """dask-gateway's own list mixes single characters of the certificate paths in ("/", "t", ...). And a link
    in the folder (which its owner could plant) is given away itself, never what it points at."""
    workdir = tmp_path / "cluster"
    (workdir / ".certs").mkdir(parents=True)
    (workdir / ".certs" / "dask.crt").write_text("c")
    outside = tmp_path / "root-only"
    outside.write_text("r")
    (workdir / "logs").symlink_to(outside)
    paths = [str(workdir), str(workdir / ".certs")]
    paths.extend(str(workdir / ".certs" / "dask.crt"))  # what LocalBackend passes
    local = backend.TeamLocalBackend(account_prefix="cl-")
    local.account = lambda name: SimpleNamespace(pw_uid=4242, pw_gid=4243)  # type: ignore[method-assign]
    local.set_file_permissions(paths, "alice")
    owners = {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in [workdir, *workdir.rglob("*")]}
    assert owners == dict.fromkeys(["cluster", ".certs", "dask.crt", "logs"], (4242, 4243))
    assert (outside.stat().st_uid, outside.stat().st_gid) == (0, 0)
    assert (tmp_path.stat().st_uid, Path("/").stat().st_uid) == (0, 0)


def test_schedulers_and_workers_start_without_a_dashboard() -> None:
    local = backend.TeamLocalBackend(account_prefix="cl-")
    cluster = SimpleNamespace(config=backend.TeamClusterConfig(scheduler_cmd=["dask", "scheduler"],
                                                               worker_cmd=["dask", "worker"]),
                              scheduler_address="tls://127.0.0.1:1")  # fmt: skip
    for argv in (local.get_scheduler_command(cluster), local.get_worker_command(cluster, "w1")):
        assert argv.count("--no-dashboard") == 1 and argv[argv.index("--dashboard-address") + 1] == "127.0.0.1:0"
    plain = backend.TeamLocalBackend(api_url="http://127.0.0.1:1/api")  # no account switch: no account lookup
    env = plain.get_env(SimpleNamespace(config=cluster.config, name="c", token="t", username="alice"))
    assert env["DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"] == env["DASK_DISTRIBUTED__WORKER__HTTP__ROUTES"] == "[]"


def test_a_schedulers_dashboard_takes_a_free_closed_port_and_checks_it_got_it() -> None:
    """With dashboard ports: the scheduler's dashboard on loopback at the first port no other running cluster
    has and nothing listens on, with the preload that stops it elsewhere; workers still serve nothing."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        free = [taken + 1, taken + 2] if taken < 65000 else [taken - 2, taken - 1]
        local = backend.TeamLocalBackend(dashboard_ports=[taken, *free], dashboard_check="/p/check.py",
                                         api_url="http://127.0.0.1:1/api")  # fmt: skip
        config = backend.TeamClusterConfig(scheduler_cmd=["dask", "scheduler"], worker_cmd=["dask", "worker"])
        running = SimpleNamespace(name="other", config=config, dashboard_address=f"http://127.0.0.1:{free[0]}")
        local.db = SimpleNamespace(list_clusters=lambda: [running])  # type: ignore[assignment]
        cluster = SimpleNamespace(name="mine", config=config, scheduler_address="tls://127.0.0.1:1", token="t",
                                  username="alice", dashboard_address="")  # fmt: skip
        argv = local.get_scheduler_command(cluster)
        assert argv[argv.index("--dashboard-address") + 1] == f"127.0.0.1:{free[1]}"
        assert "--no-dashboard" not in argv and argv[-2:] == ["--preload", "/p/check.py"]
        env = local.get_env(cluster)
        assert env[backend.DASHBOARD_PORT_VAR] == str(free[1])
        assert "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES" not in env
        assert env["DASK_DISTRIBUTED__WORKER__HTTP__ROUTES"] == "[]"
        assert "--no-dashboard" in local.get_worker_command(cluster, "w1")
        third = SimpleNamespace(
            name="third", config=config, scheduler_address="tls://127.0.0.1:1", token="t", username="bob"
        )
        local.db = SimpleNamespace(list_clusters=lambda: [running, cluster])  # type: ignore[assignment]
        # Every port taken (an account may bind them all): the cluster starts all the same, without a dashboard.
        argv = local.get_scheduler_command(third)
        assert "--no-dashboard" in argv and "/p/check.py" not in argv
        assert local.get_env(third)["DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"] == "[]"


def test_the_dashboard_check_stops_a_dashboard_that_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its HTTP server only: the scheduler serves on (whoever took the port must not stop the cluster)."""
    from cubelab.gateway import dashboard_check

    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)

    def scheduler(port: int) -> SimpleNamespace:
        sock = SimpleNamespace(getsockname=lambda: ("127.0.0.1", port))
        server = SimpleNamespace(_sockets={1: sock}, stopped=False)
        server.stop = lambda: setattr(server, "stopped", True)
        return SimpleNamespace(http_server=server)

    monkeypatch.setenv(dashboard_check.PORT_VAR, "18120")
    good = scheduler(18120)
    dashboard_check.dask_setup(good)
    assert not good.http_server.stopped and exits == []
    moved = scheduler(40000)
    dashboard_check.dask_setup(moved)
    assert moved.http_server.stopped and exits == []


def test_the_gateway_reads_the_plans_variable_of_handed_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend.LISTEN_FDS_VAR is the plan's (spelled out there: the gateway image lacks the plan's dependencies)."""
    assert backend.LISTEN_FDS_VAR == plan.LISTEN_FDS_VAR
    monkeypatch.setenv(plan.LISTEN_FDS_VAR, "18120=7,18121=8,x=9")
    assert backend.held_sockets() == {18120: 7, 18121: 8}
