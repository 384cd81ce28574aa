"""Unit tests of the tracking server's team authentication (pure logic; the real thing is in platform_tests)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cubelab.tracking.auth import (
    AuthSettings,
    Identity,
    TeamAuthMiddleware,
    bearer_token,
    rewrite_run_create,
    sets_author,
)

SETTINGS = AuthSettings(
    service="mlflow-ocean",
    team="ocean",
    prefix="/services/mlflow-ocean",
    hub_api_url="http://hub/hub/api",
    hub_public_url="http://hub",
    client_id="service-mlflow-ocean",
    client_secret="s3cret",
)


class FixedChecker:
    """Stands in for the hub: token -> identity."""

    def __init__(self, known: dict[str, Identity]) -> None:
        self.known = known

    async def identify(self, token: str) -> Identity | None:
        return self.known.get(token)


def test_run_create_gets_the_token_owner_as_author() -> None:
    body = {"experiment_id": "1", "user_id": "mallory", "tags": [{"key": "mlflow.user", "value": "mallory"},
                                                                  {"key": "team", "value": "x"}]}  # fmt: skip
    out = rewrite_run_create(body, "alice")
    assert out["user_id"] == "alice"
    assert out["tags"] == [{"key": "team", "value": "x"}, {"key": "mlflow.user", "value": "alice"}]
    assert rewrite_run_create({"experiment_id": "1"}, "bob")["tags"] == [{"key": "mlflow.user", "value": "bob"}]


def test_other_ways_of_setting_the_author_are_recognised() -> None:
    assert sets_author("/x/api/2.0/mlflow/runs/set-tag", {"key": "mlflow.user", "value": "m"})
    assert not sets_author("/x/api/2.0/mlflow/runs/set-tag", {"key": "note", "value": "m"})
    assert sets_author("/x/api/2.0/mlflow/runs/log-batch", {"tags": [{"key": "mlflow.user", "value": "m"}]})
    assert not sets_author("/x/api/2.0/mlflow/runs/log-batch", {"metrics": []})


def test_bearer_token_from_header_or_cookie_only() -> None:
    assert bearer_token({"authorization": "Bearer abc"}, "c") == "abc"
    assert bearer_token({"authorization": "token abc"}, "c") == "abc"
    assert bearer_token({"authorization": "Basic abc"}, "c") is None
    assert bearer_token({"cookie": "c=tok; other=1"}, "c") == "tok"
    assert bearer_token({"x-forwarded-user": "alice", "remote-user": "alice"}, "c") is None


def call(middleware: TeamAuthMiddleware, path: str, headers: dict[str, str], body: bytes = b"", method: str = "GET"):
    seen: dict[str, Any] = {}
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware.app = app
    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], seen.get("body"), dict(sent[0]["headers"])


def test_middleware_decisions() -> None:
    mw = TeamAuthMiddleware(None, SETTINGS, FixedChecker({  # type: ignore[arg-type]
        "alice-token": Identity("alice", True), "carol-token": Identity("carol", False)}))  # fmt: skip
    api = "/services/mlflow-ocean/api/2.0/mlflow/experiments/search"
    assert call(mw, api, {})[0] == 401
    assert call(mw, api, {"X-Forwarded-User": "alice"})[0] == 401
    assert call(mw, api, {"Authorization": "Bearer nope"})[0] == 401
    assert call(mw, api, {"Authorization": "Bearer carol-token"})[0] == 403
    assert call(mw, api, {"Authorization": "Bearer alice-token"})[0] == 200
    assert call(mw, "/services/mlflow-ocean/health", {})[0] == 200
    status, _, headers = call(mw, "/services/mlflow-ocean/", {"Accept": "text/html"})
    assert status == 302 and headers[b"location"].startswith(b"http://hub/hub/api/oauth2/authorize?")

    create = "/services/mlflow-ocean/api/2.0/mlflow/runs/create"
    raw = json.dumps({"experiment_id": "1", "user_id": "mallory"}).encode()
    status, forwarded, _ = call(mw, create, {"Authorization": "Bearer alice-token"}, raw, "POST")
    assert status == 200 and json.loads(forwarded)["user_id"] == "alice"
    tag = json.dumps({"run_id": "r", "key": "mlflow.user", "value": "mallory"}).encode()
    assert call(mw, "/services/mlflow-ocean/api/2.0/mlflow/runs/set-tag", {"Authorization": "Bearer alice-token"},
                tag, "POST")[0] == 403  # fmt: skip


def test_oauth_callback_refuses_a_state_it_did_not_issue() -> None:
    mw = TeamAuthMiddleware(None, SETTINGS, FixedChecker({}))  # type: ignore[arg-type]
    status, _, _ = call(mw, "/services/mlflow-ocean/oauth_callback", {"Cookie": "x=1"})
    assert status == 403


def test_allowed_hosts_extend_mlflows_defaults() -> None:
    """The server's Host-header allowlist: mlflow's defaults (spelled out in serve.py; checked here against
    mlflow itself), plus the hub's public host and the names containers use."""
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    from cubelab.tracking.serve import MLFLOW_DEFAULT_HOSTS, allowed_hosts

    assert MLFLOW_DEFAULT_HOSTS == get_default_allowed_hosts()
    hosts = allowed_hosts({"CUBELAB_HUB_PUBLIC_URL": "https://hub.example.org",
                           "CUBELAB_ALLOWED_HOSTS": "tracking-ocean:5000, lab-tracking-ocean.*:5000"})  # fmt: skip
    for host in ("hub.example.org", "tracking-ocean:5000", "lab-tracking-ocean.ns.svc:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(hosts, host), host
    for host in ("tracking-land:5000", "evil.example.com", "hub.example.org.evil.com"):
        assert not is_allowed_host_header(hosts, host), host
