"""Dask clusters through the platform's gateway (a hub service), where the deployment runs one.

A member starts a cluster from a kernel with `Gateway()` and no arguments, and computes on it; the workers run as
the member's own account with the team's storage. Everyone else is refused: teammates, members of other teams,
hub admins, and tokens without access to the gateway's service. A cluster's dashboard opens through the hub for
its owner only.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import websocket
from dask_gateway import Gateway
from dask_gateway.auth import JupyterHubAuth

from platform_tests.conftest import issue_token
from platform_tests.hubclient import UserServer


@pytest.fixture(scope="module")
def gateway(deployment: dict[str, Any]) -> dict[str, Any]:
    if "dask_gateway" not in deployment:
        pytest.skip("this deployment runs no Dask gateway (dask_gateway.enabled is false)")
    return dict(deployment["dask_gateway"])


def clusters_api(gateway: dict[str, Any]) -> str:
    """The gateway's REST endpoint of clusters, for requests made without dask-gateway's client."""
    return f"{gateway['address']}/api/v1/clusters/"


def gateway_auth(token: str) -> dict[str, str]:
    """The header dask-gateway's JupyterHub authenticator reads a hub token from."""
    return {"Authorization": f"jupyterhub {token}"}


@contextmanager
def gateway_as(deployment: dict[str, Any], gateway: dict[str, Any], user: str) -> Iterator[Gateway]:
    """The gateway as user sees it with a fresh hub token, from outside the platform; closed afterwards (a
    Gateway left to the garbage collector fails in its __del__ once its event loop is gone)."""
    auth = JupyterHubAuth(api_token=issue_token(deployment, user))
    client = Gateway(address=gateway["address"], proxy_address=gateway["proxy_address"], auth=auth)
    try:
        yield client
    finally:
        client.close()


# Run in the member's kernel: a small cube in the team's bucket, its mean computed by the kernel's own threads,
# by a two-worker gateway cluster from a graph the kernel builds, and by a worker alone from the URL with no keys
# given (the worker's own environment must hold the team's storage).
MEMBER_CLUSTER = """
import json, os, time
from dask_gateway import Gateway
from cubelab_toolkit.artifacts import s3_options
from cubelab_toolkit.cube import open_cube, synthetic_cube, write_cube

url = f"s3://{os.environ['S3_USER_STORAGE_BUCKET']}/platform-tests/NAME.zarr"
write_cube(synthetic_cube(years=1, resolution=4.0, seed=3), url, storage_options=s3_options())
local = float(open_cube(url, storage_options=s3_options()).air_temperature_2m.mean().compute(scheduler="threads"))
t0 = time.monotonic()
cluster = Gateway().new_cluster(shutdown_on_close=False)
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=240)
remote = float(client.compute(open_cube(url, storage_options=s3_options()).air_temperature_2m.mean()).result())

def on_worker(url):
    from cubelab_toolkit.cube import open_cube
    return float(open_cube(url).air_temperature_2m.mean().compute(scheduler="sync"))

own = client.submit(on_worker, url, pure=False).result()

def http_pages(info):
    # What the scheduler's and each worker's HTTP server answer, asked from a worker: where any account running
    # code beside the cluster could ask them (another member's worker in the same host or container).
    import urllib.error, urllib.request
    servers = [(info["address"], info["services"])] + [(a, w["services"]) for a, w in info["workers"].items()]
    out = {}
    for address, services in servers:
        host = address.split("://")[1].rsplit(":", 1)[0]
        for port in services.values():
            for path in ("/status", "/info/main/workers.html", "/json/identity.json", "/metrics", "/health"):
                page = f"http://{host}:{port}{path}"
                try:
                    out[page] = urllib.request.urlopen(page, timeout=10).status
                except urllib.error.HTTPError as exc:
                    out[page] = exc.code
                except urllib.error.URLError as exc:
                    out[page] = type(exc.reason).__name__
                except OSError as exc:
                    out[page] = type(exc).__name__
    return out

print(json.dumps({
    "cluster": cluster.name, "seconds": time.monotonic() - t0, "local": local, "remote": remote, "own": own,
    "kernel_uid": os.getuid(), "worker_uids": sorted(set(client.run(os.getuid).values())),
    "worker_accounts": sorted(set(client.run(lambda: __import__("pwd").getpwuid(os.getuid()).pw_name).values())),
    "workers": len(client.scheduler_info()["workers"]),
    "http": client.submit(http_pages, client.scheduler_info(), pure=False).result(),
    "worker_bucket": sorted(set(client.run(lambda: os.environ.get("S3_USER_STORAGE_BUCKET")).values())),
    "listening": sorted({a.split("://")[1].rsplit(":", 1)[0] for a in
                         [client.scheduler_info()["address"], *client.scheduler_info()["workers"]]}),
}))
client.close()
"""


