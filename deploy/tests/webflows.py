"""What a user's browser does, from a container on a deployment's network: log in to the hub (its own form, or an
OpenID provider's), and reach each team's tracking server with a token. Shared by the runs of the compose file
(test_compose_oidc.py) and of the Helm chart (test_helm_run.py), with the OpenID provider of test_oidc.py in a
container of its own."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import podman_images as containers  # deploy/tests/podman_images.py
import pytest

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "http://oidc:3000"  # the provider's container, by its name on the network
ACCOUNTS = {"alice": {"groups": ["ocean", "land", "staff"]}, "bob": {"groups": ["land"]}}
PROVIDER = ROOT / "deploy" / "tests" / "oidc" / "provider.mjs"
PROVIDER_MODULES = Path(sys.prefix) / "tools" / "oidc-provider"

# A connection that the network drops before any answer is tried again (3 times): podman's networking here
# closed a first connection without a response now and then, right after a release came up (seen twice; the
# hub never saw those requests). Any answer, right or wrong, is taken as it is.
RETRYING = """
import requests
from urllib3.util.retry import Retry
RETRY = Retry(total=3, connect=3, read=3, status=0, backoff_factor=0.5, allowed_methods=None)
"""
# Logs a user in (local form when given a password, else the provider's form), without following the hub's
# redirect to its home page (on Kubernetes without an API server KubeSpawner could not answer it).
# Prints "login STATUS URL session|-".
LOGIN = (
    RETRYING
    + """
import html, re, sys
from urllib.parse import urljoin
hub, user, password = sys.argv[1:4]
s = requests.Session()
s.mount("http://", requests.adapters.HTTPAdapter(max_retries=RETRY))
if password:
    s.get(hub + "/hub/login", timeout=30)
    r = s.post(hub + "/hub/login?next=", data={"username": user, "password": password,
               "_xsrf": s.cookies.get("_xsrf")}, allow_redirects=False, timeout=30)
else:
    r = s.get(hub + "/hub/oauth_login", timeout=30)  # redirected to the provider's login form
    action = html.unescape(re.search(r'<form[^>]*action="([^"]+)"', r.text).group(1))
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', r.text))
    r = s.post(urljoin(r.url, action), data={**hidden, "login": user, "password": "x"}, allow_redirects=False,
               timeout=30)
    while r.status_code in (302, 303) and "/hub/oauth_callback" not in r.url:
        r = s.get(urljoin(r.url, r.headers["location"]), allow_redirects=False, timeout=30)
print("login", r.status_code, r.url.split("?")[0], "session" if "jupyterhub-session-id" in s.cookies else "-")
"""
)
# Until the hub serves through its proxy: its API and each team's server, routes the hub adds only once it has
# finished starting (a ready /hub/health comes earlier). Prints "ready SECONDS".
READY = """
import sys, time, requests
hub, deadline, t0 = sys.argv[1], time.monotonic() + 180, time.monotonic()
urls = [hub + "/hub/api/"] + [f"{hub}/services/mlflow-{team}/health" for team in sys.argv[2:]]
while True:
    try:
        if all(requests.get(url, timeout=10).status_code == 200 for url in urls):
            break
    except requests.RequestException:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"not serving after 180 s: {urls}")
    time.sleep(1)
print("ready", round(time.monotonic() - t0, 1))
"""
# With an admin token: the user's hub groups, and what a token of theirs gets from each team's server.
ACCESS = (
    RETRYING
    + """
import json, sys
hub, user, admin = sys.argv[1], sys.argv[2], {"Authorization": "token " + sys.argv[3]}
http = requests.Session()
http.mount("http://", requests.adapters.HTTPAdapter(max_retries=RETRY))
groups = http.get(f"{hub}/hub/api/users/{user}", headers=admin, timeout=30).json()["groups"]
token = http.post(f"{hub}/hub/api/users/{user}/tokens", headers=admin, json={"expires_in": 300}, timeout=30)
bearer = {"Authorization": "Bearer " + token.json()["token"]}
status = {team: http.post(f"{hub}/services/mlflow-{team}/api/2.0/mlflow/experiments/search", headers=bearer,
                              json={"max_results": 1}, timeout=30).status_code for team in ("ocean", "land")}
