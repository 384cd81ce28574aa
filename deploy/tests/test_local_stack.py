"""The embedded stack's life cycle against real services: up, status, apply, down, up again, failures."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import psycopg2
import pytest
import requests
import yaml
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab import smoke, storage
from cubelab.backends.local import sockets
from cubelab.backends.local.stack import LocalBackend
from cubelab.config import load
from cubelab.procs import StartError, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def pids(backend: LocalBackend) -> dict[str, int | None]:
    return {row.name: row.pid for row in backend.status()}


def stack_processes(state_dir: Path) -> list[psutil.Process]:
    """Every process of the stack (what `down` must leave none of): its state dir on the command line, or its
    CUBELAB_STACK marker in the environment (users' servers, the proxy)."""
    marker = f"CUBELAB_STACK={state_dir}".encode()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(state_dir) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
                continue
            with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                if marker in fh.read().split(b"\0"):
                    found.append(proc)
        except (psutil.NoSuchProcess, OSError):
            continue
    return found


@pytest.fixture(scope="module")
def stack(stacks: ScratchStacks) -> LocalBackend:
    backend = stacks.backend(stacks.config())
    backend.up()
    return backend


def test_up_brings_every_service_up_healthy(stack: LocalBackend) -> None:
    rows = stack.status()
    assert [(r.name, r.kind, r.team) for r in rows] == [
        ("sockets", "sockets", None),
        ("postgres", "postgres", None),
        ("s3", "s3", None),
        ("hub", "hub", None),
        ("mlflow-ocean", "tracking", "ocean"),
        ("mlflow-land", "tracking", "land"),
        ("supervisor", "supervisor", None),
    ]
    for row in rows:
        assert row.healthy, row
        assert row.pid and psutil.pid_exists(row.pid)
        assert row.rss_mb and row.rss_mb > 1
    ocean = rows[4]
    assert ocean.url.startswith("http://127.0.0.1:")
    # Tracking servers listen on loopback only.
    listening = [c for c in psutil.net_connections("tcp") if c.pid == ocean.pid and c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)


def test_the_newcomers_smoke_passes_and_a_wrong_password_stops_it_at_login(stack: LocalBackend) -> None:
    """`cubelab smoke` (what .ci/run runs after `make up`) on this stack, and the same with a password that is not
    the generated one: it must name the step that failed."""
    lines: list[str] = []
    smoke.run_smoke(stack.description(), progress=lines.append)
    assert sum(line.startswith("ok ") for line in lines) == 6, lines
    assert any("author alice" in line for line in lines), lines
    wrong = stack.description()
    for user in wrong["users"]:
        user["initial_password"] = "not-the-generated-one"
    with pytest.raises(smoke.SmokeError, match=r"^log in through the form: the login form was refused"):
        smoke.run_smoke(wrong, progress=lines.append)


def test_status_json_from_the_cli(stack: LocalBackend) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cubelab", "-c", str(stack.config.path), "status", "--json"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    keys = ("healthy", "kind", "name", "note", "pid", "restarts", "rss_mb", "team", "url")
    assert {tuple(sorted(s)) for s in services} == {keys}
    assert {s["name"]: s["team"] for s in services}["mlflow-land"] == "land"


def test_logs_command_shows_a_service_log(stack: LocalBackend) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cubelab", "-c", str(stack.config.path), "logs", "mlflow-ocean"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "starting mlflow-ocean" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "cubelab", "-c", str(stack.config.path), "logs", "nope"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "no such service" in bad.stderr


def test_secrets_are_private_and_not_in_logs_or_argv(stack: LocalBackend) -> None:
    secrets_dir = stack.paths.secrets
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    files = [p for p in secrets_dir.rglob("*") if p.is_file()]
    assert len(files) >= 3 + 3 * len(stack.config.teams)
    values = []
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        values.append(path.read_text().strip())
    logs = "".join(p.read_text(errors="replace") for p in stack.paths.logs.glob("*.log"))
    argv = " ".join(" ".join(r.argv) for r in stack.procs.all())
    for value in values:
        if len(value) > 20:  # the passwords and secret keys (access key ids are not secret)
            assert value not in logs and value not in argv


def test_tracking_servers_run_as_their_own_unprivileged_accounts(stack: LocalBackend) -> None:
    """Never root, and one account per team: a server cannot read another's environment (its database password
    and S3 keys) through /proc, nor the stack's secrets."""
    if os.geteuid() != 0:
        pytest.skip("accounts are made only when cubelab runs as root")
    uids = {}
    for team in stack.config.teams:
        record = stack.procs.running(team.service)
        assert record is not None
        uids[team.name] = psutil.Process(record.pid).uids().real
        gids = psutil.Process(record.pid).gids()
        assert 0 not in (gids.real, gids.effective), f"{team.service} runs in root's group"
    assert 0 not in uids.values() and len(set(uids.values())) == len(uids), uids
    ocean, land = stack.config.teams[0], stack.config.teams[1]
    land_pid = stack.procs.running(land.service).pid
    secret = next(stack.paths.secrets.rglob("*-secret-key"))
    for target in (secret, Path(f"/proc/{land_pid}/environ")):
        done = subprocess.run(["runuser", "-u", stack.tracking.account(ocean), "--", "cat", str(target)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode != 0 and not done.stdout, target


def test_storage_and_proxy_run_as_their_own_accounts(stack: LocalBackend) -> None:
    """SeaweedFS and the proxy run as their own accounts (the hub stays root: it starts each user's server as that
    user). SeaweedFS's unix sockets (its S3 API's, and those in its own /tmp) admit its account only, and its data
    is its own."""
    if os.geteuid() != 0:
        pytest.skip("accounts are made only when cubelab runs as root")
    weed = psutil.Process(stack.procs.running("s3").pid)
    hub = psutil.Process(stack.procs.running("hub").pid)
    proxies = [p for p in hub.children() if "configurable-http-proxy" in " ".join(p.cmdline())]
    assert len(proxies) == 1, [p.cmdline() for p in hub.children()]
    accounts = {"s3": weed.username(), "proxy": proxies[0].username()}
    assert accounts == {"s3": "clt-s3", "proxy": "clt-proxy"}, accounts
    for proc in (weed, proxies[0]):
        assert 0 not in (proc.gids().real, proc.gids().effective), f"{proc.name()} runs in root's group"
    assert hub.username() == "root"
    # Its unix sockets: the S3 API's, and those weed makes in its own /tmp (cubelab.netns).
    sockets = sorted({stack.s3.socket, *(stack.s3.home / "tmp").glob("*.sock")})
    assert len(sockets) > 1 and all(stat.S_ISSOCK(s.stat().st_mode) for s in sockets), sockets
    data = stack.s3.home / "data"
    assert data.stat().st_uid == weed.uids().real and stat.S_IMODE(stack.s3.home.stat().st_mode) == 0o700
    member = f"cl-{stack.config.teams[0].members[0]}"
    probes = [f"import os; os.listdir({str(data)!r})"] + [
        f"import socket; socket.socket(socket.AF_UNIX).connect({str(sock)!r})" for sock in sockets
    ]
    for probe in probes:
        done = subprocess.run(["runuser", "-u", member, "--", "/usr/bin/python3", "-c", probe],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode != 0 and "PermissionError" in done.stderr, (probe, done.stderr[-300:])


def test_postgres_listens_on_its_unix_socket_only(stack: LocalBackend) -> None:
    """No TCP port that another account could take while Postgres restarts; its socket's folder, and the one
    above, can be written by Postgres's account (or root) alone, so no other socket can take its place."""
    record = stack.procs.running("postgres")
    assert record is not None
    proc = psutil.Process(record.pid)
    connections = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections("inet")
    assert [c.laddr for c in connections if c.status == psutil.CONN_LISTEN] == []
    folder = stack.postgres.socket_dir
    assert stat.S_ISSOCK((folder / f".s.PGSQL.{stack.postgres.port}").stat().st_mode)
    owners = {0, os.geteuid(), psutil.Process(record.pid).uids().real}
    for place in (folder, folder.parent):
        st = place.stat()
        assert st.st_uid in owners and not st.st_mode & 0o022, (place, oct(st.st_mode), st.st_uid)


def test_no_storage_port_but_the_s3_api_is_on_the_machines_network(stack: LocalBackend) -> None:
    """As root, SeaweedFS runs in a network (and /tmp) of its own: whatever it listens on (read from the
    process, so a new internal port in a later release shows up here) is in that network, and on the machine's
    loopback only ports.s3 listens, held by the stack's socket holder."""
    if os.geteuid() != 0:
        pytest.skip("weed is isolated only when cubelab runs as root")
    record = stack.procs.running("s3")
    assert record is not None
    weed = next(p for p in [record, *record.children(recursive=True)] if p.name() == "weed")
    assert os.readlink(f"/proc/{weed.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    inside = set()  # weed's listening ports, in its own network's table (psutil reads this process's)
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{weed.pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                inside.add(int(local.rsplit(":", 1)[1], 16))
    assert stack.s3.port in inside and len(inside) > 5, inside
    on_host = {c.laddr.port: c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    holder = stack.procs.running("sockets")
    assert holder is not None and on_host.get(stack.s3.port) == holder.pid
    assert not (inside - {stack.s3.port}) & set(on_host), sorted((inside - {stack.s3.port}) & set(on_host))
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{stack.s3.port + 3}.sock")), "weed's sockets in the shared /tmp"


def test_team_database_is_reachable_only_by_its_own_role(stack: LocalBackend) -> None:
    ocean, land = stack.config.teams
    password = stack.tracking.db_password(ocean)
    server = {"host": str(stack.postgres.socket_dir), "port": stack.postgres.port, "user": ocean.role,
              "password": password}  # fmt: skip
    with psycopg2.connect(dbname=ocean.database, **server) as conn:
        conn.cursor().execute("SELECT 1")
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        psycopg2.connect(dbname=land.database, **server)


def test_second_up_is_idempotent_and_quick(stack: LocalBackend) -> None:
    before = pids(stack)
    t0 = time.monotonic()
    stack.up()
    elapsed = time.monotonic() - t0
    assert pids(stack) == before
    assert elapsed < 10, f"a second up took {elapsed:.1f} s"


def as_member(backend: LocalBackend, team: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Act as the team's first member for the rest of the test (mlflow sends MLFLOW_TRACKING_TOKEN; monkeypatch
    restores the environment afterwards); the tracking URI."""
    member = backend.config.team(team).members[0]
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", backend.hub.issue_token(member))
    return backend.tracking.url(backend.config.team(team))


def _log_something(tracking_uri: str, name: str) -> tuple[str, str]:
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.set_experiment(name)
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.log_param("alpha", 0.5)
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_text("hello cube", "notes/readme.txt")
    client = mlflow.MlflowClient(tracking_uri)
    client.create_registered_model(f"{name}-model")
    client.create_model_version(f"{name}-model", f"runs:/{run.info.run_id}/notes", run.info.run_id)
    return exp.experiment_id, run.info.run_id


def _check_something(tracking_uri: str, name: str, run_id: str) -> None:
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params == {"alpha": "0.5"}
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/readme.txt") == "hello cube"
    assert client.get_registered_model(f"{name}-model").latest_versions[0].run_id == run_id


def test_status_usage_counts_each_teams_storage(stack: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {u["team"]: u for u in stack.usage()}
    assert set(before) == {"ocean", "land"} and all(u["database_bytes"] > 1_000_000 for u in before.values())
    _log_something(as_member(stack, "ocean", monkeypatch), f"usage-{time.time_ns()}")
    after = {u["team"]: u for u in stack.usage()}
    assert after["ocean"]["bucket_objects"] == before["ocean"]["bucket_objects"] + 1  # notes/readme.txt
    assert after["ocean"]["bucket_bytes"] == before["ocean"]["bucket_bytes"] + len("hello cube")
    assert after["land"] == before["land"]  # another team's logging is not counted as land's
    done = subprocess.run([sys.executable, "-m", "cubelab", "-c", str(stack.config.path), "status", "--usage",
                           "--json"], capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {u["team"]: u["bucket_objects"] for u in json.loads(done.stdout)["usage"]} == {
        t: u["bucket_objects"] for t, u in after.items()}  # fmt: skip
    text = subprocess.run([sys.executable, "-m", "cubelab", "-c", str(stack.config.path), "status", "--usage"],
                          capture_output=True, text=True, check=False, timeout=120).stdout  # fmt: skip
    assert "BUCKET MB" in text and any(line.startswith("ocean ") for line in text.splitlines())


def test_gc_removes_what_members_deleted_and_nothing_else(stack: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = as_member(stack, "ocean", monkeypatch)
    client = mlflow.MlflowClient(uri)
    tag = time.time_ns()

    def run_with_file(experiment: str) -> str:
        exp = client.create_experiment(f"gc-{experiment}-{tag}")
        run = client.create_run(exp).info.run_id
        client.log_metric(run, "loss", 0.5)
        client.log_text(run, "to be collected", "notes/gc.txt")
        return run

    kept, deleted = run_with_file("kept"), run_with_file("deleted")
    in_deleted_experiment = run_with_file("whole")
    client.delete_run(deleted)
    client.delete_experiment(client.get_run(in_deleted_experiment).info.experiment_id)
    before = {u["team"]: u for u in stack.usage()}

    def gc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cubelab", "-c", str(stack.config.path), "gc", *args],
                              capture_output=True, text=True, check=False, timeout=600)  # fmt: skip

    young = gc("--team", "ocean", "--older-than", "1")  # deleted a moment ago: kept
    assert young.returncode == 0, young.stderr
    assert "team ocean: 0 run(s) and 0 experiment(s)" in young.stdout
    assert client.get_run(deleted).info.lifecycle_stage == "deleted"
    done = gc("--team", "ocean")
    assert done.returncode == 0, done.stderr
    assert "team ocean: 2 run(s) and 1 experiment(s) permanently deleted" in done.stdout, done.stdout
    for gone in (deleted, in_deleted_experiment):
        with pytest.raises(mlflow.exceptions.MlflowException, match=r"RESOURCE_DOES_NOT_EXIST|not found"):
            client.get_run(gone)
    assert client.get_run(kept).data.metrics == {"loss": 0.5}
    mlflow.set_tracking_uri(uri)
    assert mlflow.artifacts.load_text(f"runs:/{kept}/notes/gc.txt") == "to be collected"
    after = {u["team"]: u for u in stack.usage()}
    assert after["ocean"]["bucket_objects"] == before["ocean"]["bucket_objects"] - 2  # the two runs' files
    assert after["land"] == before["land"]
    unknown = gc("--team", "nosuch")
    assert unknown.returncode == 2 and "no team 'nosuch'" in unknown.stderr


def _apply(path: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "cubelab", "-c", str(path), "apply"],
                          capture_output=True, text=True, check=False, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_apply_with_a_new_team_leaves_other_teams_untouched(
    stack: LocalBackend, stacks: ScratchStacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = stack.config.path.read_text()
    try:
        _apply_a_new_team(stack, stacks, monkeypatch)
    finally:
        # The module's stack goes back to its config for the tests after this one; apply removes the team.
        stack.config.path.write_text(original)
        _apply(stack.config.path)
    back = stacks.backend(load(stack.config.path))
    assert "mlflow-ice" not in {r.name for r in back.status()} and back.procs.get("mlflow-ice") is None
    assert "bob" in back.hub.api("GET", "/groups/ocean")["users"]


def _apply_a_new_team(stack: LocalBackend, stacks: ScratchStacks, monkeypatch: pytest.MonkeyPatch) -> None:
    ocean_uri = as_member(stack, "ocean", monkeypatch)
    _, run_id = _log_something(ocean_uri, "before-apply")
    before = pids(stack)

    doc = yaml.safe_load(stack.config.path.read_text())
    doc["teams"].append({"name": "ice", "members": ["dave"]})
    doc["teams"][0]["members"].remove("bob")  # a member leaves ocean: the hub group must follow
    stack.config.path.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = _apply(stack.config.path)
    assert "mlflow-ice ready" in done.stdout

    grown = stacks.backend(load(stack.config.path))
    after = pids(grown)
    for name, pid in before.items():
        if name != "hub":  # the hub restarts to register the new team's service; users' servers survive it
            assert after[name] == pid, f"{name} was restarted by apply"
    rows = {r.name: r for r in grown.status()}
    assert rows["mlflow-ice"].healthy and rows["hub"].healthy
    # Teams are hub groups, synced both ways.
    assert grown.hub.api("GET", "/groups/ice")["users"] == ["dave"]
    assert "bob" not in grown.hub.api("GET", "/groups/ocean")["users"]
    _check_something(as_member(grown, "ocean", monkeypatch), "before-apply", run_id)
    # The new team has its own bucket and identity, and works.
    ice_uri = as_member(grown, "ice", monkeypatch)
    _, ice_run = _log_something(ice_uri, "ice-first")
    _check_something(ice_uri, "ice-first", ice_run)


def test_a_membership_change_restarts_nothing(stack: LocalBackend, stacks: ScratchStacks) -> None:
    """Members joining or leaving go through the hub's API: no service restarts, the groups follow."""
    original = stack.config.path.read_text()
    before = pids(stack)
    doc = yaml.safe_load(original)
    doc["teams"][1]["members"].append("erin")  # erin joins land
    doc["teams"][0]["members"].remove("alice")  # alice leaves ocean
    doc["teams"][0]["admins"] = []
    try:
        stack.config.path.write_text(yaml.safe_dump(doc, sort_keys=False))
        _apply(stack.config.path)
        changed = stacks.backend(load(stack.config.path))
        assert pids(changed) == before
        assert "erin" in changed.hub.api("GET", "/groups/land")["users"]
        assert "alice" not in changed.hub.api("GET", "/groups/ocean")["users"]
    finally:
        stack.config.path.write_text(original)
        _apply(stack.config.path)
    assert pids(stack) == before and "alice" in stack.hub.api("GET", "/groups/ocean")["users"]


def test_down_stops_everything_and_up_brings_data_back(stack: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    from platform_tests.hubclient import UserServer

    backend = LocalBackend(load(stack.config.path))
    _, run_id = _log_something(as_member(backend, "ocean", monkeypatch), "persisted")
    user = backend.config.users[0].name
    UserServer(backend.hub.url, user, backend.hub.issue_token(user)).start()  # `down` must stop it too
    assert len(stack_processes(backend.paths.root)) > len(backend.procs.all())
    backend.down()
    assert all(row.pid is None and not row.healthy for row in backend.status())
    assert stack_processes(backend.paths.root) == []
    assert not list(backend.paths.run.glob("*.json"))

    backend.up()
    assert all(row.healthy for row in backend.status())
    _check_something(as_member(backend, "ocean", monkeypatch), "persisted", run_id)


def test_up_recovers_from_a_killed_hub_and_down_leaves_no_orphan(stack: LocalBackend) -> None:
    """A hub killed with SIGKILL leaves its proxy holding the hub's ports and its idle-culler running: `up` clears
    them and starts a new hub, and `down` stops the culler too (it carries the stack's marker)."""
    import signal

    backend = LocalBackend(load(stack.config.path))
    root = backend.paths.root
    backend.procs.stop("supervisor")  # it would bring the hub back before this test could look (test_supervisor)
    record = backend.procs.running("hub")
    assert record is not None
    culler = [p for p in stack_processes(root) if "jupyterhub_idle_culler" in " ".join(p.cmdline())]
    assert culler, "the idle-culler carries no stack marker: down cannot find it once the hub is gone"
    unused = backend.hub.issue_token("alice")  # not yet seen by the tracking server, so not cached
    os.kill(record.pid, signal.SIGKILL)
    psutil.Process(record.pid).wait(timeout=10) if psutil.pid_exists(record.pid) else None
    assert any("configurable-http-proxy" in " ".join(p.cmdline()) for p in stack_processes(root))  # the orphan
    # With the hub gone, membership cannot be checked: a 503 that clients retry, never a 401 they give up on.
    ocean = backend.config.team("ocean")
    url = f"{backend.tracking.url(ocean)}/api/2.0/mlflow/experiments/search?max_results=1"
    for _ in range(2):  # and the failure is not cached
        resp = requests.get(url, headers={"Authorization": f"Bearer {unused}"}, timeout=10)
        assert resp.status_code == 503 and resp.json()["error_code"] == "TEMPORARILY_UNAVAILABLE", resp.text
    backend.up()
    assert all(row.healthy for row in backend.status())
    assert requests.get(url, headers={"Authorization": f"Bearer {unused}"}, timeout=10).status_code == 200
    backend.down()
    assert stack_processes(root) == []
    backend.up()


def test_stock_mlflow_server_with_cubelab_app_enforces_team_auth(stack: LocalBackend) -> None:
    """`mlflow server --app-name cubelab` (how images run it) applies the same checks as the embedded launcher."""
    from cubelab.procs import free_tcp_port, http_ok, wait_until

    team = stack.config.team("ocean")
    venv = stack.paths.install / "services"
    env = stack.tracking.launch(team, venv).env
    store = env.pop("CUBELAB_BACKEND_STORE_URI")
    port = free_tcp_port()
    prefix = f"/services/{team.service}"
    cmd = [str(venv / "bin/mlflow"), "server", "--app-name", "cubelab", "--backend-store-uri", store,
           "--serve-artifacts", "--artifacts-destination", env["CUBELAB_ARTIFACTS_DESTINATION"],
           "--static-prefix", prefix, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}{prefix}"
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 90, what="mlflow server --app-name cubelab")
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(search, timeout=10).status_code == 401
        member = stack.hub.issue_token(team.members[0])
        outsider = stack.hub.issue_token(next(u.name for u in stack.config.users if u.name not in team.members))
        assert requests.get(search, headers={"Authorization": f"Bearer {member}"}, timeout=10).status_code == 200
        assert requests.get(search, headers={"Authorization": f"Bearer {outsider}"}, timeout=10).status_code == 403
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


# A local account (a member's kernel could run this) tries, every millisecond, to take the stack's ports and to
# put a unix socket where a service's is, and keeps whatever connection it gets, with what it sent.
SQUATTER = """
import json, os, socket, sys, time
ports, paths, decoys, seconds = (json.loads(a) for a in sys.argv[1:5])
got, heard, tries, listening = [], [], 0, []
for path in decoys:  # sockets a service of the stack might look for in the shared /tmp: made first, kept open
    u = socket.socket(socket.AF_UNIX)
    try:
        u.bind(path)
    except OSError:  # left there by a weed of an earlier run on these ports (before weed had a /tmp of its own)
        continue
    u.listen(); u.setblocking(False); listening.append(u)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    tries += 1
    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port)); s.listen(); s.settimeout(0.05)
        except OSError:
            s.close(); continue
        got.append(port)
        try:
            conn, _ = s.accept(); conn.settimeout(0.5); heard.append(conn.recv(65536).decode("latin-1"))
        except OSError:
            pass
    for path in paths:
        u = socket.socket(socket.AF_UNIX)
        try:
            u.bind(path); got.append(path)
        except OSError:
            pass
        u.close()
    for u in listening:
        try:
            conn, _ = u.accept(); heard.append("on " + u.getsockname())
        except OSError:
            pass
    time.sleep(0.001)
for u in listening:
    os.unlink(u.getsockname())
print(json.dumps({"got": got, "heard": heard, "tries": tries, "decoys": len(listening)}))
"""


def test_a_squatter_never_gets_a_port_or_a_credential_while_services_restart(stack: LocalBackend) -> None:
    """Issue 25: while the supervisor brings back a SIGKILLed tracking server, hub, Postgres and S3, and while `up`
    starts again a stopped tracking server and hub, another account races for every public port and socket of
    theirs. Clients keep sending tokens meanwhile. The account gets nothing, hears nothing, and every service is
    back with no command."""
    if os.geteuid() != 0:
        pytest.skip("without root there are no other accounts")
    import signal
    import threading

    backend = LocalBackend(load(stack.config.path))
    ocean = backend.config.team("ocean")
    ports = sorted(h.port for h in sockets.held(backend.paths.run))  # the very list the holder keeps
    assert backend.config.ports.hub in ports and backend.config.ports.s3 in ports, ports
    pg = backend.postgres
    paths = [
        str(pg.socket_dir / f".s.PGSQL.{pg.port}"),
        str(pg.socket_dir / "x"),
        str(backend.hub.hub_socket),
        str(backend.hub.proxy_socket("public")),
        str(backend.hub.proxy_socket("api")),
        str(backend.s3.socket),
    ]
    # weed's own sockets, in the /tmp every account shares (weed has its own: cubelab.netns)
    weed = storage.consecutive_ports(backend.s3.port)
    decoys = [f"/tmp/seaweedfs-{kind}-{port}.sock" for kind, port in (("s3", weed["s3"]), ("filer", weed["filer"]),
              ("filer-grpc", weed["filer"] + storage.GRPC_OFFSET))]  # fmt: skip
    squatter = subprocess.Popen(
        ["runuser", "-u", f"cl-{ocean.members[0]}", "--", "/usr/bin/python3", "-c", SQUATTER,
         *(json.dumps(x) for x in (ports, paths, decoys)), "40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    token = backend.hub.issue_token(ocean.members[0])
    stop = threading.Event()

    def clients() -> None:  # what a squatter on these ports would collect
        while not stop.is_set():
            for url, header in (
                (f"{backend.tracking.url(ocean)}/api/2.0/mlflow/experiments/search?max_results=1", f"Bearer {token}"),
                (f"{backend.hub.url}/hub/api/user", f"token {token}"),
            ):
                with contextlib.suppress(requests.RequestException):
                    requests.get(url, headers={"Authorization": header}, timeout=5)
            time.sleep(0.02)

    talker = threading.Thread(target=clients, daemon=True)
    talker.start()
    back: dict[str, float] = {}
    try:
        time.sleep(1)
        for name in (ocean.service, "hub", "postgres", "s3"):  # the supervisor restarts each
            record = backend.procs.running(name)
            assert record is not None, name
            t0 = time.monotonic()
            os.kill(record.pid, signal.SIGKILL)
            wait_until(lambda: all(r.healthy for r in backend.status()), 90, what=f"{name} back", interval=0.2)
            back[name] = round(time.monotonic() - t0, 1)
        with backend.procs.lock():  # `up` after a change: the old process stopped, a new one started
            backend.procs.stop(ocean.service)
            backend.procs.stop("hub")
        backend.up()
    finally:
        stop.set()
        talker.join(30)
    out, err = squatter.communicate(timeout=90)
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
    print(f"restarts (SIGKILL to healthy): {back}; squatter tries: {result.get('tries')}")
    assert result.get("tries", 0) > 1000, result
    assert result["got"] == [] and result["heard"] == [], result
    assert all(row.healthy for row in backend.status())


# -- failures --------------------------------------------------------------------------------------


def test_port_taken_names_the_service_and_down_cleans_up(stacks: ScratchStacks) -> None:
    backend = stacks.backend(stacks.config(teams=[{"name": "solo", "members": ["alice"]}]))
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", backend.config.ports.s3))
        blocker.listen()
        with pytest.raises(StartError) as info:
            backend.up()
    assert info.value.service == "s3"
    assert f"port {backend.config.ports.s3}" in str(info.value) and "in use" in str(info.value)
    assert backend.procs.running("postgres") is not None  # started before the failure, and recorded
    backend.down()
    assert stack_processes(backend.paths.root) == []


def test_missing_postgres_binaries_are_named(stacks: ScratchStacks, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = stacks.backend(stacks.config(teams=[]))
    monkeypatch.setenv("CUBELAB_POSTGRES_BINDIR", "/nonexistent/bin")
    with pytest.raises(StartError) as info:
        backend.up()
    assert info.value.service == "postgres"
    assert "/nonexistent/bin" in str(info.value) and "apt-get install postgresql" in str(info.value)
    assert [r.name for r in backend.procs.all()] == ["sockets"]  # started first, recorded: `down` stops it
    backend.down()
    assert stack_processes(backend.paths.root) == []


def test_a_service_that_dies_is_reported_with_its_log(stacks: ScratchStacks) -> None:
    backend = stacks.backend(stacks.config(teams=[]))
    backend.paths.create()
    backend.postgres.prepare(print)
    conf = backend.postgres.data_dir / "postgresql.conf"
    conf.write_text(conf.read_text() + "\nthis is not = = a setting\n")
    with pytest.raises(StartError) as info:
        backend.up()
    message = str(info.value)
    assert info.value.service == "postgres" and "exited during start-up" in message
    assert "syntax error" in message  # the end of postgres's own log
    backend.down()
    assert stack_processes(backend.paths.root) == []


def test_cli_reports_a_failed_start_with_exit_status(stacks: ScratchStacks) -> None:
    config = stacks.config(teams=[])
    env = {**os.environ, "CUBELAB_POSTGRES_BINDIR": "/nonexistent/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "cubelab", "-c", str(config), "up"],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 1
    assert "postgres:" in done.stderr and "cubelab down" in done.stderr
    # What the message says to run stops what had started (the socket holder, first of all).
    down = subprocess.run([sys.executable, "-m", "cubelab", "-c", str(config), "down"], capture_output=True,
                          text=True, check=False, timeout=120)  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert stack_processes(Path(load(config).state_dir)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs postgres as another system user")
def test_private_state_dir_keeps_the_cluster_where_postgres_can_reach_it(stacks: ScratchStacks) -> None:
    config = stacks.config(teams=[{"name": "solo", "members": ["alice"]}])
    private = config.parent / "private"
    private.mkdir(mode=0o700)
    doc = yaml.safe_load(config.read_text())
    doc["state_dir"] = "private/state"
    config.write_text(yaml.safe_dump(doc))
    backend = stacks.backend(config)
    backend.up()
    assert not backend.postgres.home.is_relative_to(config.parent)
    assert (backend.postgres.home / "data" / "PG_VERSION").exists()
    assert all(row.healthy for row in backend.status())
    # The choice is recorded: the same stack finds its cluster again after a restart.
    backend.down()
    again = stacks.backend(load(config))
    assert again.postgres.home == backend.postgres.home


def test_idle_user_servers_are_culled(stacks: ScratchStacks) -> None:
    from platform_tests.hubclient import UserServer

    config = stacks.config(teams=[{"name": "solo", "members": ["alice"]}])
    doc = yaml.safe_load(config.read_text())
    doc["hub"] = {"cull_idle_seconds": 20}
    config.write_text(yaml.safe_dump(doc))
    backend = stacks.backend(config)
    backend.up()
    server = UserServer(backend.hub.url, "alice", backend.hub.issue_token("alice"))
    server.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not backend.hub.api("GET", "/users/alice")["servers"]:
            break
        time.sleep(2)
    assert backend.hub.api("GET", "/users/alice")["servers"] == {}, "the idle server was not culled"
    assert "Culling server" in (backend.paths.logs / "hub.log").read_text()