@pytest.fixture(scope="module")
def member_cluster(
    deployment: dict[str, Any], gateway: dict[str, Any], team_server: UserServer
) -> Iterator[dict[str, Any]]:
    """A two-worker cluster the first team's first member started in a kernel; stopped at the end."""
    name = f"gateway-{int(time.time())}"
    out = team_server.run(MEMBER_CLUSTER.replace("NAME", name), timeout=400, kernel_name="cubelab-sklearn")
    result = json.loads(out.strip().splitlines()[-1])
    yield result
    with gateway_as(deployment, gateway, team_server.user) as owner:
        owner.stop_cluster(result["cluster"])


def test_a_member_computes_on_a_two_worker_cluster_what_the_kernel_computes(
    deployment: dict[str, Any], member_cluster: dict[str, Any]
) -> None:
    team = deployment["teams"][0]
    assert member_cluster["workers"] == 2
    assert member_cluster["remote"] == pytest.approx(member_cluster["local"], rel=1e-12)
    # A worker opened the cube with no keys given: its environment has the session team's storage.
    assert member_cluster["own"] == pytest.approx(member_cluster["local"], rel=1e-12)
    assert member_cluster["worker_bucket"] == [team["bucket"]]


def test_the_scheduler_and_workers_listen_on_loopback_only(member_cluster: dict[str, Any]) -> None:
    """Clients reach a scheduler through the gateway's TLS proxy, which runs beside it: nothing of a cluster
    listens on the machine's other addresses (dask-gateway's default is every interface)."""
    assert member_cluster["listening"] == ["127.0.0.1"], member_cluster["listening"]


def test_the_workers_run_as_the_members_own_account(
    deployment: dict[str, Any], gateway: dict[str, Any], member_cluster: dict[str, Any], team_server: UserServer
) -> None:
    """As the kernel's account, or, where clusters run apart from kernels under accounts of their own (compose:
    inside the gateway's container), as the member's account there: never root."""
    if account := gateway.get("cluster_account"):
        assert member_cluster["worker_accounts"] == [account.format(user=team_server.user)]
        assert 0 not in member_cluster["worker_uids"]
        return
    assert member_cluster["worker_uids"] == [member_cluster["kernel_uid"]]
    if deployment.get("users_isolated"):
        assert member_cluster["kernel_uid"] != 0


def test_no_dask_page_is_open_to_code_beside_the_cluster(member_cluster: dict[str, Any]) -> None:
    """Dask's dashboards and HTTP pages have no login (worker logs, call stacks, an API that retires workers). From
    a worker, running the member's own code beside the cluster: each worker's pages are 404 (no routes), and the
    scheduler's dashboard is either absent (404) or on a port the platform closes to every account but its own."""
    pages = member_cluster["http"]
    closed = ("ConnectionRefusedError", "ConnectionResetError")
    assert pages and all(status == 404 or status in closed for status in pages.values()), pages


PAGE_MARK = "Dask Diagnostic UI"  # the title of the dashboard's pages


