"""Cross-origin grants of the tracking server (cubelab.tracking.origins), on mlflow's real FastAPI app: mlflow
grants credentialed CORS to every loopback origin; behind cubelab's filter only the platform's own origins get a
grant, and another origin's preflight is refused. platform_tests/test_browser.py makes the same attack in Chromium."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from cubelab.tracking.origins import OwnOriginsOnly, allowed_origins

HUB = "http://hub.example.org"
FOREIGN = ["http://127.0.0.1:31337", "http://localhost:8080", "http://[::1]:9000", "https://evil.example"]


@pytest.fixture(scope="module")
def mlflow_app() -> Any:
    from mlflow.server.fastapi_app import app

    return app


def request(app: Any, method: str, origin: str, **headers: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5000") as client:
            return await client.request(method, "/health", headers={"Origin": origin, **headers})

    return asyncio.run(go())


def test_mlflow_alone_grants_credentialed_reads_to_any_loopback_page(mlflow_app: Any) -> None:
    """Why the filter exists: if mlflow stops doing this, this test says so."""
    response = request(mlflow_app, "GET", "http://127.0.0.1:31337")
    assert response.headers.get("access-control-allow-origin") == "http://127.0.0.1:31337"
    assert response.headers.get("access-control-allow-credentials") == "true"


@pytest.mark.parametrize("origin", FOREIGN)
def test_behind_the_filter_no_other_origin_gets_a_grant_or_a_preflight(mlflow_app: Any, origin: str) -> None:
    app = OwnOriginsOnly(mlflow_app, [HUB])
    response = request(app, "GET", origin)
    assert response.status_code == 200  # the request itself is answered (a browser then refuses to show it)
    assert not [k for k in response.headers if k.lower().startswith("access-control-")], dict(response.headers)
    preflight = request(app, "OPTIONS", origin, **{"Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers


def test_the_platforms_own_origin_keeps_what_mlflow_grants_it(mlflow_app: Any) -> None:
    """The embedded hub is itself a loopback origin (127.0.0.1:PORT): it keeps its grant, a neighbour port does not."""
    app = OwnOriginsOnly(mlflow_app, ["http://127.0.0.1:18000"])
    assert request(app, "GET", "http://127.0.0.1:18000").headers.get("access-control-allow-origin") == \
        "http://127.0.0.1:18000"  # fmt: skip
    assert request(app, "GET", "http://127.0.0.1:18001").headers.get("access-control-allow-origin") is None


def test_the_own_origins_are_the_hubs_and_the_uis() -> None:
    env = {"CUBELAB_HUB_PUBLIC_URL": "https://hub.example.org/", "CUBELAB_SERVICE_URL":
           "https://mlflow-ocean--service.hub.example.org/services/mlflow-ocean/"}  # fmt: skip
    assert allowed_origins(env) == ["https://hub.example.org", "https://mlflow-ocean--service.hub.example.org"]
    assert allowed_origins({}) == []
