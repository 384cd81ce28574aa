"""JupyterHub's subdomain mode on the embedded stack, in a real browser: the hub on localhost, each team's
tracking UI on mlflow-TEAM--service.localhost and each user's server on USER.localhost (browsers resolve every
*.localhost name to loopback). A page on a user's origin can neither read a tracking UI nor change anything in
it with a teammate's cookie; the tracking server refuses changes sent with its cookie from any other origin."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab.backends.local.stack import LocalBackend
from cubelab.config import load


@pytest.fixture(scope="module")
def stack(stacks: ScratchStacks) -> LocalBackend:
    path = stacks.config()
    doc = yaml.safe_load(path.read_text())
    doc["hub"] = {"subdomains": True}
    path.write_text(yaml.safe_dump(doc))
    backend = stacks.backend(load(path))
    backend.up()
    return backend


def password(stack: LocalBackend, user: str) -> str:
    return (stack.paths.secrets / "users" / user).read_text().strip()


def experiment_names(stack: LocalBackend, team: str, user: str) -> set[str]:
    token = stack.hub.issue_token(user, expires_in=300)
    url = f"{stack.tracking.url(stack.config.team(team))}/api/2.0/mlflow/experiments/search"
    found = requests.post(url, json={"max_results": 1000}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    found.raise_for_status()
    return {e["name"] for e in found.json().get("experiments", [])}


CREATE = """async ([url, name, mode]) => {
  try {
    const r = await fetch(url + "/ajax-api/2.0/mlflow/experiments/create", {method: "POST", credentials: "include",
      mode, headers: {"Content-Type": mode === "no-cors" ? "text/plain" : "application/json"},
      body: JSON.stringify({name})});
    return r.type === "opaque" ? "opaque" : r.status;
  } catch (e) { return "blocked: " + e.message; }
}"""
READ = """async (url) => {
  try {
    const r = await fetch(url + "/ajax-api/2.0/mlflow/experiments/search?max_results=10", {credentials: "include"});
    return r.status + " " + (await r.text()).slice(0, 80);
  } catch (e) { return "blocked: " + e.message; }
}"""


def test_each_team_ui_and_user_has_an_origin_of_its_own(stack: LocalBackend, browser: Any) -> None:
    hub = stack.hub.url
    port = urlsplit(hub).port
    assert hub == f"http://localhost:{port}"
    settings = json.loads((stack.paths.hub / "settings.json").read_text())
    assert settings["subdomain_host"] == hub
    ui = f"http://mlflow-ocean--service.localhost:{port}/services/mlflow-ocean"
    alice = stack.config.team("ocean").members[0]
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{hub}/hub/login")
        page.fill("#username_input", alice)
        page.fill("#password_input", password(stack, alice))
        page.click("#login_submit")
        page.wait_for_url(f"{hub}/hub/home", timeout=30000)
        assert page.get_attribute("a.cubelab-mlflow", "href") == f"{ui}/"
        assert page.get_attribute("a.cubelab-tensorboard", "href") == (
            f"http://{alice}.localhost:{port}/user/{alice}/tensorboard/"
        )
        # The team's UI on its own host, through the hub's OAuth (an absolute callback on that host).
        page.click("a.cubelab-mlflow")
        page.wait_for_url(f"{ui}/**", timeout=60000)
        ours = f"ui-{uuid.uuid4().hex[:8]}"
        assert page.evaluate(CREATE, [ui, ours, "cors"]) == 200  # the UI's own origin may change things
        cookie = next(c for c in context.cookies() if c["name"] == "cubelab-mlflow-ocean-token")
        assert cookie["domain"] == "mlflow-ocean--service.localhost", cookie
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax", cookie

        # A page on alice's own origin (what her server could serve; fulfilled here by the browser itself).
        evil = f"http://{alice}.localhost:{port}/user/{alice}/files/page.html"
        page.route(evil, lambda route: route.fulfill(status=200, content_type="text/html", body="<p>hi</p>"))
        page.goto(evil)
        assert page.evaluate(READ, ui).startswith("blocked"), "another origin read the tracking UI's API"
        theirs = [f"csrf-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        page.evaluate(CREATE, [ui, theirs[0], "no-cors"])
        page.evaluate(CREATE, [ui, theirs[1], "cors"])
    finally:
        context.close()
    names = experiment_names(stack, "ocean", alice)
    assert ours in names and not set(theirs) & names, names

    # The server's own rule, whatever the browser does with the cookie (a sibling subdomain of a real domain is
    # same-site, so SameSite=Lax still sends it): a change with the cookie needs an Origin on the UI's host.
    url = f"http://127.0.0.1:{port}/services/mlflow-ocean/ajax-api/2.0/mlflow/experiments/create"
    base = {"Host": f"mlflow-ocean--service.localhost:{port}", "Cookie": f"{cookie['name']}={cookie['value']}"}
    for origin, expected in ((f"http://{alice}.localhost:{port}", 403), (None, 403),
                             (f"http://mlflow-ocean--service.localhost:{port}", 200)):  # fmt: skip
        headers = base | ({"Origin": origin} if origin else {})
        answer = requests.post(url, json={"name": f"direct-{uuid.uuid4().hex[:8]}"}, headers=headers, timeout=30)
        assert answer.status_code == expected, (origin, answer.status_code, answer.text[:200])