def test_the_dashboard_opens_through_the_hub_for_its_owner_only(
    deployment: dict[str, Any], gateway: dict[str, Any], member_cluster: dict[str, Any], team_server: UserServer
) -> None:
    """The owner's hub token opens the cluster's dashboard page, its files and its live websocket through the hub;
    a teammate, a member of the other team, a hub admin in no team and the owner's token narrowed to another
    service get 403; a browser with no login is sent to the hub's OAuth; paths spelled otherwise are 404."""
    if not gateway.get("dashboards"):
        pytest.skip("this deployment's clusters serve no dashboard")
    name = member_cluster["cluster"]
    page = f"{gateway['address']}/clusters/{name}/status"
    owner = issue_token(deployment, team_server.user)
    mine = requests.get(page, headers={"Authorization": f"token {owner}"}, timeout=30)
    assert mine.status_code == 200 and PAGE_MARK in mine.text, mine.text[:300]
    statics = re.findall(r'href="(statics/[^"]+)"', mine.text)
    assert statics and requests.get(f"{page.rsplit('/', 1)[0]}/{statics[0]}", timeout=30,
                                    headers={"Authorization": f"token {owner}"}).status_code == 200  # fmt: skip
    session = re.search(r'"token":\s*"([^"]+)"', mine.text)
    assert session, "no bokeh session token in the page"
    ws_url = page.replace("http", "ws", 1) + "/ws"
    live = websocket.create_connection(ws_url, header=[f"Authorization: token {owner}"],
                                       subprotocols=["bokeh", session.group(1)], timeout=30)  # fmt: skip
    try:
        assert "ACK" in str(live.recv())
    finally:
        live.close()

    team = deployment["teams"][0]
    teammate = next(m for m in team["members"] if m != team_server.user)
    outsider = next(m for m in deployment["teams"][1]["members"] if m not in team["members"])
    admins = [u["name"] for u in deployment["users"] if u["admin"]]
    narrowed = requests.post(
        f"{deployment['hub_api_url']}/users/{team_server.user}/tokens",
        headers={"Authorization": f"token {deployment['hub_admin_token']}"},
        json={"scopes": [f"access:services!service=mlflow-{team['name']}"], "expires_in": 600}, timeout=30,
    ).json()["token"]  # fmt: skip
    for who, token in [(u, issue_token(deployment, u)) for u in (teammate, outsider, *admins)] + [
        ("narrowed", narrowed)
    ]:
        refused = requests.get(page, headers={"Authorization": f"token {token}"}, timeout=30)
        assert refused.status_code == 403 and PAGE_MARK not in refused.text, (who, refused.text[:200])
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(ws_url, header=[f"Authorization: token {token}"],
                                        subprotocols=["bokeh", session.group(1)], timeout=30)  # fmt: skip
    login = requests.get(page, headers={"Accept": "text/html"}, allow_redirects=False, timeout=30)
    assert login.status_code == 302 and "/hub/api/oauth2/authorize" in login.headers["location"]
    assert "client_id=service-dask-gateway" in login.headers["location"]
    # Other spellings of the page, sent as written (no client-side normalising) by the member of the other team:
    # whatever the hub's proxy and the front make of them, they never reach the dashboard.
    stranger = issue_token(deployment, outsider)
    parts = urllib.parse.urlsplit(page)
    prefix = parts.path.rsplit(f"/clusters/{name}", 1)[0]
    for path in (f"{prefix}/api/v1/../../clusters/{name}/status", f"{prefix}/clusters/{name}/%73tatus",
                 f"{prefix}//clusters/{name}/status", f"{prefix}/clusters/{name}/./status"):  # fmt: skip
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", path, headers={"Authorization": f"token {stranger}"})
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        assert answer.status in (400, 403, 404) and PAGE_MARK.encode() not in body, (path, answer.status, body[:200])


