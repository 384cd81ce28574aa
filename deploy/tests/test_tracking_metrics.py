"""The tracking servers' metrics middleware (cubelab.tracking.metrics), around a stand-in app: what is counted and
with which labels, who may read the metrics, and the team sizes' caching. The real server, scraped after a logged
run, is platform_tests/test_metrics.py."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cubelab.tracking.auth import ROUTE_KEY
from cubelab.tracking.metrics import MetricsMiddleware, TeamSizes, route_label

TOKEN = "t" * 64


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Says 201 for /create (classified as _create_run), fails on /boom, else 404."""
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    if scope["path"] == "/create":
        scope[ROUTE_KEY]["handler"] = "_create_run"
    status = 201 if scope["path"] == "/create" else 404
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"x"})


def call(mw: MetricsMiddleware, path: str, method: str = "GET", headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:  # fmt: skip
    scope = {"type": "http", "path": path, "method": method,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}  # fmt: skip
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    try:
        asyncio.run(mw(scope, receive, send))
    except RuntimeError:
        pass
    if not out:
        return 0, b""
    return out[0]["status"], b"".join(m.get("body", b"") for m in out[1:])


def samples(mw: MetricsMiddleware) -> dict[tuple[str, frozenset], float]:
    status, body = call(mw, "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}  # fmt: skip


def test_a_request_is_counted_before_its_answer_is_complete() -> None:
    """A client that scrapes right after its request finds it counted (CI once saw a scrape overtake the counting
    of the request before it when counting came after the last byte)."""
    mw = MetricsMiddleware(app, "ocean", TOKEN)
    seen: list[float] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            seen.append(mw.requests.labels("ocean", "create_run", "POST", "201")._value.get())

    scope = {"type": "http", "path": "/create", "method": "POST", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(mw(scope, receive, send))
    asyncio.run(mw(scope, receive, send))
    assert seen == [1, 2]


def test_requests_are_counted_by_route_method_and_status() -> None:
    mw = MetricsMiddleware(app, "ocean", TOKEN)
    for _ in range(3):
        assert call(mw, "/create", "post")[0] == 201
    call(mw, "/nothing")
    call(mw, "/boom")
    call(mw, "/create", "BREW")
    got = samples(mw)

    def key(route: str, method: str, status: str) -> tuple[str, frozenset]:
        labels = {"team": "ocean", "route": route, "method": method, "status": status}
        return "cubelab_tracking_requests_total", frozenset(labels.items())

    assert got[key("create_run", "POST", "201")] == 3
    assert got[key("unrouted", "GET", "404")] == 1
    assert got[key("unrouted", "GET", "500")] == 1  # the app failed before answering
    assert got[key("create_run", "other", "201")] == 1  # unknown methods do not make new series
    count = ("cubelab_tracking_request_duration_seconds_count",
             frozenset({"team": "ocean", "route": "create_run", "method": "POST"}.items()))  # fmt: skip
    assert got[count] == 3
    assert got["cubelab_tracking_requests_in_flight", frozenset({"team": "ocean"}.items())] == 0
    # Scrapes are not counted as requests.
    assert not any(dict(labels).get("route") == "metrics" for _, labels in got)


@pytest.mark.parametrize(("method", "headers", "status"), [
    ("GET", {}, 401),
    ("GET", {"Authorization": "Bearer wrong"}, 403),
    ("GET", {"Authorization": f"Bearer {TOKEN[:-1]}"}, 403),
    ("GET", {"Authorization": f"Basic {TOKEN}"}, 401),
    ("GET", {"Cookie": f"x={TOKEN}"}, 401),
    ("POST", {"Authorization": f"Bearer {TOKEN}"}, 405),
    ("GET", {"Authorization": f"token {TOKEN}"}, 200),
])  # fmt: skip
def test_only_the_metrics_token_reads_them(method: str, headers: dict[str, str], status: int) -> None:
    mw = MetricsMiddleware(app, "ocean", TOKEN)
    got, body = call(mw, "/metrics", method, headers)
    assert got == status
    assert (b"cubelab_tracking_requests" in body) == (status == 200)


def test_other_spellings_of_the_path_are_ordinary_requests() -> None:
    mw = MetricsMiddleware(app, "ocean", TOKEN)
    for path in ("/metrics/", "/Metrics", "//metrics", "/services/mlflow-ocean/metrics"):
        assert call(mw, path, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 404


def test_route_labels() -> None:
    assert route_label("_log_batch") == "log_batch"
    assert route_label("<no route>") == route_label("<flask routing>") == "unrouted"
    assert route_label("serve_static_file") == "serve_static_file"


def test_team_sizes_are_measured_at_most_every_period_and_errors_keep_the_last_values() -> None:
    calls: list[float] = []
    fail = threading.Event()

    def measure() -> dict[str, float]:
        calls.append(time.time())
        if fail.is_set():
            raise OSError("storage down")
        return {"database_bytes": 100.0 * len(calls), "bucket_bytes": 5.0, "bucket_objects": 1.0}

    sizes = TeamSizes("ocean", measure, every=3600)
    mw = MetricsMiddleware(app, "ocean", TOKEN, sizes=sizes)
    got = samples(mw)
    assert got["cubelab_team_database_bytes", frozenset({"team": "ocean"}.items())] == 100
    samples(mw)
    assert len(calls) == 1  # within the period: not measured again
    sizes.every = 0
    fail.set()
    got = samples(mw)
    assert len(calls) == 2
    assert got["cubelab_team_database_bytes", frozenset({"team": "ocean"}.items())] == 100  # last good value
    assert got["cubelab_team_sizes_errors_total", frozenset({"team": "ocean"}.items())] == 1
