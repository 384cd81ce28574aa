"""Login through a real OpenID provider (oidc-provider from npm, on loopback) in a real browser, against an
embedded stack whose hub runs the authenticator the platform config names: the groups claim makes teams, and a
user taken out of a group at the provider loses that team at the next login (and `cubelab apply` does not give
it back)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab.backends.local.stack import LocalBackend
from cubelab.config import load
from cubelab.procs import free_tcp_port

PROVIDER = Path(__file__).resolve().parent / "oidc" / "provider.mjs"
MODULES = Path(sys.prefix) / "tools" / "oidc-provider"


@pytest.fixture(scope="module")
def oidc_stack(stacks: ScratchStacks, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not (MODULES / "node_modules" / "oidc-provider").exists():
        pytest.fail(f"{MODULES} is missing: `make test` installs it (python deploy/cubelab/prereqs.py --tools)")
    work = tmp_path_factory.mktemp("oidc")
    port = free_tcp_port()
    issuer = f"http://127.0.0.1:{port}"
    path = stacks.config()
    doc = yaml.safe_load(path.read_text())
    for team in doc["teams"]:  # membership comes from the provider
        team.pop("members", None)
        team.pop("admins", None)
    secret = secrets.token_hex(24)
    (path.parent / "oidc-client-secret").write_text(secret + "\n")
    doc["hub"] = {"auth": {
        "type": "oidc", "client_id": "cubelab", "client_secret_file": "oidc-client-secret",
        "authorize_url": f"{issuer}/auth", "token_url": f"{issuer}/token", "userdata_url": f"{issuer}/me",
    }}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    backend = stacks.backend(load(path))
    accounts = work / "accounts.json"
    accounts.write_text(json.dumps({"alice": {"groups": ["ocean", "land", "staff"]}, "bob": {"groups": ["land"]}}))
    settings = work / "settings.json"
    settings.write_text(json.dumps({
        "client": {"client_id": "cubelab", "client_secret": secret,
                   "redirect_uris": [f"{backend.hub.url}/hub/oauth_callback"]},
        "accounts_file": str(accounts),
    }))  # fmt: skip
    log = (work / "provider.log").open("w")
    provider = subprocess.Popen(["node", str(PROVIDER), str(MODULES), str(port), str(settings)],
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=2)  # noqa: S310
                break
            except OSError:
                if provider.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the OpenID provider did not start:\n{(work / 'provider.log').read_text()}")
                time.sleep(0.3)
        backend.up()
        yield {"backend": backend, "accounts": accounts, "issuer": issuer}
    finally:
        provider.terminate()
        provider.wait(10)
        log.close()


def open_provider_login(page: Any, hub: str, issuer: str, user: str) -> None:
    """From the hub's login to the provider's form, filled in and sent (its development form takes any
    password)."""
    page.goto(f"{hub}/hub/oauth_login")
    page.wait_for_url(f"{issuer}/interaction/**", timeout=30000)
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", "not-checked-by-the-dev-form")
    page.click("button[type=submit]")


def log_in(browser: Any, hub: str, issuer: str, user: str) -> None:
    """A fresh browser (no session at the provider): the hub sends it to the provider's login form, the
    provider back to the hub's callback."""
    context = browser.new_context()
    page = context.new_page()
    try:
        open_provider_login(page, hub, issuer, user)
        page.wait_for_url(f"{hub}/hub/**", timeout=30000)
        assert "/hub/oauth_callback" not in page.url, page.content()[:2000]
    finally:
        context.close()


def groups_of(backend: LocalBackend, user: str) -> list[str]:
    return sorted(backend.hub.api("GET", f"/users/{user}")["groups"])


def tracking_status(backend: LocalBackend, team: str, user: str) -> int:
    """What the team's tracking server answers the user's (new) token."""
    token = backend.hub.issue_token(user, expires_in=300)
    url = f"{backend.tracking.url(backend.config.team(team))}/api/2.0/mlflow/experiments/search"
    return requests.post(url, json={"max_results": 1}, headers={"Authorization": f"Bearer {token}"},
                         timeout=30).status_code  # fmt: skip


def test_the_groups_claim_makes_teams_and_a_removal_at_the_provider_takes_effect(
    oidc_stack: dict[str, Any], browser: Any
) -> None:
    backend, accounts, issuer = oidc_stack["backend"], oidc_stack["accounts"], oidc_stack["issuer"]
    settings = json.loads((backend.paths.hub / "settings.json").read_text())
    assert settings["authenticator_class"] == "generic-oauth"
    log_in(browser, backend.hub.url, issuer, "alice")
    # Every group of the claim becomes a hub group; those named like a team are teams (staff is not one).
    assert groups_of(backend, "alice") == ["land", "ocean", "staff"]
    assert tracking_status(backend, "land", "alice") == 200
    # `cubelab apply` keeps the teams' members as the provider said (it manages the teams' groups, not their
    # members; a group that is no team, like staff, it removes, and the next login makes it again).
    backend.apply()
    assert groups_of(backend, "alice") == ["land", "ocean"]

    accounts.write_text(json.dumps({"alice": {"groups": ["ocean"]}, "bob": {"groups": ["land"]}}))
    log_in(browser, backend.hub.url, issuer, "alice")
    assert groups_of(backend, "alice") == ["ocean"]
    time.sleep(float(os.environ.get("CUBELAB_TOKEN_CACHE_SECONDS", "5")) + 1)  # the servers' answer cache
    assert tracking_status(backend, "land", "alice") == 403
    assert tracking_status(backend, "ocean", "alice") == 200


def test_an_account_the_provider_does_not_know_gets_no_hub_user(oidc_stack: dict[str, Any], browser: Any) -> None:
    backend, issuer = oidc_stack["backend"], oidc_stack["issuer"]
    context = browser.new_context()
    page = context.new_page()
    try:
        open_provider_login(page, backend.hub.url, issuer, "mallory")
        page.wait_for_load_state()
    finally:
        context.close()
    names = {u["name"] for u in backend.hub.api("GET", "/users")}
    assert "mallory" not in names, names