def test_the_gateways_inner_ports_are_closed_to_kernels(gateway: dict[str, Any], team_server: UserServer) -> None:
    """dask-gateway's own proxy (behind cubelab's front) and the dashboards' ports, from a member's kernel."""
    ports = gateway.get("closed_ports")
    if not ports:
        pytest.skip("this deployment has no inner gateway ports on the users' machine")
    code = f"""
import socket, json
out = {{}}
for port in {ports!r}:
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port)); out[port] = "open"
    except OSError as exc:
        out[port] = type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""
    result = json.loads(team_server.run(code, timeout=120, kernel_name="cubelab-sklearn").strip().splitlines()[-1])
    assert result and all(v in ("ConnectionRefusedError", "ConnectionResetError") for v in result.values()), result


def test_others_cannot_list_connect_to_or_stop_the_cluster(
    deployment: dict[str, Any], gateway: dict[str, Any], member_cluster: dict[str, Any], team_server: UserServer
) -> None:
    """A teammate, a member of the other team and a hub admin in no team each ask for the member's cluster: its
    listing, its details (which carry the TLS credentials a client connects with), a scale and a stop."""
    name = member_cluster["cluster"]
    teammate = next(m for m in deployment["teams"][0]["members"] if m != team_server.user)
    outsider = next(m for m in deployment["teams"][1]["members"] if m not in deployment["teams"][0]["members"])
    admins = [u["name"] for u in deployment["users"] if u["admin"]]
    api = clusters_api(gateway)
    for user in [teammate, outsider, *admins]:
        auth = gateway_auth(issue_token(deployment, user))
        listed = requests.get(api, headers=auth, timeout=30)
        assert listed.status_code == 200 and name not in listed.json(), (user, listed.text[:300])
        asks = [requests.get(f"{api}{name}", headers=auth, timeout=30),
                requests.post(f"{api}{name}/scale", headers=auth, json={"count": 0}, timeout=30),
                requests.delete(f"{api}{name}", headers=auth, timeout=30)]  # fmt: skip
        assert [r.status_code for r in asks] == [403, 403, 403], (user, [r.text[:200] for r in asks])
    with gateway_as(deployment, gateway, team_server.user) as owner:
        assert owner.get_cluster(name).status.name == "RUNNING"
        client = owner.connect(name).get_client()
        assert len(client.scheduler_info()["workers"]) == member_cluster["workers"]
        client.close()


def test_a_token_without_access_to_the_gateway_is_refused(
    deployment: dict[str, Any], gateway: dict[str, Any], team_server: UserServer
) -> None:
    """A member's token limited to the team's tracking server (no access:services!service=dask-gateway)."""
    team = deployment["teams"][0]
    resp = requests.post(
        f"{deployment['hub_api_url']}/users/{team_server.user}/tokens",
        headers={"Authorization": f"token {deployment['hub_admin_token']}"},
        json={"expires_in": 300, "scopes": [f"access:services!service=mlflow-{team['name']}"]},
        timeout=10,
    )
    resp.raise_for_status()
    narrow = resp.json()["token"]
    api = clusters_api(gateway)
    assert requests.get(api, headers=gateway_auth(narrow), timeout=30).status_code == 401
    full = issue_token(deployment, team_server.user)
    assert requests.get(api, headers=gateway_auth(full), timeout=30).status_code == 200


def test_limits_per_user_hold(
    deployment: dict[str, Any], gateway: dict[str, Any], member_cluster: dict[str, Any], team_server: UserServer
) -> None:
    """The member already runs a two-worker cluster: a second one gets only the workers the per-user limit
    leaves, and a cluster beyond the per-user number of clusters is refused."""
    limits = gateway["teams"][deployment["teams"][0]["name"]]
    with gateway_as(deployment, gateway, team_server.user) as owner:
        running = [c for c in owner.list_clusters() if c.status.name in ("PENDING", "RUNNING")]
        room = limits["max_clusters_per_user"] - len(running)
        extra = [owner.new_cluster(team=deployment["teams"][0]["name"]) for _ in range(room)]
        try:
            # A plain request: dask-gateway's client hangs in its next cluster's connect after a refusal.
            auth = gateway_auth(issue_token(deployment, team_server.user))
            refused = requests.post(clusters_api(gateway), headers=auth, timeout=30,
                                    json={"cluster_options": {"team": deployment["teams"][0]["name"]}})  # fmt: skip
            assert refused.status_code == 422 and "already runs" in refused.text, refused.text[:300]
            second = extra[0]
            second.scale(limits["max_workers_per_cluster"])
            allowed = limits["max_workers_per_user"] - member_cluster["workers"]
            assert 0 < allowed < limits["max_workers_per_cluster"], "the test stack's limits must leave room"
            client = second.get_client()
            client.wait_for_workers(allowed, timeout=120)
            time.sleep(8)  # a few heartbeats (each may start workers): still no more than the limit allows
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == allowed
            client.close()
        finally:
            for cluster in extra:
                cluster.shutdown()


def test_a_member_of_two_teams_picks_one_and_not_a_team_of_others(
    deployment: dict[str, Any], gateway: dict[str, Any]
) -> None:
    first, second = (t["name"] for t in deployment["teams"][:2])
    both = next(m for m in deployment["teams"][0]["members"] if m in deployment["teams"][1]["members"])
    only_second = next(m for m in deployment["teams"][1]["members"] if m not in deployment["teams"][0]["members"])
    with gateway_as(deployment, gateway, both) as member:
        assert set(member.cluster_options()._fields["team"].options) == {first, second}
    with gateway_as(deployment, gateway, only_second) as member:
        assert member.cluster_options()._fields["team"].options == (second,)
    # Asked of the server directly (the client checks the choice too): a cluster for a team one is not in.
    auth = gateway_auth(issue_token(deployment, only_second))
    resp = requests.post(clusters_api(gateway), headers=auth,
                         json={"cluster_options": {"team": first}}, timeout=30)  # fmt: skip
    assert resp.status_code == 422 and "team" in resp.text, resp.text[:300]


def test_an_idle_cluster_is_stopped(deployment: dict[str, Any], gateway: dict[str, Any]) -> None:
    """The second team's clusters stop after its idle timeout with no client and no work."""
    team = deployment["teams"][1]
    timeout = gateway["teams"][team["name"]]["idle_timeout_seconds"]
    if not 0 < timeout <= 60:
        pytest.skip(f"team {team['name']}'s idle timeout ({timeout} s) is too long to wait for in a test")
    with gateway_as(deployment, gateway, team["members"][-1]) as member:
        cluster = member.new_cluster(team=team["name"])
        name = cluster.name
        cluster.close(shutdown=False)
        deadline = time.monotonic() + timeout + 60
        while time.monotonic() < deadline and member.get_cluster(name).status.name not in ("STOPPED", "FAILED"):
            time.sleep(2)
        assert member.get_cluster(name).status.name == "STOPPED"


