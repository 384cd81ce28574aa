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
- Every request is classified by the handler mlflow will route it to (cubelab.tracking.routes), and its body
  is read as mlflow will read it, checked and handed on in canonical form (cubelab.tracking.bodies): the
  server names the author of what is created, nobody sets or removes `mlflow.user` otherwise, artefact
  locations stay in the team's store, and handlers cubelab does not offer are refused.
- An identity the hub could not confirm (hub down, hub error) is a 503, which clients retry, and is not
  cached; only the hub's own "no" is a 401 or 403.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.cookiejar
import json
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import httpx

from cubelab import urls
from cubelab.tracking.bodies import Refusal, check
from cubelab.tracking.origins import OwnOriginsOnly, allowed_origins
from cubelab.tracking.routes import Rule, classify

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_CACHE_SECONDS = float(os.environ.get("CUBELAB_TOKEN_CACHE_SECONDS", "5"))
# JSON bodies: mlflow's own limits allow a log-batch of ~1.4 MB; ten times that is refused unread.
MAX_JSON_BODY = int(os.environ.get("CUBELAB_MAX_JSON_BODY", str(16 << 20)))
# Artefact uploads: mlflow's WSGI bridge holds a whole upload in memory; bigger files need multipart uploads.
MAX_UPLOAD_BODY = int(os.environ.get("CUBELAB_MAX_UPLOAD_BODY", str(2 << 30)))
THREAD_BODY = 256 << 10
# Where the handler a request was classified to is written for cubelab.tracking.metrics, which counts requests by
# it: a dict the metrics middleware puts into the scope (shared by the copies of the scope made here).
ROUTE_KEY = "cubelab.route"