print(json.dumps({"groups": sorted(groups), "status": status}))
"""
)


def oidc_auth(client_secret_file: str) -> dict[str, Any]:
    """The platform config's hub.auth for the provider container."""
    return {"type": "oidc", "client_id": "cubelab", "client_secret_file": client_secret_file,
            "authorize_url": f"{ISSUER}/auth", "token_url": f"{ISSUER}/token",
            "userdata_url": f"{ISSUER}/me"}  # fmt: skip


def run_script(network: str, image: str, script: str, *args: str, hosts: dict[str, str] | None = None) -> str:
    """A Python script in a container on network (where users' browsers would be); its last line. hosts: names
    to give it in /etc/hosts."""
    add = [f"--add-host={name}:{address}" for name, address in (hosts or {}).items()]
    done = containers.podman("run", "--rm", "--network", network, *add, image, "python3", "-c", script, *args,
                             check=False, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


def start_provider(network: str, image: str, folder: Path, client_secret: str, redirect_uri: str) -> str:
    """The OpenID provider in a container named `oidc` on network; returns the container's name. The hub image
    (its Node is 18, older than oidc-provider supports) runs this machine's node binary."""
    node = shutil.which("node")
    if node is None or not (PROVIDER_MODULES / "node_modules" / "oidc-provider").exists():
        pytest.fail("node and .venv/tools/oidc-provider are missing: `make test` installs them")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "accounts.json").write_text(json.dumps(ACCOUNTS))
    (folder / "settings.json").write_text(json.dumps({
        "client": {"client_id": "cubelab", "client_secret": client_secret, "redirect_uris": [redirect_uri]},
        "accounts_file": "/cfg/accounts.json",
    }))  # fmt: skip
    for path in (folder, *folder.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    name = f"oidc-{folder.parent.name}"
    containers.podman("run", "-d", "--name", name, "--network", network, "--network-alias=oidc",
                      "-v", f"{node}:/usr/local/bin/node-host:ro", "-v", f"{PROVIDER_MODULES}:/oidc:ro",
                      "-v", f"{PROVIDER}:/provider.mjs:ro", "-v", f"{folder}:/cfg:ro", image,
                      "node-host", "/provider.mjs", "/oidc", "3000", "/cfg/settings.json", ISSUER,
                      "0.0.0.0")  # fmt: skip  # noqa: S104 - inside its container, on the test network
    return name


def check_logins_and_access(
    network: str, image: str, hub: str, admin_token: str, passwords: dict[str, str], hosts: dict[str, str] | None = None
) -> None:
    """alice and bob log in (with passwords: local accounts; without: the provider, its groups claim making the
    teams); then each one's token reaches their teams' tracking servers through the hub, and no other."""
    oidc = not passwords
    for user in ("alice", "bob"):
        login = run_script(network, image, LOGIN, hub, user, passwords.get(user, ""), hosts=hosts).split()
        assert login[1] == "302" and login[3] == "session", login
        if oidc:
            assert login[2] == f"{hub}/hub/oauth_callback", login
    alice, bob = (json.loads(run_script(network, image, ACCESS, hub, user, admin_token, hosts=hosts))
                  for user in ("alice", "bob"))  # fmt: skip
    teams = {"ocean", "land"}
    alice_teams, bob_teams = (sorted(set(u["groups"]) & teams) for u in (alice, bob))
    if oidc:  # the claim's groups make the hub groups ("staff" too); those named like a team are the teams
        assert "staff" in alice["groups"], alice
        assert (alice_teams, bob_teams) == (["land", "ocean"], ["land"]), (alice, bob)
        assert bob["status"] == {"ocean": 403, "land": 200}, bob
    else:  # the example config: alice in ocean, bob in both
        assert (alice_teams, bob_teams) == (["ocean"], ["land", "ocean"]), (alice, bob)
        assert alice["status"] == {"ocean": 200, "land": 403}, alice
    assert alice["status"]["ocean"] == 200, alice