# Run in a member's kernel: the member's scheduler (their own account, in the cluster's folder, which they own)
# replaces the folder's `logs` with a link to a folder only root may write, then the member scales the cluster.
# dask-gateway (root) used to create each new worker's log file through that link.
LOG_LINK_ATTACK = """
import json, time
from dask_gateway import Gateway

def swap():
    import os
    target = next(p for p in ("/usr/local/share", "/usr/share") if os.path.isdir(p))
    os.rename("logs", "logs-moved")
    os.symlink(target, "logs")
    st = os.stat(target)
    return {"target": target, "before": sorted(os.listdir(target)), "target_owner": st.st_uid,
            "writable": os.access(target, os.W_OK)}

def listing(target):
    import os
    return sorted(os.listdir(target))

gateway = Gateway()
cluster = gateway.new_cluster(shutdown_on_close=False)
client = cluster.get_client()
info = client.run_on_scheduler(swap)
cluster.scale(2)
time.sleep(WAIT)  # the gateway starts (or fails to start) the workers within a second or two
try:
    info["after"] = client.run_on_scheduler(listing, info["target"])
    info["workers"] = len(client.scheduler_info()["workers"])
    info["stopped"] = False
    client.close()
    cluster.shutdown()
except Exception as exc:  # the gateway stopped the cluster whose workers could not start: look from a new one
    info["stopped"], info["workers"] = type(exc).__name__, 0
    client.close()
    second = gateway.new_cluster(shutdown_on_close=False)
    info["after"] = second.get_client().run_on_scheduler(listing, info["target"])
    second.shutdown()
gateway.close()
print(json.dumps(info))
"""