def stateless_client(**kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client that never keeps a cookie. A server's client is shared by every request it serves: a cookie
    that one user's answer set (dask-gateway sets one for the token it accepted) would be sent for the next
    user's request and speak for the first."""
    jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(cookies=jar, **kwargs)


class IdentityUnavailable(Exception):
    """The hub could not be asked, or answered with an error: the identity is unknown, not refused."""


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
    bucket: str = ""  # the team's bucket and artefact prefix: artefact locations must stay inside them
    artifact_prefix: str = ""
    service_url: str = ""  # where browsers reach this UI (cubelab.urls.service_url); hub_public_url + prefix if ""

    @classmethod
    def from_env(cls) -> AuthSettings:
        env = os.environ
        # Where mlflow itself keeps the team's artefacts (its server's --artifacts-destination, which both
        # cubelab's launcher and `mlflow server` put in this variable of mlflow.server.constants).
        destination = urllib.parse.urlsplit(env.get("_MLFLOW_SERVER_ARTIFACT_DESTINATION", ""))
        return cls(
            service=env["CUBELAB_SERVICE_NAME"],
            team=env["CUBELAB_TEAM_NAME"],
            prefix=env.get("CUBELAB_SERVICE_PREFIX", "").rstrip("/"),
            hub_api_url=env["CUBELAB_HUB_API_URL"].rstrip("/"),
            hub_public_url=env["CUBELAB_HUB_PUBLIC_URL"].rstrip("/"),
            client_id=env.get("CUBELAB_OAUTH_CLIENT_ID", f"service-{env['CUBELAB_SERVICE_NAME']}"),
            client_secret=env["CUBELAB_SERVICE_TOKEN"],
            bucket=destination.netloc,
            artifact_prefix=destination.path.strip("/"),
            service_url=env.get("CUBELAB_SERVICE_URL", "").rstrip("/"),
        )

    @property
    def ui_url(self) -> str:
        return self.service_url or f"{self.hub_public_url}{self.prefix}"

    @property
    def cookie(self) -> str:
        return f"cubelab-{self.service}-token"

    def cookie_attributes(self) -> str:
        """Cookies stay on this service's host and path, go over https only when the UI is served over https, and
        are not sent on cross-site subrequests."""
        secure = "; Secure" if self.ui_url.startswith("https://") else ""
        return f"Path={self.prefix or '/'}; HttpOnly; SameSite=Lax{secure}"

    def safe_next(self, target: str) -> str:
        """target if it is a path of this service, else the service's root: never another host or service."""
        root = f"{self.prefix}/"
        parts = urllib.parse.urlsplit(target)
        if (parts.scheme or parts.netloc or "\\" in target or target.startswith("//")
                or not target.startswith(root)):  # fmt: skip
            return root
        return target


class TokenChecker:
    """Asks the hub who a token belongs to and whether it may use this service; caches the answer briefly."""

    def __init__(self, settings: AuthSettings, ttl: float = TOKEN_CACHE_SECONDS) -> None:
        self.settings = settings
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Identity | None]] = {}
        self._hub_ok_until = 0.0
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = stateless_client(timeout=10)
        return self._client

    def allows(self, scopes: list[str]) -> bool:
        return "access:services" in scopes or f"access:services!service={self.settings.service}" in scopes

    async def identify(self, token: str) -> Identity | None:
        """The token's user and whether they may use this service; None when the hub says the token is not
        valid. Raises IdentityUnavailable when the hub cannot say: that answer is never cached."""
        key = hashlib.sha256(token.encode()).hexdigest()  # never keep raw tokens as keys
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        resp = await self._ask(f"{self.settings.hub_api_url}/user", token)
        if resp.status_code in (401, 403, 404):
            # A refusal counts only if the hub can check tokens at all, and only if it is given again once the
            # hub has shown it can: a database coming back serves one query from a broken connection and the
            # next from a good one, and a refusal from that moment would cost the member a 401.
            await self._hub_checks_tokens()
            resp = await self._ask(f"{self.settings.hub_api_url}/user", token)
        identity: Identity | None = None
        if resp.status_code == 200:
            model = resp.json()
            if model.get("kind", "user") == "user" and model.get("name"):
                name = model["name"]
                allowed = self.allows(model.get("scopes", [])) and await self.in_team(name)
                identity = Identity(name, allowed)
        elif resp.status_code not in (401, 403, 404):
            raise IdentityUnavailable(f"the hub answered {resp.status_code}")
        if len(self._cache) > 10000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + self.ttl, identity)
        return identity

    async def _hub_checks_tokens(self) -> None:
        """JupyterHub answers 403 to every token while its database is down, so a refusal is believed only when
        the hub still accepts this service's own token (asked at most once a second)."""
        now = time.monotonic()
        if now < self._hub_ok_until:
            return
        resp = await self._ask(f"{self.settings.hub_api_url}/user", self.settings.client_secret)
        if resp.status_code != 200:
            raise IdentityUnavailable(f"the hub refuses even this service's token ({resp.status_code})")
        self._hub_ok_until = now + 1.0

    async def _ask(self, url: str, token: str) -> httpx.Response:
        try:
            return await self._http().get(url, headers={"Authorization": f"token {token}"})
        except httpx.HTTPError as exc:
            raise IdentityUnavailable(f"the hub could not be reached: {type(exc).__name__}") from None

    async def in_team(self, user: str) -> bool:
        """Whether user is in the team's hub group, asked with the service's own token."""
        resp = await self._ask(f"{self.settings.hub_api_url}/users/{urllib.parse.quote(user)}",
                               self.settings.client_secret)  # fmt: skip
        if resp.status_code == 404:
            return False  # the user was deleted since the token was issued
        if resp.status_code != 200:
            raise IdentityUnavailable(f"the hub answered {resp.status_code} about {user}")
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


def credentials(headers: dict[str, str], cookie_name: str) -> tuple[str | None, bool]:
    """The request's token, and whether it came from the cookie (which a browser adds on its own)."""
    auth = headers.get("authorization", "")
    kind, _, value = auth.partition(" ")
    if kind.lower() in ("bearer", "token") and value.strip():
        return value.strip(), False
    if "cookie" in headers:
        jar = SimpleCookie()
        try:
            jar.load(headers["cookie"])
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
            return None, False
        if cookie_name in jar:
            return jar[cookie_name].value, True
    return None, False


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site(method: str, headers: dict[str, str]) -> bool:
    """Whether a request that carries the cookie could have been sent by another site's page: a method that
    changes something, without an Origin (or Referer) on the host the request was sent to. Browsers set both
    and pages cannot forge them; the cookie's own SameSite=Lax still sends it from sibling subdomains."""
    if method in SAFE_METHODS:
        return False
    source = headers.get("origin") or headers.get("referer") or ""
    if not source or source == "null":
        return True
    return urllib.parse.urlsplit(source).netloc.lower() != headers.get("host", "").lower()


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                   content_type: bytes = b"application/json") -> None:  # fmt: skip
    base = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


