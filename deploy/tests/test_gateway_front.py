"""cubelab's front of dask-gateway (cubelab.gateway.front) as an ASGI app, with the hub and the gateway's proxy
stood in for: what passes, what is refused, and what the dashboard is handed. The real thing, through the hub,
is platform_tests/test_gateway.py."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cubelab.gateway.front import GatewayFront, canonical
from cubelab.tracking.auth import AuthSettings, Identity, TokenChecker, stateless_client

PREFIX = "/services/dask-gateway"
CLUSTER = "0123456789abcdef0123456789abcdef"
TOKENS = {"alice-token": Identity("alice", True), "bob-token": Identity("bob", True),
          "narrow-token": Identity("alice", False)}  # fmt: skip


class FakeChecker(TokenChecker):
    async def identify(self, token: str) -> Identity | None:
        return TOKENS.get(token)


def settings() -> AuthSettings:
    return AuthSettings(service="dask-gateway", team="", prefix=PREFIX, hub_api_url="http://hub/hub/api",
                        hub_public_url="http://hub", client_id="service-dask-gateway", client_secret="s")  # fmt: skip


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    text: str


def run(app: GatewayFront, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
    """One request to the app as a server hands it over: the path decoded, raw_path exactly as sent (an HTTP
    client would normalise dot segments before sending)."""
    scope = {
        "type": "http",
        "method": method,
        "path": urllib.parse.unquote(path),
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    out = {k.decode(): v.decode() for k, v in start["headers"]}
    return Answer(start["status"], out, body.decode())


class Streamed(httpx.AsyncByteStream):
    """A body that arrives as a stream, as a real upstream's does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


@pytest.fixture
def front() -> tuple[GatewayFront, list[httpx.Request]]:
    """The front, and the requests its stand-in gateway proxy received. The gateway shows CLUSTER to alice only."""
    seen: list[httpx.Request] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == f"{PREFIX}/api/v1/clusters/{CLUSTER}":
            owner = request.headers.get("authorization") == "jupyterhub alice-token"
            return httpx.Response(200 if owner else 403, stream=Streamed(b'{"name": "x"}'))
        return httpx.Response(200, stream=Streamed(b"<title>Dask Diagnostic UI</title>"), headers={"set-cookie": "a=b"})

    app = GatewayFront(settings(), "http://gateway-proxy", checker=FakeChecker(settings()))
    app._client = httpx.AsyncClient(transport=httpx.MockTransport(gateway))
    return app, seen


def test_the_owner_gets_the_dashboard_without_their_credentials(front: tuple[GatewayFront, Any]) -> None:
    app, seen = front
    page = f"{PREFIX}/clusters/{CLUSTER}/status"
    answer = run(app, page, {"Authorization": "token alice-token", "Cookie": "cubelab-dask-gateway-token=x"})
    assert answer.status_code == 200 and "Dask Diagnostic" in answer.text
    handed = seen[-1]
    assert handed.url.path == page
    assert "authorization" not in handed.headers and "cookie" not in handed.headers


@pytest.mark.parametrize(
    ("token", "status"), [("bob-token", 403), ("narrow-token", 403), ("forged-token", 401), (None, 401)]
)
def test_anyone_else_is_refused(front: tuple[GatewayFront, Any], token: str | None, status: int) -> None:
    app, seen = front
    headers = {"Authorization": f"token {token}"} if token else {}
    answer = run(app, f"{PREFIX}/clusters/{CLUSTER}/status", headers)
    assert answer.status_code == status and "Diagnostic" not in answer.text
    assert not any(r.url.path.startswith(f"{PREFIX}/clusters/") for r in seen)  # the dashboard was never asked


def test_a_browser_without_login_goes_to_the_hub(front: tuple[GatewayFront, Any]) -> None:
    app, _ = front
    answer = run(app, f"{PREFIX}/clusters/{CLUSTER}/status", {"Accept": "text/html"})
    assert answer.status_code == 302
    assert answer.headers["location"].startswith("http://hub/hub/api/oauth2/authorize?client_id=service-dask-gateway")


def test_a_cookie_change_from_another_site_is_refused(front: tuple[GatewayFront, Any]) -> None:
    app, seen = front
    headers = {"Cookie": "cubelab-dask-gateway-token=alice-token", "Origin": "http://evil.example"}
    answer = run(app, f"{PREFIX}/clusters/{CLUSTER}/api/v1/retire_workers", headers, method="POST")
    assert answer.status_code == 403 and not seen


def test_the_api_passes_with_its_credentials(front: tuple[GatewayFront, Any]) -> None:
    app, seen = front
    answer = run(app, f"{PREFIX}/api/v1/clusters/", {"Authorization": "jupyterhub bob-token"})
    assert answer.status_code == 200 and seen[-1].headers["authorization"] == "jupyterhub bob-token"


@pytest.mark.parametrize(
    "path",
    [f"{PREFIX}/api/v1/../../clusters/{CLUSTER}/status", f"{PREFIX}/clusters/{CLUSTER}/%73tatus",
     f"{PREFIX}//clusters/{CLUSTER}/status", f"{PREFIX}/clusters/{CLUSTER}/./status", f"{PREFIX}/clusters/abc/status",
     f"{PREFIX}/other", "/elsewhere", f"{PREFIX}/api%2Fv1/clusters/"],
)  # fmt: skip
def test_other_spellings_and_other_paths_are_404(front: tuple[GatewayFront, Any], path: str) -> None:
    app, seen = front
    answer = run(app, path, {"Authorization": "token bob-token"})
    assert answer.status_code == 404 and not seen, path


def test_canonical() -> None:
    assert canonical("/clusters/x/status", "/clusters/x/status")
    assert canonical("/clusters/x/", "/clusters/x/")
    assert not canonical("/clusters/x/status", "/clusters/x/%73tatus")
    assert not canonical("/a/../b", "/a/../b") and not canonical("/a//b", "/a//b") and not canonical("/a/.", "/a/.")
    assert not canonical("/a\\b", "/a\\b")


def test_a_shared_client_keeps_no_cookie() -> None:
    """A cookie one user's answer sets must never go out with the next user's request."""
    cookies: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        cookies.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "dask-gateway=alice-session; Path=/"})

    async def go() -> None:
        client = stateless_client(transport=httpx.MockTransport(server))
        async with client:
            await client.get("http://gateway/api/v1/clusters/")
            await client.get("http://gateway/api/v1/clusters/")

    asyncio.run(go())
    assert cookies == [None, None]
    # The same with a plain client keeps it: the test can tell.
    plain: list[str | None] = []

    def plain_server(request: httpx.Request) -> httpx.Response:
        plain.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "dask-gateway=alice-session; Path=/"})

    async def go_plain() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(plain_server)) as client:
            await client.get("http://gateway/a")
            await client.get("http://gateway/a")

    asyncio.run(go_plain())
    assert plain[1] == "dask-gateway=alice-session"
