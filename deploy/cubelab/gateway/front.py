"""cubelab's front of dask-gateway: what the hub's proxy reaches at /services/dask-gateway/ (an ASGI app, served
by uvicorn on ports.dask_gateway; dask-gateway's own proxy listens behind it, on a port only the platform may
connect to).

- The gateway's API (`/api/...`) passes through as it came: the gateway checks the hub token itself.
- A cluster's dashboard (`/clusters/NAME/...`, HTTP and websockets) is for the cluster's owner only. The request
  must carry a hub token that may access the dask-gateway service (`Authorization: token|bearer`, or the cookie a
  browser gets from the hub's OAuth login, as the tracking servers' UIs do), and the gateway must show the
  cluster to that token: it shows each user their own clusters only. The dashboard gets neither the token
  nor the cookie.
- Anything else is 404, and so is any path that is not in canonical form (percent-encoding, `.` or `..`
  segments, empty segments): the gateway's proxy must never route a request this front classified otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
import urllib.parse

import httpx

from cubelab.plan import GATEWAY_UPSTREAM_VAR
from cubelab.tracking.auth import (
    ASGIApp,
    AuthSettings,
    HubLogin,
    IdentityUnavailable,
    Receive,
    Scope,
    Send,
    TokenChecker,
    _error,
    _headers,
    _read_body,
    _respond,
    credentials,
    cross_site,
    stateless_client,
)
from cubelab.tracking.bodies import Refusal

OWNER_CACHE_SECONDS = 5.0
MAX_BODY = 1 << 20  # the gateway's API and dashboards take small bodies only
# The API, or a cluster's pages (dask-gateway names clusters with 32 hex digits). Characters of canonical paths.
API = re.compile(r"/api/[A-Za-z0-9_.\-/]*")
CLUSTER = re.compile(r"/clusters/(?P<name>[0-9a-f]{32})(?P<rest>/[A-Za-z0-9_.\-/]*)?")
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
              b"transfer-encoding", b"upgrade", b"host"}  # fmt: skip
CREDENTIALS = {b"authorization", b"cookie"}


def canonical(local: str, raw: str) -> bool:
    """Whether a path is what it says: no percent-encoding, no `.`/`..` segments, no empty segment but a final one."""
    if raw != local or "\\" in local:
        return False
    segments = local.split("/")[1:]
    return all(s not in ("", ".", "..") for s in segments[:-1]) and segments[-1] not in (".", "..")


class GatewayChecker(TokenChecker):
    """Tokens that may access the gateway's hub service; there is no team to be in (ownership is asked per
    cluster)."""

    async def in_team(self, user: str) -> bool:
        return True


class GatewayFront(HubLogin):
    def __init__(self, settings: AuthSettings, upstream: str, checker: TokenChecker | None = None) -> None:
        super().__init__(settings, checker or GatewayChecker(settings))
        self.upstream = upstream.rstrip("/")
        self._owners: dict[str, tuple[float, bool]] = {}
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = stateless_client(timeout=httpx.Timeout(30, read=300))
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path = scope.get("path", "")
        prefix = self.settings.prefix
        local = path[len(prefix) :] if path.startswith(prefix + "/") else ""
        raw = scope.get("raw_path", path.encode()).decode("latin-1")
        raw_local = raw[len(prefix) :] if raw.startswith(prefix + "/") else ""
        websocket = scope["type"] == "websocket"
        if not local or not canonical(local, raw_local):
            await self._refuse(scope, receive, send, 404, "not found")
            return
        if local == "/oauth_callback" and not websocket:
            await self._oauth_callback(scope, send)
            return
        if API.fullmatch(local) and not websocket:
            await self._forward(scope, receive, send, strip=set())
            return
        match = CLUSTER.fullmatch(local)
        if match is None:
            await self._refuse(scope, receive, send, 404, "not found")
            return
        refusal = await self._owner_only(scope, match["name"])
        if refusal == "login":
            if websocket:
                await self._refuse(scope, receive, send, 401, "log in first")
            else:
                await self._unauthenticated(scope, _headers(scope), send)
            return
        if refusal:
            status, message = refusal
            await self._refuse(scope, receive, send, status, message)
            return
        if websocket:
            await self._forward_websocket(scope, receive, send)
        else:
            await self._forward(scope, receive, send, strip=CREDENTIALS)

    async def _owner_only(self, scope: Scope, name: str) -> str | tuple[int, str] | None:
        """None if the request's user owns cluster `name`; "login" if it has no token; else (status, message)."""
        headers = _headers(scope)
        token, from_cookie = credentials(headers, self.settings.cookie)
        if token is None:
            return "login"
        method = "GET" if scope["type"] == "websocket" else str(scope.get("method", "GET")).upper()
        # A browser sends the cookie with websockets and changes from any page: only this service's own pages.
        if from_cookie and (cross_site(method, headers) or (scope["type"] == "websocket" and _foreign_origin(headers))):
            return 403, "a request with the browser's cookie from another site is refused"
        try:
            identity = await self.checker.identify(token)
            if identity is None:
                return "login"
            if not identity.allowed:
                return 403, f"{identity.name}'s token may not use the Dask gateway"
            if not await self.owns(token, name):
                return 403, f"cluster {name} is not one of {identity.name}'s"
        except IdentityUnavailable as exc:
            return 503, f"the cluster's owner cannot be checked now ({exc}); retry"
        return None

    async def owns(self, token: str, name: str) -> bool:
        """Whether the gateway shows the token's user this cluster (it shows each user only their own)."""
        key = hashlib.sha256(f"{name}:{token}".encode()).hexdigest()
        now = time.monotonic()
        hit = self._owners.get(key)
        if hit and hit[0] > now:
            return hit[1]
        url = f"{self.upstream}{self.settings.prefix}/api/v1/clusters/{name}"
        try:
            resp = await self._http().get(url, headers={"Authorization": f"jupyterhub {token}"})
        except httpx.HTTPError as exc:
            raise IdentityUnavailable(f"the gateway could not be reached: {type(exc).__name__}") from None
        if resp.status_code >= 500:
            raise IdentityUnavailable(f"the gateway answered {resp.status_code}")
        owned = resp.status_code == 200
        if len(self._owners) > 10000:
            self._owners = {k: v for k, v in self._owners.items() if v[0] > now}
        self._owners[key] = (now + OWNER_CACHE_SECONDS, owned)
        return owned

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})
            return
        code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}.get(status, "UNAVAILABLE")
        await _respond(send, status, _error(code, message))

    async def _forward(self, scope: Scope, receive: Receive, send: Send, strip: set[bytes]) -> None:
        try:
            body = await _read_body(scope, receive, MAX_BODY)
        except Refusal as refusal:
            await _respond(send, refusal.status, refusal.body())
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in HOP_BY_HOP | strip]
        url = self.upstream + scope["path"] + _query(scope)
        request = self._http().build_request(scope["method"], url, headers=headers, content=body)
        try:
            resp = await self._http().send(request, stream=True)
        except httpx.HTTPError as exc:
            await _respond(send, 502, _error("UNAVAILABLE", f"the gateway could not be reached: {type(exc).__name__}"))
            return
        try:
            out = [(k.lower(), v) for k, v in resp.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await resp.aclose()

    async def _forward_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        await receive()  # websocket.connect
        url = self.upstream.replace("http", "ws", 1) + scope["path"] + _query(scope)
        try:
            upstream = await connect(url, subprotocols=scope.get("subprotocols") or None, open_timeout=10,
                                     max_size=None)  # fmt: skip
        except (OSError, WebSocketException, TimeoutError):
            await send({"type": "websocket.close", "code": 1011, "reason": "the dashboard could not be reached"})
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def to_upstream() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes") if message.get("bytes") is not None else message.get("text")
                if data is not None:
                    await upstream.send(data)

        async def to_client() -> None:
            async for data in upstream:
                key = "bytes" if isinstance(data, bytes) else "text"
                await send({"type": "websocket.send", key: data})

        tasks = [asyncio.ensure_future(to_upstream()), asyncio.ensure_future(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except WebSocketException:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await upstream.close()
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "websocket.close", "code": 1000})


def _query(scope: Scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return f"?{query}" if query else ""


def _foreign_origin(headers: dict[str, str]) -> bool:
    origin = headers.get("origin", "")
    return not origin or urllib.parse.urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app() -> ASGIApp:
    """The front configured from the environment (AuthSettings.from_env's variables and GATEWAY_UPSTREAM_VAR)."""
    return GatewayFront(AuthSettings.from_env(), os.environ[GATEWAY_UPSTREAM_VAR])