def _check_declared_length(scope: Scope, limit: int) -> None:
    declared = _headers(scope).get("content-length", "0").strip() or "0"
    if not declared.isdigit():
        raise Refusal(400, "INVALID_PARAMETER_VALUE", "Content-Length is not a number")
    if int(declared) > limit:
        raise Refusal(413, "REQUEST_LIMIT_EXCEEDED", f"request body over {limit} bytes")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refusing one over limit before reading it (declared length) or while reading it."""
    _check_declared_length(scope, limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal(400, "INVALID_PARAMETER_VALUE", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refusal(413, "REQUEST_LIMIT_EXCEEDED", f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _with_body(scope: Scope, body: bytes, rewritten: bool) -> Scope:
    """scope with headers for the body the app gets: its length, and JSON when it was re-serialised."""
    dropped = (b"content-length", b"content-type") if rewritten else (b"content-length",)
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in dropped]
    headers.append((b"content-length", str(len(body)).encode()))
    if rewritten:
        headers.append((b"content-type", b"application/json"))
    return {**scope, "headers": headers}


# What boto3 says when an object is not there; mlflow passes it on as a 500, which clients retry for minutes.
_STORAGE_NOT_FOUND = re.compile(rb"An error occurred \((404|NoSuchKey)\) when calling the \w+ operation")


def storage_not_found_as_404(send: Send) -> Send:
    """A 500 that only says the storage has no such object becomes mlflow's RESOURCE_DOES_NOT_EXIST (404); any
    other response passes unchanged (other 500s are real server errors, which clients rightly retry)."""
    held: list[Message] = []
    passing = True

    async def wrapped(message: Message) -> None:
        nonlocal passing
        if message["type"] == "http.response.start":
            passing = message["status"] != 500
            if passing:
                await send(message)
            else:
                held.append(message)
            return
        if passing:
            await send(message)
            return
        held.append(message)
        if message.get("more_body"):
            return
        body = b"".join(m.get("body", b"") for m in held[1:])
        if _STORAGE_NOT_FOUND.search(body):
            await _respond(send, 404, _error("RESOURCE_DOES_NOT_EXIST", "no such artefact"))
            return
        await send({**held[0]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class HubLogin:
    """Browsers' login with the hub's OAuth for a service: the redirect to the hub, and the callback that turns
    the hub's code into a token kept in an HttpOnly cookie of the service's path."""

    def __init__(self, settings: AuthSettings, checker: TokenChecker) -> None:
        self.settings = settings
        self.checker = checker

    def _callback_url(self, headers: dict[str, str]) -> str:
        return urls.oauth_redirect_uri(self.settings.ui_url, self.settings.hub_public_url)

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
            f"{self.settings.cookie}-state={urllib.parse.quote(state_cookie)}; "
            f"{self.settings.cookie_attributes()}; Max-Age=600"
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
        target = self.settings.safe_next(str(saved.get("next") or ""))
        cookies = [
            f"{self.settings.cookie}={token}; {self.settings.cookie_attributes()}",
            f"{self.settings.cookie}-state=; {self.settings.cookie_attributes()}; Max-Age=0",
        ]
        out = [(b"location", target.encode()), (b"content-length", b"0")]
        out += [(b"set-cookie", c.encode()) for c in cookies]
        await send({"type": "http.response.start", "status": 302, "headers": out})
        await send({"type": "http.response.body", "body": b""})


class TeamAuthMiddleware(HubLogin):
    """Team authentication around mlflow's app. `routing_app` is the app whose routes classify requests (mlflow's
    FastAPI app; the same as `app` except in unit tests, where `app` records what it is handed)."""

    def __init__(
        self, app: ASGIApp, settings: AuthSettings, checker: TokenChecker | None = None, routing_app: Any = None
    ) -> None:
        super().__init__(settings, checker or TokenChecker(settings))
        self.app = app
        self.routing_app = routing_app if routing_app is not None else app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await _respond(send, 403, _error("PERMISSION_DENIED", "websockets are not served here"))
            return
        # What mlflow routes on is what is checked: werkzeug upper-cases the method, so it is upper-cased here
        # first and the app gets that spelling.
        scope = {**scope, "method": str(scope.get("method", "GET")).upper()}
        path = scope.get("path", "")
        local = path[len(self.settings.prefix) :] if path.startswith(self.settings.prefix) else path
        counted = scope.get(ROUTE_KEY)
        if local == "/oauth_callback":
            if counted is not None:
                counted["handler"] = "oauth_callback"
            await self._oauth_callback(scope, send)
            return
        route = classify(self.routing_app, scope)
        if counted is not None:
            counted["handler"] = route.handler
        if route.rule is Rule.PUBLIC:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        token, from_cookie = credentials(headers, self.settings.cookie)
        if token and from_cookie and cross_site(scope["method"], headers):
            message = "a change sent with the browser's cookie from another site is refused (send a bearer token)"
            await _respond(send, 403, _error("PERMISSION_DENIED", message))
            return
        try:
            identity = await self.checker.identify(token) if token else None
        except IdentityUnavailable as exc:
            body = _error("TEMPORARILY_UNAVAILABLE", f"team membership cannot be checked now ({exc}); retry")
            await _respond(send, 503, body, [(b"retry-after", b"2")])
            return
        if identity is None:
            await self._unauthenticated(scope, headers, send)
            return
        if not identity.allowed:
            await _respond(
                send, 403, _error("PERMISSION_DENIED", f"{identity.name} is not a member of {self.settings.service}")
            )
            return
        if route.rule is Rule.DENY:
            message = f"{scope['method']} {local} ({route.handler}) is not offered by this cubelab tracking server"
            await _respond(send, 403, _error("PERMISSION_DENIED", message))
            return
        send = storage_not_found_as_404(send)
        if route.rule is Rule.STREAM:
            await self._stream(scope, receive, send)
            return
        try:
            raw = await _read_body(scope, receive, MAX_JSON_BODY)
            body = raw
            if route.flask_app is not None:
                # Parsed with the length the app will be given (a chunked body has none until now).
                mounted = _with_body(route.scope or scope, raw, rewritten=False)
                args = (route, mounted, raw, identity.name, self.settings.bucket, self.settings.artifact_prefix)
                # Parsing takes ~0.1 ms for ordinary bodies: a thread only for big ones (a full log-batch).
                body = await asyncio.to_thread(check, *args) if len(raw) > THREAD_BODY else check(*args)
        except Refusal as refusal:
            await _respond(send, refusal.status, refusal.body())
            return
        await self.app(_with_body(scope, body, body is not raw), _replay(body, receive), send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an upload or download through unread, refusing one that is larger than MAX_UPLOAD_BODY."""
        try:
            _check_declared_length(scope, MAX_UPLOAD_BODY)
        except Refusal as refusal:
            await _respond(send, refusal.status, refusal.body())
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_UPLOAD_BODY:
                return {"type": "http.disconnect"}  # the app sees the client go away and writes nothing
            return message

        await self.app(scope, counted, send)


def wrap(app: ASGIApp) -> ASGIApp:
    """mlflow's app behind team authentication configured from the environment, granting cross-origin reads to
    the platform's own origins only (cubelab.tracking.origins)."""
    return OwnOriginsOnly(TeamAuthMiddleware(app, AuthSettings.from_env()), allowed_origins(os.environ))


def create_app() -> ASGIApp:
    """Factory for `mlflow server --app-name cubelab` (the entry point in mlflow.app)."""
    from mlflow.server.fastapi_app import app

    return wrap(app)
