"""Prometheus metrics of a team's tracking server: requests, latencies and errors by route, and the team's sizes.

An ASGI middleware outside team authentication (cubelab.tracking.auth), so every request is counted, refused
ones included. Labels are bounded whatever clients send: the route is the mlflow handler the request was
classified to (auth fills it in), the method one of HTTP's, the status a number.

The metrics are served at one exact path outside the service prefix (so the hub's proxy never routes there),
only to a bearer token equal to the deployment's metrics token (the hub service with `read:metrics`): compared in
constant time, never logged. Without a configured token the path is not served at all.

The team's database size and bucket size (objects, bytes) are measured in a background thread when a scrape finds
them older than CUBELAB_SIZES_EVERY_SECONDS; a scrape never waits long for them.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cubelab.tracking.auth import ROUTE_KEY, ASGIApp, Receive, Scope, Send, _headers, _respond, credentials

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Latency buckets (seconds): from a cached read to a large artefact upload.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"


def route_label(handler: str) -> str:
    """A handler name as a label: `_log_batch` -> `log_batch`; requests no handler takes are `unrouted`."""
    return "unrouted" if handler.startswith("<") else handler.lstrip("_") or "unrouted"


class TeamSizes(Collector):
    """The team's database size and bucket size, measured by `measure` in a background thread at most every
    `every` seconds, when collected. A failed measurement keeps the last values and counts an error."""

    def __init__(self, team: str, measure: Callable[[], dict[str, float]], every: float, wait: float = 5.0) -> None:
        self.team = team
        self.measure = measure
        self.every = every
        self.wait = wait  # how long a scrape waits for a measurement under way before answering without it
        self.values: dict[str, float] = {}
        self.measured_at = 0.0
        self.errors = 0
        self._running: threading.Thread | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Start a measurement when the last one is older than `every`, and wait up to `wait` for it."""
        with self._lock:
            stale = time.time() - self.measured_at >= self.every
            if stale and (self._running is None or not self._running.is_alive()):
                self._running = threading.Thread(target=self._run, name="cubelab-team-sizes", daemon=True)
                self._running.start()
            running = self._running
        if running is not None:
            running.join(self.wait)

    def _run(self) -> None:
        try:
            values = self.measure()
        except Exception:  # noqa: BLE001 - a size that cannot be measured now is reported as an error count
            self.errors += 1
            return
        self.values, self.measured_at = values, time.time()

    def collect(self) -> Iterator[Any]:
        help_texts = {
            "database_bytes": "Size of the team's mlflow database (pg_database_size)",
            "bucket_bytes": "Bytes in the team's bucket",
            "bucket_objects": "Objects in the team's bucket",
        }
        for name, text in help_texts.items():
            if name in self.values:
                family = GaugeMetricFamily(f"cubelab_team_{name}", text, labels=["team"])
                family.add_metric([self.team], self.values[name])
                yield family
        if self.measured_at:
            measured = GaugeMetricFamily("cubelab_team_sizes_measured_timestamp_seconds",
                                         "When the team's sizes were last measured", labels=["team"])  # fmt: skip
            measured.add_metric([self.team], self.measured_at)
            yield measured
        errors = CounterMetricFamily("cubelab_team_sizes_errors", "Failed measurements of the team's sizes",
                                     labels=["team"])  # fmt: skip
        errors.add_metric([self.team], self.errors)
        yield errors


