"""Every handler of mlflow's server has a rule (cubelab.tracking.routes), so an mlflow upgrade that adds a route
fails here instead of slipping through; unclassified handlers are refused."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import pytest

from cubelab.tracking import routes
from cubelab.tracking.routes import Rule, classify, native_routes, native_rule


@pytest.fixture(scope="module")
def mlflow_app() -> Any:
    from mlflow.server.fastapi_app import app

    return app


def flask_endpoints(app: Any) -> set[str]:
    mount = next(r for r in app.routes if routes.is_flask_mount(r))
    return {rule.endpoint for rule in mount.app.app.url_map.iter_rules()}


def test_every_flask_handler_has_a_rule(mlflow_app: Any) -> None:
    endpoints = flask_endpoints(mlflow_app)
    assert len(endpoints) > 150  # the walk sees mlflow's real table
    assert not sorted(endpoints - routes.FLASK_RULES.keys()), "handlers with no rule"
    assert not sorted(routes.FLASK_RULES.keys() - endpoints), "rules for handlers this mlflow does not have"


def test_every_native_handler_has_a_rule(mlflow_app: Any) -> None:
    names = {name for _, name in native_routes(mlflow_app)}
    assert "otel_api:export_traces" in names and "server_info_api:health" in names
    for name in names:
        module = name.partition(":")[0]
        assert name in routes.NATIVE_RULES or f"{module}:*" in routes.NATIVE_RULES, name
    assert not [n for n in routes.NATIVE_RULES if not n.endswith(":*") and n not in names], "stale native rules"


def scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"", "headers": [],
            "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 5000)}  # fmt: skip


@pytest.mark.parametrize(("method", "path", "rule", "handler"), [
    ("POST", "/api/2.0/mlflow/runs/create", Rule.CREATE, "_create_run"),
    ("POST", "/ajax-api/2.0/mlflow/runs/create", Rule.CREATE, "_create_run"),
    ("POST", "//api/2.0/mlflow/runs/set-tag", Rule.WRITE, "_set_tag"),
    ("POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run", Rule.DENY, "serve_create_promptlab_run"),
    ("GET", "/health", Rule.PUBLIC, "server_info_api:health"),
    ("POST", "/v1/traces", Rule.STREAM, "otel_api:export_traces"),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/a/b", Rule.STREAM, "artifact_router:upload_artifact"),
    ("POST", "/ajax-api/3.0/jobs/", Rule.DENY, "job_api:submit_job"),
    ("GET", "/ajax-api/3.0/mlflow/mcp-servers/x", Rule.DENY, "mcp_server_api:get_mcp_server"),
])  # fmt: skip
def test_requests_are_classified_by_the_handler_they_reach(
    mlflow_app: Any, method: str, path: str, rule: Rule, handler: str
) -> None:
    route = classify(mlflow_app, scope(method, path))
    assert (route.rule, route.handler) == (rule, handler)


def test_a_handler_without_a_rule_is_refused(mlflow_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(routes.FLASK_RULES, "_get_run")
    assert classify(mlflow_app, scope("GET", "/api/2.0/mlflow/runs/get")).rule is Rule.DENY
    assert native_rule("new_module:new_handler") is Rule.DENY


# mlflow's functions that turn a stored URI into an artefact repository (and so open it). The server's own
# destination (`_get_artifact_repo_mlflow_artifacts`, mlflow-artifacts:/) is not a stored location.
RESOLVERS = {"_get_artifact_repo", "_get_artifact_repository_for_uri", "_get_trace_artifact_repo",
             "get_artifact_repository"}  # fmt: skip
OWN_DESTINATION = {"_get_artifact_repo_mlflow_artifacts"}


def _called(func: Any) -> set[str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                names.add(node.func.id)
            elif isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
    return names


def location_openers(app: Any) -> dict[str, set[str]]:
    """Flask endpoints whose view reaches a resolver, directly or through mlflow's handler helpers, with the
    resolving functions it reaches."""
    import mlflow.server.handlers as handlers

    functions = {n: f for n, f in vars(handlers).items() if inspect.isfunction(f) and f.__module__ == handlers.__name__}
    calls = {name: _called(f) for name, f in functions.items()}
    opening = set(RESOLVERS)
    grew = True
    while grew:
        grew = False
        for name, called in calls.items():
            if name not in opening and name not in OWN_DESTINATION and called & opening:
                opening.add(name)
                grew = True
    mount = next(r for r in app.routes if routes.is_flask_mount(r))
    found = {}
    for endpoint, view in mount.app.app.view_functions.items():
        func = inspect.unwrap(view)
        if reached := (_called(func) | {getattr(func, "__name__", "")}) & opening:
            found[endpoint] = reached
    return found


def test_every_handler_that_opens_a_stored_location_is_known_and_its_location_checked(mlflow_app: Any) -> None:
    """Issue 25: the server opens a location only where cubelab knows how that location was set, and each
    request that sets one is checked (bodies.confined, by field or tag, in a body-checked rule)."""
    from cubelab.tracking import bodies

    openers = location_openers(mlflow_app)
    assert {"serve_artifacts", "serve_get_trace_artifact", "serve_model_version_artifact"} <= openers.keys()
    unknown = {e: sorted(r) for e, r in openers.items()
               if e not in bodies.OPENED_LOCATIONS and routes.FLASK_RULES.get(e) is not Rule.DENY}  # fmt: skip
    assert not unknown, f"handlers that open stored locations with no entry in bodies.OPENED_LOCATIONS: {unknown}"
    assert not sorted(bodies.OPENED_LOCATIONS.keys() - openers.keys()), "stale entries"
    checked = {*bodies.LOCATION_FIELDS, *bodies.LOCATION_TAGS, *bodies.SOURCE_FIELDS.values()}
    for handler, kind in bodies.OPENED_LOCATIONS.items():
        assert routes.FLASK_RULES[handler] in (Rule.READ, Rule.STREAM), handler
        for setter, name in bodies.LOCATION_SOURCES[kind]:
            assert routes.FLASK_RULES[setter] in (Rule.WRITE, Rule.CREATE), (kind, setter)  # its body is checked
            assert name in checked, (kind, setter, name)
