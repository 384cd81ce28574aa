"""Unit tests of the tracking server's team authentication: requests are classified by mlflow's own routing
(its real route table, no server) and handed to a recorder instead of mlflow. The same attacks run against
real servers in platform_tests/test_isolation.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from cubelab.tracking import auth
from cubelab.tracking.auth import AuthSettings, Identity, IdentityUnavailable, TeamAuthMiddleware, TokenChecker
from cubelab.tracking.bodies import confined

SETTINGS = AuthSettings(
    service="mlflow-ocean",
    team="ocean",
    prefix="",  # mlflow's routes are registered once per process; these tests use them without a prefix
    hub_api_url="http://hub/hub/api",
    hub_public_url="http://hub",
    client_id="service-mlflow-ocean",
    client_secret="s3cret",
    bucket="team-ocean",
    artifact_prefix="mlflow",
)
ALICE = {"Authorization": "Bearer alice-token", "Content-Type": "application/json"}


class FixedChecker:
    """Stands in for the hub: token -> identity."""

    def __init__(self, known: dict[str, Identity], down: bool = False) -> None:
        self.known = known
        self.down = down

    async def identify(self, token: str) -> Identity | None:
        if self.down:
            raise IdentityUnavailable("the hub could not be reached: ConnectError")
        return self.known.get(token)


@pytest.fixture(scope="module")
def mlflow_app() -> Any:
    from mlflow.server.fastapi_app import app

    return app


@pytest.fixture
def mw(mlflow_app: Any) -> TeamAuthMiddleware:
    checker = FixedChecker({"alice-token": Identity("alice", True), "carol-token": Identity("carol", False)})
    return TeamAuthMiddleware(None, SETTINGS, checker, routing_app=mlflow_app)  # type: ignore[arg-type]


def call(middleware: TeamAuthMiddleware, path: str, headers: dict[str, str], body: bytes = b"",
         method: str = "GET", query: bytes = b"") -> tuple[int, Any, dict[bytes, bytes], bytes]:  # fmt: skip
    seen: dict[str, Any] = {}
    sent: list[dict[str, Any]] = []
    reads = {"count": 0}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["body"] = (await receive())["body"]
        seen["method"] = scope["method"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        reads["count"] += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware.app = app
    scope = {"type": "http", "method": method, "path": path, "query_string": query, "root_path": "",
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 5000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
    asyncio.run(middleware(scope, receive, send))
    forwarded = json.loads(seen["body"]) if seen.get("body") else seen.get("body")
    return sent[0]["status"], forwarded, dict(sent[0]["headers"]), sent[1].get("body", b"") if len(sent) > 1 else b""


def test_membership_decisions(mw: TeamAuthMiddleware) -> None:
    api = "/api/2.0/mlflow/experiments/search"
    assert call(mw, api, {})[0] == 401
    assert call(mw, api, {"X-Forwarded-User": "alice"})[0] == 401
    assert call(mw, api, {"Authorization": "Bearer nope"})[0] == 401
    assert call(mw, api, {"Authorization": "Bearer carol-token"})[0] == 403
    assert call(mw, api, ALICE, b"{}", "POST")[0] == 200
    assert call(mw, "/health", {})[0] == 200
    status, _, headers, _ = call(mw, "/", {"Accept": "text/html"})
    assert status == 302 and headers[b"location"].startswith(b"http://hub/hub/api/oauth2/authorize?")


CREATE = "/api/2.0/mlflow/runs/create"
FORGED_RUN = {"experiment_id": "1", "user_id": "mallory", "tags": [{"key": "mlflow.user", "value": "mallory"},
                                                                    {"key": "team", "value": "x"}]}  # fmt: skip


@pytest.mark.parametrize("method", ["POST", "post", "Post"])
@pytest.mark.parametrize("encoding", ["plain", "double"])
def test_run_create_gets_the_token_owner_as_author(mw: TeamAuthMiddleware, method: str, encoding: str) -> None:
    raw = json.dumps(FORGED_RUN)
    body = (json.dumps(raw) if encoding == "double" else raw).encode()
    status, forwarded, _, _ = call(mw, CREATE, ALICE, body, method, query=b"user_id=mallory")
    assert status == 200
    assert forwarded["user_id"] == "alice"
    assert {t["key"]: t["value"] for t in forwarded["tags"]} == {"mlflow.user": "alice", "team": "x"}


def test_form_encoded_bodies_are_refused_as_mlflow_refuses_them(mw: TeamAuthMiddleware) -> None:
    headers = {**ALICE, "Content-Type": "application/x-www-form-urlencoded"}
    status, _, _, body = call(mw, CREATE, headers, b"experiment_id=1&user_id=mallory", "POST")
    assert status == 400 and json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize(("path", "body", "method"), [
    ("/api/2.0/mlflow/runs/set-tag", {"run_id": "r", "key": "mlflow.user", "value": "m"}, "POST"),
    ("/api/2.0/mlflow/runs/delete-tag", {"run_id": "r", "key": "mlflow.user"}, "POST"),
    ("/api/2.0/mlflow/runs/log-batch", {"run_id": "r", "tags": [{"key": "mlflow.user", "value": "m"}]}, "POST"),
    ("/api/2.0/mlflow/logged-models/m-1/tags", {"tags": [{"key": "mlflow.user", "value": "m"}]}, "PATCH"),
    ("/api/2.0/mlflow/logged-models/m-1/tags/mlflow.user", {}, "DELETE"),
])  # fmt: skip
@pytest.mark.parametrize("encoding", ["plain", "double"])
def test_setting_or_removing_the_author_otherwise_is_refused(
    mw: TeamAuthMiddleware, path: str, body: dict[str, Any], method: str, encoding: str
) -> None:
    raw = json.dumps(body)
    status, _, _, answer = call(mw, path, ALICE, (json.dumps(raw) if encoding == "double" else raw).encode(),
                                method.lower())  # fmt: skip
    assert status == 403, answer
    assert json.loads(answer)["error_code"] == "PERMISSION_DENIED"


def test_ordinary_tags_and_logged_models_pass_with_the_server_naming_the_author(mw: TeamAuthMiddleware) -> None:
    note = json.dumps({"run_id": "r", "key": "note", "value": ""}).encode()
    status, forwarded, _, _ = call(mw, "/api/2.0/mlflow/runs/set-tag", ALICE, note, "POST")
    assert status == 200 and forwarded == {"run_id": "r", "key": "note", "value": ""}
    model = {"experiment_id": "1", "tags": [{"key": "mlflow.user", "value": "cl-alice"}]}
    status, forwarded, _, _ = call(mw, "/api/2.0/mlflow/logged-models", ALICE, json.dumps(model).encode(), "POST")
    assert status == 200 and forwarded["tags"] == [{"key": "mlflow.user", "value": "alice"}]


@pytest.mark.parametrize("path", [
    "/ajax-api/2.0/mlflow/runs/create-promptlab-run", "/api/2.0/mlflow/webhooks", "/ajax-api/3.0/jobs/",
    "/gateway/mlflow/v1/chat/completions", "/ajax-api/3.0/mlflow/assistant/message",
    "/api/2.0/mlflow/artifacts/presigned-upload-url",
])  # fmt: skip
def test_handlers_cubelab_does_not_offer_are_refused_to_members(mw: TeamAuthMiddleware, path: str) -> None:
    body = json.dumps({"experiment_id": "1", "user_id": "mallory"}).encode()
    assert call(mw, path, ALICE, body, "POST")[0] == 403


@pytest.mark.parametrize(("location", "ok"), [
    ("", True), ("mlflow-artifacts:/team/x", True), ("s3://team-ocean/mlflow/x", True),
    ("file:///var/lib/cubelab/secrets", False), ("/tmp/x", False), ("s3://team-land/mlflow/x", False),
    ("s3://team-ocean/cubes/x", False), ("s3://team-ocean/mlflow/../cubes", False),
    ("mlflow-artifacts://evil.example.com/x", False), ("mlflow-artifacts:/a/%2e%2e/b", False),
    ("http://169.254.169.254/latest", False), ("runs:/abc/model", False),
])  # fmt: skip
def test_experiment_locations_stay_in_the_team_store(mw: TeamAuthMiddleware, location: str, ok: bool) -> None:
    body = json.dumps({"name": "e", "artifact_location": location}).encode()
    status, _, _, answer = call(mw, "/api/2.0/mlflow/experiments/create", ALICE, body, "POST")
    assert status == (200 if ok else 400), answer
    if not ok:
        assert "s3://team-ocean/mlflow/" in json.loads(answer)["message"]


def test_model_version_sources_stay_in_the_team_store(mw: TeamAuthMiddleware) -> None:
    path = "/api/2.0/mlflow/model-versions/create"
    for source, expected in [("runs:/abc/model", 200), ("models:/m-123", 200), ("file:///etc", 400),
                             ("s3://team-land/mlflow/1", 400), ("/root/model", 400)]:  # fmt: skip
        assert call(mw, path, ALICE, json.dumps({"name": "m", "source": source}).encode(), "POST")[0] == expected


def test_confinement_rules() -> None:
    assert confined("s3://team-ocean/mlflow", "team-ocean", "mlflow")
    assert not confined("s3://team-ocean/mlflowx/y", "team-ocean", "mlflow")
    assert not confined("mlflow-artifacts:/a\\..\\b", "b", "p")


@pytest.mark.parametrize("body", [
    b'{"run_id": "r", "key": "k\\u0000", "value": "v"}', b'[{"run_id": "r"}]', b'{"run_id": "r", "tags": [1]}',
    b'{"run_id": "r", "tags": "foo"}', b"[" * 100_000 + b"]" * 100_000, b'"[1, 2]"', b"\xff\xfe",
])  # fmt: skip
def test_malformed_bodies_are_client_errors(mw: TeamAuthMiddleware, body: bytes) -> None:
    path = "/api/2.0/mlflow/runs/log-batch" if b"tags" in body else "/api/2.0/mlflow/runs/set-tag"
    status, _, _, answer = call(mw, path, ALICE, body, "POST")
    assert 400 <= status < 500 and status != 401, (status, answer)
    assert "error_code" in json.loads(answer)


def test_nul_in_a_query_is_a_client_error(mw: TeamAuthMiddleware) -> None:
    status, _, _, _ = call(mw, "/api/2.0/mlflow/experiments/get-by-name", ALICE, query=b"experiment_name=a%00b")
    assert status == 400


def test_a_legal_large_log_batch_passes_and_an_oversized_body_is_refused_unread(mw: TeamAuthMiddleware) -> None:
    batch = {"run_id": "r", "params": [{"key": f"p{i}", "value": "v" * 6000} for i in range(100)],
             "tags": [{"key": f"t{i}", "value": "v" * 8000} for i in range(100)],
             "metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": i} for i in range(800)]}  # fmt: skip
    raw = json.dumps(batch).encode()
    assert len(raw) > 1_400_000
    status, forwarded, _, _ = call(mw, "/api/2.0/mlflow/runs/log-batch", ALICE, raw, "POST")
    assert status == 200 and len(forwarded["params"]) == 100
    huge = {**ALICE, "Content-Length": str(auth.MAX_JSON_BODY + 1)}
    status, _, _, answer = call(mw, "/api/2.0/mlflow/runs/log-batch", huge, b"", "POST")
    assert status == 413, answer


def test_a_hub_that_cannot_answer_is_a_503_not_a_401(mlflow_app: Any) -> None:
    mw = TeamAuthMiddleware(None, SETTINGS, FixedChecker({}, down=True), routing_app=mlflow_app)  # type: ignore[arg-type]
    status, _, headers, body = call(mw, "/api/2.0/mlflow/experiments/search", ALICE, b"{}", "POST")
    assert status == 503 and headers[b"retry-after"] == b"2"
    assert json.loads(body)["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_token_checker_caches_answers_but_not_failures() -> None:
    calls = {"n": 0, "status": 500}

    def hub(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if request.url.path.endswith("/user"):
            user = {"name": "alice", "kind": "user", "scopes": ["access:services!service=mlflow-ocean"]}
            return httpx.Response(calls["status"], json=user)
        return httpx.Response(200, json={"name": "alice", "groups": ["ocean"]})

    checker = TokenChecker(SETTINGS, ttl=60)
    checker._client = httpx.AsyncClient(transport=httpx.MockTransport(hub))

    async def scenario() -> None:
        with pytest.raises(IdentityUnavailable):
            await checker.identify("t")
        with pytest.raises(IdentityUnavailable):
            await checker.identify("t")  # not cached: asked again
        assert calls["n"] == 2
        calls["status"] = 200
        assert await checker.identify("t") == Identity("alice", True)
        assert await checker.identify("t") == Identity("alice", True)
        assert calls["n"] == 4  # /user and /users/alice once, then the cache

    asyncio.run(scenario())


def test_unreachable_hub_is_unavailable_not_unknown() -> None:
    settings = AuthSettings(**{**SETTINGS.__dict__, "hub_api_url": "http://127.0.0.1:9/hub/api"})
    with pytest.raises(IdentityUnavailable):
        asyncio.run(TokenChecker(settings).identify("t"))


def test_oauth_redirects_stay_within_the_service() -> None:
    unprefixed = AuthSettings(**{**SETTINGS.__dict__, "prefix": ""})
    prefixed = AuthSettings(**{**SETTINGS.__dict__, "prefix": "/services/mlflow-ocean"})
    assert prefixed.safe_next("/services/mlflow-ocean/#/experiments/1") == "/services/mlflow-ocean/#/experiments/1"
    assert unprefixed.safe_next("/#/experiments/1") == "/#/experiments/1"
    for evil in ("//evil.example.com/x", "https://evil.example.com/", "/\\evil.com", "http:evil.com", "",
                 "///evil.example.com"):  # fmt: skip
        assert unprefixed.safe_next(evil) == "/", evil
        assert prefixed.safe_next(evil) == "/services/mlflow-ocean/", evil
    for evil in ("/services/mlflow-land/", "/services/mlflow-ocean", "/services/mlflow-oceanx/",
                 "/services/mlflow-ocean/\\evil"):  # fmt: skip
        assert prefixed.safe_next(evil) == "/services/mlflow-ocean/", evil


def test_cookies_are_secure_on_https_and_scoped_to_the_service() -> None:
    settings = AuthSettings(**{**SETTINGS.__dict__, "prefix": "/services/mlflow-ocean"})
    assert settings.cookie_attributes() == "Path=/services/mlflow-ocean; HttpOnly; SameSite=Lax"
    https = AuthSettings(**{**settings.__dict__, "hub_public_url": "https://hub.example.org"})
    assert https.cookie_attributes().endswith("SameSite=Lax; Secure")


def test_a_change_with_the_cookie_needs_an_origin_on_the_requests_own_host() -> None:
    host = {"host": "mlflow-ocean--service.hub.example.org"}
    own = {**host, "origin": "https://mlflow-ocean--service.hub.example.org"}
    assert not auth.cross_site("POST", own)
    assert not auth.cross_site("DELETE", {**host, "referer": "https://mlflow-ocean--service.hub.example.org/x"})
    assert not auth.cross_site("GET", {**host, "origin": "https://evil.example"})  # reads change nothing
    for headers in ({**host, "origin": "https://alice.hub.example.org"}, host, {**host, "origin": "null"},
                    {**host, "origin": "https://mlflow-ocean--service.hub.example.org.evil.example"},
                    {**host, "referer": "https://alice.hub.example.org/user/alice/files/x.html"}):  # fmt: skip
        for method in ("POST", "PATCH", "DELETE", "PUT"):
            assert auth.cross_site(method, headers), (method, headers)


def test_a_cross_site_change_with_the_cookie_is_refused_and_a_bearer_token_is_not(mw: TeamAuthMiddleware) -> None:
    api, body = "/api/2.0/mlflow/experiments/search", b"{}"  # a POST: the rule looks at the method only
    cookie = {
        "Cookie": f"{SETTINGS.cookie}=alice-token",
        "Host": "localhost:5000",
        "Content-Type": "application/json",
        "Origin": "https://evil.example",
    }
    status, _, _, answer = call(mw, api, cookie, body, "POST")
    assert status == 403 and b"another site" in answer
    status, _, _, answer = call(mw, api, {**cookie, "Origin": "http://localhost:5000"}, body, "POST")
    assert status == 200, answer
    bearer = {**cookie, "Authorization": "Bearer alice-token"}
    del bearer["Cookie"]
    assert call(mw, api, bearer, body, "POST")[0] == 200


def test_ui_urls_with_and_without_subdomains() -> None:
    from cubelab import urls

    shared = urls.service_url("https://hub.example.org/", "mlflow-ocean", "/services/mlflow-ocean", False)
    assert shared == "https://hub.example.org/services/mlflow-ocean"
    assert urls.oauth_redirect_uri(shared, "https://hub.example.org") == "/services/mlflow-ocean/oauth_callback"
    own = urls.service_url("https://hub.example.org", "mlflow-ocean", "/services/mlflow-ocean", True)
    assert own == "https://mlflow-ocean--service.hub.example.org/services/mlflow-ocean"
    assert urls.oauth_redirect_uri(own, "https://hub.example.org") == f"{own}/oauth_callback"


def test_oauth_callback_refuses_a_state_it_did_not_issue(mw: TeamAuthMiddleware) -> None:
    assert call(mw, "/oauth_callback", {"Cookie": "x=1"})[0] == 403


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


def test_settings_take_the_team_store_from_mlflows_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server.constants import ARTIFACTS_DESTINATION_ENV_VAR

    env = {"CUBELAB_SERVICE_NAME": "mlflow-ocean", "CUBELAB_TEAM_NAME": "ocean", "CUBELAB_SERVICE_TOKEN": "t",
           "CUBELAB_HUB_API_URL": "http://hub/hub/api", "CUBELAB_HUB_PUBLIC_URL": "http://hub",
           ARTIFACTS_DESTINATION_ENV_VAR: "s3://cubelab-ocean/mlflow"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = AuthSettings.from_env()
    assert (settings.bucket, settings.artifact_prefix) == ("cubelab-ocean", "mlflow")


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, b"An error occurred (404) when calling the HeadObject operation: Not Found", 404),
    (500, b"An error occurred (NoSuchKey) when calling the GetObject operation: gone", 404),
    (500, b"database is down", 500),
    (200, b"An error occurred (404) when calling the HeadObject operation", 200),
])  # fmt: skip
def test_a_storage_not_found_is_a_404(status: int, body: bytes, expected: int) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def respond() -> None:
        wrapped = auth.storage_not_found_as_404(send)
        await wrapped({"type": "http.response.start", "status": status, "headers": []})
        await wrapped({"type": "http.response.body", "body": body[:20], "more_body": True})
        await wrapped({"type": "http.response.body", "body": body[20:]})

    asyncio.run(respond())
    assert sent[0]["status"] == expected
    answer = b"".join(m.get("body", b"") for m in sent[1:])
    assert (json.loads(answer)["error_code"] == "RESOURCE_DOES_NOT_EXIST") if expected == 404 else answer == body


@pytest.mark.parametrize(("service_status", "outcome"), [(200, "refused"), (403, "unavailable")])
def test_a_hub_refusal_counts_only_if_the_hub_accepts_the_services_own_token(service_status: int, outcome: str) -> None:
    """JupyterHub answers 403 to every token while its database is down: then the member gets a 503, not a 401."""

    def hub(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == f"token {SETTINGS.client_secret}":
            return httpx.Response(service_status, json={"name": "service-mlflow-ocean", "kind": "service"})
        return httpx.Response(403, json={"message": "Missing or invalid credentials."})

    checker = TokenChecker(SETTINGS, ttl=60)
    checker._client = httpx.AsyncClient(transport=httpx.MockTransport(hub))
    if outcome == "refused":
        assert asyncio.run(checker.identify("member-token")) is None
    else:
        with pytest.raises(IdentityUnavailable, match="refuses even this service's token"):
            asyncio.run(checker.identify("member-token"))


def test_a_refusal_from_a_hub_whose_database_is_coming_back_is_asked_again() -> None:
    """Seen under compose when Postgres restarts: the member's token is refused from a broken connection and
    the service's own token accepted a moment later. The member's token is asked again before a 401."""
    answers = iter([403, 200])

    def hub(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == f"token {SETTINGS.client_secret}":
            if request.url.path.endswith("/user"):
                return httpx.Response(200, json={"name": "service-mlflow-ocean", "kind": "service"})
            return httpx.Response(200, json={"name": "alice", "groups": ["ocean"]})  # the membership lookup
        status = next(answers)
        body = {"name": "alice", "kind": "user", "scopes": ["access:services"]} if status == 200 else {}
        return httpx.Response(status, json=body)

    checker = TokenChecker(SETTINGS, ttl=60)
    checker._client = httpx.AsyncClient(transport=httpx.MockTransport(hub))
    assert asyncio.run(checker.identify("member-token")) == Identity("alice", True)


TRACE_TAGS = ["/api/3.0/mlflow/traces/tr-1234/tags", "/api/2.0/mlflow/traces/tr-1234/tags",
              "/ajax-api/3.0/mlflow/traces/tr-1234/tags"]  # fmt: skip


@pytest.mark.parametrize("path", TRACE_TAGS)
@pytest.mark.parametrize("location", ["file:///etc", "s3://team-land/mlflow/1/traces", "s3://team-ocean/other/x",
                                      "mlflow-artifacts://evil/x", "", "s3://team-ocean/mlflow/../../x"])  # fmt: skip
def test_a_traces_artifact_location_tag_cannot_leave_the_teams_store(
    mw: TeamAuthMiddleware, path: str, location: str
) -> None:
    """Issue 25, item 5: get-trace-artifact opens the trace's mlflow.artifactLocation tag, so setting that tag
    is setting a location."""
    body = json.dumps({"key": "mlflow.artifactLocation", "value": location}).encode()
    status, _, _, answer = call(mw, path, ALICE, body, "PATCH")
    assert status == 400 and b"outside this team's artefact store" in answer, (status, answer)


@pytest.mark.parametrize("location", ["mlflow-artifacts:/1/traces/tr-1234/artifacts",
                                      "s3://team-ocean/mlflow/1/traces/tr-1234/artifacts"])  # fmt: skip
def test_a_trace_location_inside_the_store_and_other_trace_tags_pass(mw: TeamAuthMiddleware, location: str) -> None:
    body = json.dumps({"key": "mlflow.artifactLocation", "value": location}).encode()
    assert call(mw, TRACE_TAGS[0], ALICE, body, "PATCH")[0] == 200
    assert call(mw, TRACE_TAGS[0], ALICE, b'{"key": "note", "value": "file:///etc"}', "PATCH")[0] == 200


def test_a_new_trace_cannot_bring_a_location_tag_from_outside(mw: TeamAuthMiddleware) -> None:
    trace = {"trace": {"trace_info": {"trace_id": "tr-1", "trace_location": {"type": "MLFLOW_EXPERIMENT",
             "mlflow_experiment": {"experiment_id": "1"}}, "state": "OK",
             "tags": {"mlflow.artifactLocation": "file:///root"}}}}  # fmt: skip
    status, _, _, answer = call(mw, "/api/3.0/mlflow/traces", ALICE, json.dumps(trace).encode(), "POST")
    assert status == 400 and b"mlflow.artifactLocation" in answer, (status, answer)
    trace["trace"]["trace_info"]["tags"]["mlflow.artifactLocation"] = "mlflow-artifacts:/1/traces/tr-1/artifacts"
    assert call(mw, "/api/3.0/mlflow/traces", ALICE, json.dumps(trace).encode(), "POST")[0] == 200