def measure_sizes(store_uri: str, destination: str, env: dict[str, str]) -> Callable[[], dict[str, float]]:
    """A measurement of the team's database (as its own role) and bucket (with its own S3 keys)."""
    bucket = urllib.parse.urlsplit(destination).netloc

    def measure() -> dict[str, float]:
        import boto3
        import sqlalchemy

        values: dict[str, float] = {}
        engine = sqlalchemy.create_engine(store_uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            if engine.dialect.name == "postgresql":
                with engine.connect() as conn:
                    values["database_bytes"] = float(
                        conn.execute(sqlalchemy.text("SELECT pg_database_size(current_database())")).scalar_one()
                    )
        finally:
            engine.dispose()
        endpoint = env.get("MLFLOW_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3")
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"))
        objects = size = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                objects += 1
                size += item["Size"]
        values["bucket_objects"], values["bucket_bytes"] = float(objects), float(size)
        return values

    return measure


class MetricsMiddleware:
    """Counts and times every request around `app`, and serves the metrics at `path` to `token` only."""

    def __init__(self, app: ASGIApp, team: str, token: str, path: str = "/metrics",
                 sizes: TeamSizes | None = None) -> None:  # fmt: skip
        self.app = app
        self.team = team
        self.token = token.encode()
        self.path = path
        self.sizes = sizes
        self.registry = CollectorRegistry()
        labels = ["team", "route", "method", "status"]
        self.requests = Counter("cubelab_tracking_requests", "Requests answered, by route, method and status",
                                labels, registry=self.registry)  # fmt: skip
        self.latency = Histogram("cubelab_tracking_request_duration_seconds",
                                 "Time from a request's arrival to the end of its response", labels[:3],
                                 buckets=BUCKETS, registry=self.registry)  # fmt: skip
        self.in_flight = Gauge("cubelab_tracking_requests_in_flight", "Requests being answered", ["team"],
                               registry=self.registry)  # fmt: skip
        if sizes is not None:
            self.registry.register(sizes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") == self.path:
            await self._serve(scope, send)
            return
        route = {"handler": "<no route>"}
        scope = {**scope, ROUTE_KEY: route}
        method = str(scope.get("method", "GET")).upper()
        method = method if method in METHODS else "other"
        status = 500  # what the client gets when the app fails before it answers
        started = time.perf_counter()
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self.in_flight.labels(self.team).dec()
                name = route_label(route["handler"])
                self.requests.labels(self.team, name, method, str(status)).inc()
                self.latency.labels(self.team, name, method).observe(time.perf_counter() - started)

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the client can have the whole answer: a scrape it makes next sees this request
            await send(message)

        self.in_flight.labels(self.team).inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            record()

    async def _serve(self, scope: Scope, send: Send) -> None:
        token, from_cookie = credentials(_headers(scope), "")
        if scope.get("method") not in ("GET", "HEAD"):
            await _plain(send, 405, b"metrics are read with GET\n")
            return
        if not token or from_cookie:
            await _plain(send, 401, b"the metrics token is required (Authorization: Bearer TOKEN)\n")
            return
        if not hmac.compare_digest(token.encode(), self.token):
            await _plain(send, 403, b"this token may not read metrics\n")
            return
        if self.sizes is not None:
            await asyncio.to_thread(self.sizes.refresh)
        body = generate_latest(self.registry)
        await _plain(send, 200, b"" if scope.get("method") == "HEAD" else body, CONTENT_TYPE)


async def _plain(send: Send, status: int, body: bytes, content_type: bytes = TEXT) -> None:
    await _respond(send, status, body, content_type=content_type)


def wrap(app: ASGIApp, store_uri: str) -> ASGIApp:
    """app counted, with the metrics served, configured from the environment; app itself when no token is set."""
    env = dict(os.environ)
    token = env.get("CUBELAB_METRICS_TOKEN", "")
    if not token:
        return app
    every = float(env.get("CUBELAB_SIZES_EVERY_SECONDS", "60"))
    measure = measure_sizes(store_uri, env.get("_MLFLOW_SERVER_ARTIFACT_DESTINATION", ""), env)
    sizes = TeamSizes(env.get("CUBELAB_TEAM_NAME", ""), measure, every)
    return MetricsMiddleware(app, env.get("CUBELAB_TEAM_NAME", ""), token, env.get("CUBELAB_METRICS_PATH", "/metrics"),
                             sizes)  # fmt: skip