def test_a_link_in_the_clusters_folder_makes_root_write_nothing(
    gateway: dict[str, Any], team_server: UserServer
) -> None:
    """Issue 25: the member's `logs` link leads only where the member may write. Here that is nowhere, so the
    workers do not start (the gateway then stops the cluster), and no file appears in the root-owned folder the
    link points at, as the scheduler (on the gateway's machine) sees it."""
    out = team_server.run(LOG_LINK_ATTACK.replace("WAIT", "15"), timeout=300, kernel_name="cubelab-sklearn")
    info = json.loads(out.strip().splitlines()[-1])
    assert info["target_owner"] == 0 and not info["writable"], info  # the attack's premise
    assert info["after"] == info["before"], sorted(set(info["after"]) - set(info["before"]))
    assert info["workers"] == 0, info


# Run in a member's kernel: a process of the member's own, outliving the kernel, binds every free dashboard port
# and holds them for a while (any account may bind unprivileged ports).
HOLD_DASHBOARD_PORTS = """
import json, subprocess, sys
code = '''
import json, socket, sys, time
held = []
for port in json.loads(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port)); s.listen(); held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
time.sleep(float(sys.argv[2]))
'''
holder = subprocess.Popen([sys.executable, "-c", code, json.dumps(PORTS), "SECONDS"], stdout=subprocess.PIPE,
                          text=True, start_new_session=True)
print(json.dumps({"held": int(holder.stdout.readline()), "pid": holder.pid}))
"""


def test_a_member_trying_to_hold_every_dashboard_port_does_not_stop_anothers_cluster(
    deployment: dict[str, Any], gateway: dict[str, Any], team_server: UserServer
) -> None:
    """Issue 25: the first team's member binds every dashboard port it can. Where the platform holds them (the
    embedded stack's socket holder) it gets none. A member of the other team then starts a cluster, gets a
    worker, opens its dashboard through the hub, and stops it."""
    ports = gateway.get("dashboard_ports")
    if not ports:
        pytest.skip("this deployment's clusters have no dashboard ports on the users' machine")
    code = HOLD_DASHBOARD_PORTS.replace("PORTS", repr(ports)).replace("SECONDS", "240")
    held = json.loads(team_server.run(code, timeout=120, kernel_name="cubelab-sklearn").strip().splitlines()[-1])
    if gateway.get("dashboard_ports_held"):
        assert held["held"] == 0, held
    other = next(m for m in deployment["teams"][1]["members"] if m not in deployment["teams"][0]["members"])
    try:
        with gateway_as(deployment, gateway, other) as client:
            cluster = client.new_cluster(shutdown_on_close=False)
            try:
                cluster.scale(1)
                dask_client = cluster.get_client()
                dask_client.wait_for_workers(1, timeout=180)
                assert dask_client.submit(sum, [1, 2, 3]).result() == 6
                dask_client.close()
                if gateway.get("dashboards"):
                    page = f"{gateway['address']}/clusters/{cluster.name}/status"
                    token = {"Authorization": f"token {issue_token(deployment, other)}"}
                    shown = requests.get(page, headers=token, timeout=30)
                    assert shown.status_code == 200 and PAGE_MARK in shown.text, shown.text[:300]
            finally:
                cluster.shutdown()
    finally:
        team_server.run(f"import os, signal\nos.killpg({held['pid']}, signal.SIGKILL)", timeout=60,
                        kernel_name="cubelab-sklearn")  # fmt: skip
