"""Cross-origin reads: only the platform's own origins (run inside the tracking server's environment).

mlflow grants credentialed CORS (`Access-Control-Allow-Origin: <origin>` with `Allow-Credentials: true`) to its
allowed origins and, on top of them, to every `http://localhost:*`, `127.0.0.1:*` and `[::1]:*` origin
(mlflow.server.security_utils.LOCALHOST_ORIGIN_PATTERNS, added in both its Flask and FastAPI set-ups, with no
setting to turn them off). On a shared machine any account can serve a page on a loopback port; with those
grants, that page reads a team's data with the cookie of a member who opens it (issue 25). This filter sits
outside mlflow and removes every CORS grant for an origin that is not the platform's own, whatever mlflow's
rules say, and refuses such an origin's preflight: a class of grant made impossible here, not one pattern
patched in mlflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cubelab import urls

Scope = dict[str, Any]
Message = dict[str, Any]


def allowed_origins(env: Mapping[str, str]) -> list[str]:
    """The platform's own origins: where browsers reach the UI, which is the hub's origin, or the UI's own host
    in subdomain mode. Never a wildcard."""
    return list(dict.fromkeys(urls.origin(url) for url in public_urls(env)))


def public_urls(env: Mapping[str, str]) -> list[str]:
    """Where browsers reach the hub and this server's UI (its own host in subdomain mode)."""
    return [url for variable in ("CUBELAB_HUB_PUBLIC_URL", "CUBELAB_SERVICE_URL") if (url := env.get(variable, ""))]


class OwnOriginsOnly:
    """ASGI middleware: responses to a request whose Origin is not one of `allowed` carry no Access-Control-*
    header, and its CORS preflight is refused (403)."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {origin.lower().rstrip("/") for origin in allowed}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        origin = headers.get(b"origin")
        if origin is None or origin.decode("latin-1").lower().rstrip("/") in self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            body = b"cross-origin requests from this origin are not allowed\n"
            headers_out = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 403, "headers": headers_out})
            await send({"type": "http.response.body", "body": body})
            return

        async def without_grants(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = message | {"headers": [(k, v) for k, v in message.get("headers", [])
                                                  if not k.lower().startswith(b"access-control-")]}  # fmt: skip
            await send(message)

        await self.app(scope, receive, without_grants)
