"""Team authentication inside the tracking server: only members of the team get in, and the server sets authorship.

An ASGI middleware around mlflow's own app (same process, no proxy in front), so the checks hold whichever
way a request arrives: through the hub's proxy at /services/mlflow-TEAM/ or straight to the server's port.

- API clients send the hub token mlflow sends for MLFLOW_TRACKING_TOKEN (`Authorization: Bearer TOKEN`).
- Browsers log in with the hub's OAuth: a request with no token is sent to the hub, which sends the user back
  to /oauth_callback with a code; the code becomes a token kept in an HttpOnly cookie for this path.
- A token is accepted when the hub says it carries `access:services!service=mlflow-TEAM` (or unrestricted
  `access:services`) AND its owner is in the team's hub group (asked with the service's own token). Hub
  admins hold unrestricted access:services, so the group check is what keeps them out of teams they are
  not in. Answers are cached for TOKEN_CACHE_SECONDS: a revoked token stops working within that time.
- Identity headers sent by clients (X-Forwarded-User, Remote-User, ...) are never read.
- Authorship: a run's user is the token's hub user. `runs/create` has user_id and the `mlflow.user` tag
  rewritten; setting `mlflow.user` any other way is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_CACHE_SECONDS = float(os.environ.get("CUBELAB_TOKEN_CACHE_SECONDS", "5"))
PUBLIC_PATHS = ("/health", "/version")
AUTHOR_TAG = "mlflow.user"
_MAX_REWRITE_BODY = 1 << 20  # runs/create bodies are small; anything bigger is refused, not parsed


@dataclass(frozen=True)
class Identity:
    name: str
    allowed: bool


@dataclass(frozen=True)
class AuthSettings:
    service: str  # hub service name, e.g. mlflow-ocean
    team: str  # hub group whose members may use the service
    prefix: str  # URL prefix the server is served under, e.g. /services/mlflow-ocean
    hub_api_url: str  # e.g. http://127.0.0.1:18002/hub/api
    hub_public_url: str  # where browsers reach the hub, e.g. http://127.0.0.1:18000
    client_id: str  # OAuth client id of the service (service-mlflow-ocean)
    client_secret: str  # the service's API token, which is also its OAuth client secret

    @classmethod
    def from_env(cls) -> AuthSettings:
        env = os.environ
        return cls(
            service=env["CUBELAB_SERVICE_NAME"],
            team=env["CUBELAB_TEAM_NAME"],
            prefix=env.get("CUBELAB_SERVICE_PREFIX", "").rstrip("/"),
            hub_api_url=env["CUBELAB_HUB_API_URL"].rstrip("/"),
            hub_public_url=env["CUBELAB_HUB_PUBLIC_URL"].rstrip("/"),
            client_id=env.get("CUBELAB_OAUTH_CLIENT_ID", f"service-{env['CUBELAB_SERVICE_NAME']}"),
            client_secret=env["CUBELAB_SERVICE_TOKEN"],
        )

    @property
    def cookie(self) -> str:
        return f"cubelab-{self.service}-token"


class TokenChecker:
    """Asks the hub who a token belongs to and whether it may use this service; caches the answer briefly."""

    def __init__(self, settings: AuthSettings, ttl: float = TOKEN_CACHE_SECONDS) -> None:
        self.settings = settings
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Identity | None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10)
        return self._client

    def allows(self, scopes: list[str]) -> bool:
        return "access:services" in scopes or f"access:services!service={self.settings.service}" in scopes

    async def identify(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).hexdigest()  # never keep raw tokens as keys
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        resp = await self._http().get(f"{self.settings.hub_api_url}/user", headers={"Authorization": f"token {token}"})
        identity: Identity | None = None
        if resp.status_code == 200:
            model = resp.json()
            if model.get("kind", "user") == "user" and model.get("name"):
                name = model["name"]
                allowed = self.allows(model.get("scopes", [])) and await self.in_team(name)
                identity = Identity(name, allowed)
        elif resp.status_code not in (401, 403, 404):
            resp.raise_for_status()
        if len(self._cache) > 10000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + self.ttl, identity)
        return identity

    async def in_team(self, user: str) -> bool:
        """Whether user is in the team's hub group, asked with the service's own token."""
        resp = await self._http().get(
            f"{self.settings.hub_api_url}/users/{urllib.parse.quote(user)}",
            headers={"Authorization": f"token {self.settings.client_secret}"},
        )
        if resp.status_code != 200:
            return False
        return self.settings.team in resp.json().get("groups", [])

    async def exchange_code(self, code: str, redirect_uri: str) -> str:
        resp = await self._http().post(
            f"{self.settings.hub_api_url}/oauth2/token",
            data={
                "client_id": self.settings.client_id,
                "client_secret": self.settings.client_secret,
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
            },
        )
        resp.raise_for_status()
        return str(resp.json()["access_token"])


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def bearer_token(headers: dict[str, str], cookie_name: str) -> str | None:
    auth = headers.get("authorization", "")
    kind, _, value = auth.partition(" ")
    if kind.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    if "cookie" in headers:
        jar = SimpleCookie()
        try:
            jar.load(headers["cookie"])
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
            return None
        if cookie_name in jar:
            return jar[cookie_name].value
    return None


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


def is_run_create(path: str) -> bool:
    return path.endswith(("/api/2.0/mlflow/runs/create", "/ajax-api/2.0/mlflow/runs/create"))


def sets_author(path: str, body: dict[str, Any]) -> bool:
    """Whether a request other than runs/create tries to set the mlflow.user tag."""
    if path.endswith("/runs/set-tag"):
        return body.get("key") == AUTHOR_TAG
    if path.endswith("/runs/log-batch"):
        return any(t.get("key") == AUTHOR_TAG for t in body.get("tags", []) or [])
    return False


def rewrite_run_create(body: dict[str, Any], user: str) -> dict[str, Any]:
    """The same runs/create request with its author set to user, whatever the client sent."""
    tags = [t for t in body.get("tags", []) or [] if t.get("key") != AUTHOR_TAG]
    return {**body, "user_id": user, "tags": [*tags, {"key": AUTHOR_TAG, "value": user}]}


class TeamAuthMiddleware:
    def __init__(self, app: ASGIApp, settings: AuthSettings, checker: TokenChecker | None = None) -> None:
        self.app = app
        self.settings = settings
        self.checker = checker or TokenChecker(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await _respond(send, 403, _error("PERMISSION_DENIED", "websockets are not served here"))
            return
        path = scope.get("path", "")
        local = path[len(self.settings.prefix) :] if path.startswith(self.settings.prefix) else path
        if local in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if local == "/oauth_callback":
            await self._oauth_callback(scope, send)
            return
        headers = _headers(scope)
        token = bearer_token(headers, self.settings.cookie)
        identity = await self.checker.identify(token) if token else None
        if identity is None:
            await self._unauthenticated(scope, headers, send)
            return
        if not identity.allowed:
            await _respond(
                send, 403, _error("PERMISSION_DENIED", f"{identity.name} is not a member of {self.settings.service}")
            )
            return
        if scope["method"] == "POST" and (is_run_create(path) or path.endswith(("/set-tag", "/log-batch"))):
            await self._guard_author(scope, receive, send, identity.name)
            return
        await self.app(scope, receive, send)

    async def _guard_author(self, scope: Scope, receive: Receive, send: Send, user: str) -> None:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _MAX_REWRITE_BODY:
                await _respond(send, 413, _error("INVALID_PARAMETER_VALUE", "request body too large"))
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        path = scope["path"]
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if isinstance(body, dict):
            if is_run_create(path):
                raw = json.dumps(rewrite_run_create(body, user)).encode()
            elif sets_author(path, body):
                await _respond(send, 403, _error("PERMISSION_DENIED", f"the {AUTHOR_TAG} tag is set by the server"))
                return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    def _callback_url(self, headers: dict[str, str]) -> str:
        return f"{self.settings.prefix}/oauth_callback"

    async def _unauthenticated(self, scope: Scope, headers: dict[str, str], send: Send) -> None:
        wants_html = "text/html" in headers.get("accept", "") and scope["method"] == "GET"
        if not wants_html:
            await _respond(send, 401, _error("UNAUTHENTICATED", "a hub token of a team member is required"))
            return
        state = secrets.token_urlsafe(16)
        target = scope.get("path", "/")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        query = urllib.parse.urlencode({
            "client_id": self.settings.client_id,
            "redirect_uri": self._callback_url(headers),
            "response_type": "code",
            "state": state,
        })  # fmt: skip
        location = f"{self.settings.hub_public_url}/hub/api/oauth2/authorize?{query}"
        state_cookie = json.dumps({"state": state, "next": target})
        cookie = (
            f"{self.settings.cookie}-state={urllib.parse.quote(state_cookie)}; Path={self.settings.prefix or '/'}; "
            "HttpOnly; SameSite=Lax; Max-Age=600"
        )
        await send({
            "type": "http.response.start",
            "status": 302,
            "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode()), (b"content-length", b"0")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    async def _oauth_callback(self, scope: Scope, send: Send) -> None:
        headers = _headers(scope)
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        jar = SimpleCookie()
        jar.load(headers.get("cookie", ""))
        raw_state = jar.get(f"{self.settings.cookie}-state")
        try:
            saved = json.loads(urllib.parse.unquote(raw_state.value)) if raw_state else {}
        except ValueError:
            saved = {}
        if not saved or query.get("state", [""])[0] != saved.get("state") or "code" not in query:
            await _respond(send, 403, _error("PERMISSION_DENIED", "OAuth state mismatch; start again"))
            return
        try:
            token = await self.checker.exchange_code(query["code"][0], self._callback_url(headers))
        except httpx.HTTPError:
            await _respond(send, 403, _error("PERMISSION_DENIED", "the hub refused the OAuth code"))
            return
        path = self.settings.prefix or "/"
        target = str(saved.get("next") or path)
        if not target.startswith(self.settings.prefix + "/"):
            target = path + "/"  # only ever redirect within this service
        cookies = [
            f"{self.settings.cookie}={token}; Path={path}; HttpOnly; SameSite=Lax",
            f"{self.settings.cookie}-state=; Path={path}; Max-Age=0",
        ]
        out = [(b"location", target.encode()), (b"content-length", b"0")]
        out += [(b"set-cookie", c.encode()) for c in cookies]
        await send({"type": "http.response.start", "status": 302, "headers": out})
        await send({"type": "http.response.body", "body": b""})


def wrap(app: ASGIApp) -> ASGIApp:
    """mlflow's app behind team authentication configured from the environment."""
    return TeamAuthMiddleware(app, AuthSettings.from_env())


def create_app() -> ASGIApp:
    """Factory for `mlflow server --app-name cubelab` (the entry point in mlflow.app)."""
    from mlflow.server.fastapi_app import app

    return wrap(app)
