"""Which rule applies to a request, decided by the handler mlflow will route it to, not by the URL's text.

mlflow's server is a FastAPI app: a few native routers, then its Flask app mounted at `/`. A request is
classified the way that app will route it: the first top-level route that fully matches (Starlette's rule);
for the Flask mount, Flask's own URL map on the same WSGI environ mlflow builds, giving the endpoint (the
handler's name). Every handler has exactly one rule below; a handler with none is refused (403) for everyone,
and deploy/tests/test_tracking_routes.py walks mlflow's route table so an upgrade that adds one fails a test.

The table follows mlflow 3.17.2 (the pinned version). Rules:
- PUBLIC: no token (health and version probes).
- READ: members; the request is parsed as mlflow will parse it (refusing what mlflow would choke on).
- WRITE: members; the body is parsed as mlflow will parse it, checked (nobody sets or removes `mlflow.user`;
  artefact locations stay in the team's store; no NUL characters) and replaced by its canonical JSON, so the
  handler reads exactly what was checked.
- CREATE: WRITE, and the new object's author (a run's user_id, every `mlflow.user` tag) is the token's user.
- STREAM: members; the body (file contents, OTLP protobuf) goes through unparsed: these handlers set no
  author, and the paths they write are confined by mlflow's own path checks and the team's artefact store.
- DENY: refused for everyone. Features cubelab does not offer, most of which make the server call other
  hosts, run code or hold provider secrets: the AI gateway, webhooks, jobs and scorers, GenAI review
  queues, issues, label schemas and evaluation datasets, prompt optimisation, demo data, workspaces,
  the presigned-URL API of other clients (SageMaker's) and the deprecated prompt lab. mlflow's own client
  asks for presigned downloads of artefacts (`mlflow-artifacts/presigned/...`): those are READ, signed with
  the team's own S3 identity for one object of its store.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.routing import Match, Mount


class Rule(enum.Enum):
    PUBLIC = "public"
    READ = "read"
    WRITE = "write"
    CREATE = "create"
    STREAM = "stream"
    DENY = "deny"


def _names(text: str) -> list[str]:
    return text.split()


FLASK_RULES: dict[str, Rule] = {
    **dict.fromkeys(_names("health version"), Rule.PUBLIC),
    **dict.fromkeys(_names("""
        serve serve_static_file static serve_artifacts serve_model_version_artifact serve_get_logged_model_artifact
        serve_get_metric_history_bulk serve_get_metric_history_bulk_interval get_metric_history_bulk_interval_handler
        serve_get_trace_artifact serve_get_ui_telemetry serve_post_ui_telemetry serve_search_datasets
        _batch_get_trace_infos _batch_get_traces _calculate_trace_filter_correlation _get_assessment _get_experiment
        _get_experiment_by_name _get_latest_versions _get_logged_model _get_metric_history _get_model_version
        _get_model_version_by_alias _get_model_version_download_uri _get_registered_model _get_run _get_server_info
        _get_trace _get_trace_info_v3 _deprecated_get_trace_info_v2 _deprecated_search_traces_v2 _graphql
        _list_artifacts _list_artifacts_mlflow_artifacts _list_logged_model_artifacts _query_trace_metrics
        _search_experiments _search_logged_models _search_model_versions _search_registered_models _search_runs
        _search_traces_v3 _get_presigned_download_url
    """), Rule.READ),
    **dict.fromkeys(_names("""
        _create_experiment _update_experiment _delete_experiment _restore_experiment _set_experiment_tag
        _delete_experiment_tag _update_run _delete_run _restore_run _set_tag _delete_tag _log_batch _log_inputs
        _log_metric _log_model _log_outputs _log_param _finalize_logged_model
        _delete_logged_model _log_logged_model_params _set_logged_model_tags _delete_logged_model_tag
        _create_registered_model _rename_registered_model _update_registered_model _delete_registered_model
        _set_registered_model_tag _delete_registered_model_tag _set_registered_model_alias
        _delete_registered_model_alias _create_model_version _update_model_version _delete_model_version
        _transition_stage _set_model_version_tag _delete_model_version_tag
        _deprecated_end_trace_v2 _set_trace_tag _set_trace_tag_v3 _delete_trace_tag
        _delete_trace_tag_v3 _delete_traces _link_traces_to_run _link_prompts_to_trace _create_assessment
        _update_assessment _delete_assessment _create_multipart_upload_artifact _complete_multipart_upload_artifact
        _abort_multipart_upload_artifact
    """), Rule.WRITE),
    **dict.fromkeys(_names("_create_run _create_logged_model _start_trace_v3 _deprecated_start_trace_v2"), Rule.CREATE),
    **dict.fromkeys(_names("""
        _upload_artifact _download_artifact _delete_artifact_mlflow_artifacts serve_upload_artifact
    """), Rule.STREAM),
    **dict.fromkeys(_names("""
        serve_create_promptlab_run serve_gateway_proxy _not_implemented
        _create_presigned_download_url _create_presigned_upload_url
        _create_webhook _delete_webhook _get_webhook _list_webhooks _test_webhook _update_webhook
        _create_gateway_endpoint _create_gateway_endpoint_binding _create_gateway_guardrail
        _create_gateway_model_definition _create_gateway_secret _delete_gateway_endpoint
        _delete_gateway_endpoint_binding _delete_gateway_endpoint_tag _delete_gateway_guardrail
        _delete_gateway_model_definition _delete_gateway_secret _get_gateway_endpoint _get_gateway_guardrail
        _get_gateway_model_definition _get_gateway_secret_info _list_gateway_endpoint_bindings
        _list_gateway_endpoints _list_gateway_guardrails _list_gateway_model_definitions _list_gateway_secrets
        _set_gateway_endpoint_tag _update_gateway_endpoint _update_gateway_model_definition _update_gateway_secret
        _attach_model_to_gateway_endpoint _detach_model_from_gateway_endpoint _add_guardrail_to_endpoint
        _remove_guardrail_from_endpoint _list_endpoint_guardrail_configs _update_endpoint_guardrail_config
        _create_budget_policy _delete_budget_policy _get_budget_policy _list_budget_policies _list_budget_windows
        _update_budget_policy _list_supported_models _list_supported_providers _get_provider_config
        _get_secrets_config
        _cancel_job _get_job _invoke_scorer_handler _invoke_issue_detection_handler _invoke_genai_evaluate_handler
        _register_scorer _delete_scorer _get_scorer _list_scorers _list_scorer_versions _get_online_scoring_configs
        _upsert_online_scoring_config _create_prompt_optimization_job _cancel_prompt_optimization_job
        _delete_prompt_optimization_job _get_prompt_optimization_job _search_prompt_optimization_jobs
        _generate_demo _delete_demo
        _create_workspace_handler _delete_workspace_handler _get_workspace_handler _list_workspaces_handler
        _update_workspace_handler
        _create_issue _get_issue _search_issues _update_issue _add_items_to_review_queue _create_review_queue
        _delete_review_queue _get_or_create_user_queue _get_review_queue _get_review_queue_by_name
        _list_review_queue_items _list_review_queues _remove_items_from_review_queue _set_review_queue_item_status
        _update_review_queue _create_label_schema _delete_label_schema _get_label_schema _get_label_schema_by_name
        _list_label_schemas _update_label_schema
        _create_dataset_handler _delete_dataset_handler _delete_dataset_records_handler _delete_dataset_tag_handler
        _get_dataset_handler _get_dataset_experiment_ids_handler _get_dataset_records_handler
        _set_dataset_tags_handler _upsert_dataset_records_handler _add_dataset_to_experiments_handler
        _remove_dataset_from_experiments_handler _search_evaluation_datasets_handler
    """), Rule.DENY),
}  # fmt: skip

# mlflow's native FastAPI routes, as "module:handler" (module under mlflow.server); "module:*" covers a module.
NATIVE_RULES: dict[str, Rule] = {
    "server_info_api:health": Rule.PUBLIC,
    "server_info_api:get_server_info": Rule.READ,
    "otel_api:export_traces": Rule.STREAM,  # OTLP traces (protobuf bodies); traces carry no run authorship
    "artifact_router:download_artifact": Rule.STREAM,  # the same artefact store as the Flask routes
    "artifact_router:upload_artifact": Rule.STREAM,
    "job_api:*": Rule.DENY,
    "gateway_api:*": Rule.DENY,
    "assistant.api:*": Rule.DENY,  # runs a coding assistant with tools on the server
    "mcp_server_api:*": Rule.DENY,
}


def native_rule(name: str) -> Rule:
    module = name.partition(":")[0]
    return NATIVE_RULES.get(name) or NATIVE_RULES.get(f"{module}:*", Rule.DENY)


@dataclass(frozen=True)
class Route:
    """Where a request goes: the rule, the handler's name, and for Flask handlers the Flask app, the scope the
    mount hands it (to build the same WSGI environ) and the arguments Flask takes from the path."""

    rule: Rule
    handler: str
    flask_app: Any = None
    scope: MutableMapping[str, Any] | None = None
    view_args: tuple[str, ...] = ()  # the values Flask takes from the path (a tag key, a model id)


def _module(route: Any) -> str:
    router = getattr(route, "original_router", None)
    for inner in getattr(router, "routes", None) or []:
        if module := getattr(getattr(inner, "endpoint", None), "__module__", None):
            return str(module).removeprefix("mlflow.server.")
    return type(route).__name__


def is_flask_mount(route: Any) -> bool:
    return isinstance(route, Mount) and route.path in ("", "/")


def _handlers(route: Any) -> Iterable[tuple[Any, str]]:
    """(inner route, "module:handler") for each route of an included native router."""
    module = _module(route)
    for inner in getattr(getattr(route, "original_router", None), "routes", None) or []:
        yield inner, f"{module}:{getattr(getattr(inner, 'endpoint', None), '__name__', '?')}"


def native_routes(app: Any) -> Iterable[tuple[Any, str]]:
    """(top-level route, "module:handler") for every handler of mlflow's native FastAPI routers."""
    for route in app.routes:
        if not is_flask_mount(route):
            yield from ((route, name) for _, name in _handlers(route))


def _native_handler(route: Any, scope: MutableMapping[str, Any]) -> str:
    """The handler an included router sends scope to: its routes are relative to the prefix it was included with."""
    unknown = f"{_module(route)}:?"
    prefix = getattr(getattr(route, "include_context", None), "prefix", "") or ""
    path = str(scope.get("path", ""))
    if not path.startswith(prefix):
        return unknown
    inner_scope = {**scope, "path": path[len(prefix) :] or "/", "root_path": ""}
    partial = None
    for inner, name in _handlers(route):
        match, _ = inner.matches(dict(inner_scope))
        if match == Match.FULL:
            return name
        if match == Match.PARTIAL and partial is None:
            partial = name
    return partial or unknown


def flask_endpoint(flask_app: Any, environ: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """The endpoint Flask routes environ to and the values it takes from the path (None: Flask answers the
    request itself: 404, 405 or a redirect)."""
    adapter = flask_app.url_map.bind_to_environ(environ)
    try:
        endpoint, args = adapter.match()
    except Exception:  # noqa: BLE001 - werkzeug's NotFound, MethodNotAllowed, RequestRedirect: no handler runs
        return None
    return str(endpoint), tuple(str(v) for v in args.values())


def classify(app: Any, scope: MutableMapping[str, Any]) -> Route:
    """The rule for a request, as mlflow's app will route it (scope's method already upper-cased)."""
    probe = dict(scope)
    for route in app.routes:
        match, child = route.matches(dict(probe))
        if match != Match.FULL:
            continue
        if not is_flask_mount(route):
            name = _native_handler(route, probe)
            return Route(native_rule(name), name)
        from starlette.middleware.wsgi import build_environ

        mounted = {**probe, **child}
        flask_app = route.app.app  # mlflow's WSGI bridge around its Flask app
        matched = flask_endpoint(flask_app, build_environ(mounted, b""))
        if matched is None:
            return Route(Rule.READ, "<flask routing>", flask_app, mounted)  # Flask answers 404/405/redirect
        endpoint, view_args = matched
        return Route(FLASK_RULES.get(endpoint, Rule.DENY), endpoint, flask_app, mounted, view_args)
    return Route(Rule.READ, "<no route>")  # the app answers 404
