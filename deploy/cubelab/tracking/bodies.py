"""Request bodies read the way mlflow reads them, checked, and handed on in canonical form.

The body is parsed by mlflow's own request parser (`_get_request_message`, with its JSON forcing and its
decoding of double-encoded bodies) inside a request context of mlflow's own Flask app, from the same WSGI
environ its bridge builds. The checks run on the resulting protobuf message, and the handler gets that
message re-serialised (`message_to_json`, what mlflow's client sends). Whatever the encoding trick (a JSON
string holding the object, odd content types, duplicated keys, query strings on a POST), what the handler
reads is what was checked.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from cubelab.tracking.routes import Route, Rule

AUTHOR_TAG = "mlflow.user"
# The handlers whose `source` field names where a model's files are read from.
SOURCE_FIELDS = {"_create_model_version": "source"}
LOCATION_FIELDS = ("artifact_location", "artifact_uri")
# A tag the server opens as a location: a trace's artefacts are read from it (mlflow.utils.mlflow_tags
# MLFLOW_ARTIFACT_LOCATION; get-trace-artifact follows it). Set through a trace's tags, it is a location too.
LOCATION_TAGS = ("mlflow.artifactLocation",)
# Model-version sources the server resolves inside the team's own store.
SOURCE_SCHEMES = ("runs", "models")

# Where each stored location comes from: the requests (handler, field or tag) that set it, each checked by
# `confined` below when it arrives. A run's and a logged model's locations are made by the server from their
# experiment's artifact_location; a trace's too, unless a request sets its location tag.
LOCATION_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "experiment": (("_create_experiment", "artifact_location"),),
    "trace": (("_create_experiment", "artifact_location"), ("_set_trace_tag", "mlflow.artifactLocation"),
              ("_set_trace_tag_v3", "mlflow.artifactLocation"), ("_start_trace_v3", "mlflow.artifactLocation")),
    "model version": (("_create_model_version", "source"),),
}  # fmt: skip
# Every handler that opens a stored location, keyed by handler as the route rules are, with the kind of object
# whose location it opens. deploy/tests/test_tracking_routes.py walks mlflow's code: a handler that reaches one
# of mlflow's artefact-repository resolvers and is neither here nor refused (Rule.DENY) fails it, so an mlflow
# upgrade that adds one cannot slip through.
OPENED_LOCATIONS: dict[str, str] = {
    "_list_artifacts": "experiment",  # a run's artifact_uri
    "serve_artifacts": "experiment",
    "serve_upload_artifact": "experiment",
    "_list_logged_model_artifacts": "experiment",  # a logged model's artifact_location
    "serve_get_logged_model_artifact": "experiment",
    "serve_get_trace_artifact": "trace",
    "serve_model_version_artifact": "model version",
}


class Refusal(Exception):
    """A request the middleware answers itself, in mlflow's error format."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"error_code": self.code, "message": self.message}).encode()


@functools.cache
def request_classes() -> dict[str, Any]:
    """Handler name -> the protobuf request class mlflow parses its body into."""
    from mlflow.server import handlers

    pairs = zip(handlers.get_endpoints(), handlers.get_endpoints(lambda cls: cls), strict=True)
    return {handler.__name__: cls for (_, handler, _), (_, cls, _) in pairs if isinstance(cls, type)}


def _fields(message: Any) -> Iterator[tuple[Any, Any]]:
    """(field descriptor, value) for every field set in message and its sub-messages."""
    for field, value in message.ListFields():
        yield field, value
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        items = value if _repeated(field) else [value]
        for item in items:
            yield from _fields(item)


def _repeated(field: Any) -> bool:
    try:
        return bool(field.is_repeated)
    except AttributeError:  # older protobuf
        return bool(field.label == field.LABEL_REPEATED)


def _strings(message: Any) -> Iterator[str]:
    for field, value in _fields(message):
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                yield str(key)
                if isinstance(item, str):
                    yield item
        elif isinstance(value, str):
            yield value
        elif _repeated(field) and field.message_type is None:
            yield from (v for v in value if isinstance(v, str))


def _keyed(message: Any, key: str) -> bool:
    """Whether message is a tag (or SetTag, DeleteTag) whose `key` is key."""
    return any(f.name == "key" and v == key for f, v in message.ListFields())


def _tag_places(message: Any, key: str) -> Iterator[tuple[Any, Any]]:
    """Places in message that name tag `key`: map entries keyed so, and tag messages (a `key` field) or requests
    (SetTag, DeleteTag) whose key is it. Yields (container, key-or-None): the map and its key, or the tag message."""
    if _keyed(message, key):
        yield message, None
    for field, value in _fields(message):
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if key in value:
                yield value, key
            continue
        for item in value if _repeated(field) else [value]:
            if _keyed(item, key):
                yield item, None


def _author_keys(message: Any) -> Iterator[tuple[Any, Any]]:
    """Places in message that name the author tag (mlflow.user)."""
    return _tag_places(message, AUTHOR_TAG)


def confined(uri: str, bucket: str, prefix: str, extra_schemes: tuple[str, ...] = ()) -> bool:
    """Whether an artefact location or model source stays inside the team's own store: mlflow's proxied
    store (`mlflow-artifacts:/...`, no host) or `s3://<team bucket>/<artifact prefix>/...`."""
    lowered = uri.lower()
    if "\\" in uri or any(code in lowered for code in ("%2e", "%2f", "%5c", "%00")):
        return False
    parts = urlsplit(uri)
    if ".." in parts.path.split("/") or parts.query or parts.fragment:
        return False
    if parts.scheme == "mlflow-artifacts":
        return not parts.netloc and (parts.path.startswith("/") or not parts.path)
    if parts.scheme == "s3":
        key = parts.path.lstrip("/")
        return parts.netloc == bucket and (key == prefix or key.startswith(prefix.rstrip("/") + "/"))
    return parts.scheme in extra_schemes and bool(parts.path or parts.netloc)


def _tagged_locations(message: Any) -> Iterator[tuple[str, Any]]:
    """(tag, value) for each location tag in message, wherever _tag_places finds a tag."""
    for tag in LOCATION_TAGS:
        for container, key in _tag_places(message, tag):
            yield tag, container[key] if key is not None else getattr(container, "value", "")


def _check_locations(route: Route, message: Any, bucket: str, prefix: str) -> None:
    allowed = f"mlflow-artifacts:/... or s3://{bucket}/{prefix}/..."
    for field, value in _fields(message):
        if field.name in LOCATION_FIELDS and isinstance(value, str) and value and not confined(value, bucket, prefix):
            raise Refusal(400, "INVALID_PARAMETER_VALUE",
                          f"{field.name} {value!r} is outside this team's artefact store; use {allowed}")  # fmt: skip
    for tag, value in _tagged_locations(message):
        if not isinstance(value, str) or not confined(value, bucket, prefix):
            raise Refusal(400, "INVALID_PARAMETER_VALUE",
                          f"tag {tag} {value!r} is outside this team's artefact store; use {allowed}")  # fmt: skip
    if (name := SOURCE_FIELDS.get(route.handler)) and (value := getattr(message, name, "")):
        if not confined(value, bucket, prefix, SOURCE_SCHEMES):
            message = f"{name} {value!r} is outside this team's artefact store; use runs:/, models:/, {allowed}"
            raise Refusal(400, "INVALID_PARAMETER_VALUE", message)


def _set_author(route: Route, message: Any, user: str) -> None:
    """On creation the server names the author: every mlflow.user tag says user, and a run's user_id too."""
    for container, key in list(_author_keys(message)):
        if key is None:
            container.value = user
        else:
            container[key] = user
    if route.handler == "_create_run":
        message.user_id = user
        if not any(tag.key == AUTHOR_TAG for tag in message.tags):
            message.tags.add(key=AUTHOR_TAG, value=user)


def parse(route: Route, environ: dict[str, Any]) -> tuple[Any, bool]:
    """The request message as mlflow's handler will parse it, and whether it came from the body.

    mlflow's own steps (`_get_request_message`), except that where mlflow would go on with a half-parsed
    message (a body that is not JSON, not an object, or of the wrong types) the request is refused."""
    import flask
    from mlflow.exceptions import MlflowException
    from mlflow.server import handlers
    from mlflow.utils.proto_json_utils import parse_dict

    message = request_classes()[route.handler]()
    try:
        with route.flask_app.request_context(environ):
            request = flask.request
            if request.method == "GET" and request.args:
                return handlers._get_request_message(message, flask_request=request), False
            data = handlers._get_request_json(request)  # mlflow's content-type check and forced JSON
            if data is None and request.get_data().strip():
                raise Refusal(400, "INVALID_PARAMETER_VALUE", "the request body is not JSON")
            if isinstance(data, str):  # what mlflow does for old clients' double-encoded bodies
                data = json.loads(data)
            data = {} if data is None else data
            if not isinstance(data, dict):
                raise Refusal(400, "INVALID_PARAMETER_VALUE", "the request body must be a JSON object")
            handlers._reject_conflicting_field_aliases(data, message.DESCRIPTOR)
            parse_dict(data, message)
            return message, True
    except Refusal:
        raise
    except MlflowException as exc:
        raise Refusal(exc.get_http_status_code(), exc.error_code, exc.message) from None
    except RecursionError:
        raise Refusal(400, "INVALID_PARAMETER_VALUE", "the request body is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - what mlflow's parser rejects is the client's malformed body
        raise Refusal(400, "INVALID_PARAMETER_VALUE", f"malformed request body: {exc}"[:500]) from None


def check(route: Route, scope: MutableMapping[str, Any], body: bytes, user: str, bucket: str, prefix: str) -> bytes:
    """Check a request to a READ, WRITE or CREATE handler; returns the body the handler gets."""
    from mlflow.utils.proto_json_utils import message_to_json
    from starlette.middleware.wsgi import build_environ

    if route.handler not in request_classes():
        return body  # a handler of mlflow's own (UI files, bulk metric reads) that parses nothing of ours
    environ = build_environ(scope, body)
    message, from_body = parse(route, environ)
    view_args = route.view_args
    if any("\x00" in s for s in [*_strings(message), *view_args]):
        raise Refusal(400, "INVALID_PARAMETER_VALUE", "NUL characters are not allowed in names, keys or values")
    if route.rule is Rule.READ:
        return body
    if route.rule is Rule.CREATE:
        _set_author(route, message, user)
    elif AUTHOR_TAG in view_args or next(_author_keys(message), None) is not None:
        raise Refusal(403, "PERMISSION_DENIED", f"the {AUTHOR_TAG} tag is set by the server")
    _check_locations(route, message, bucket, prefix)
    if not from_body:
        return body
    try:
        return message_to_json(message).encode()
    except Exception as exc:  # noqa: BLE001 - e.g. invalid UTF-8 that protobuf accepted
        raise Refusal(400, "INVALID_PARAMETER_VALUE", f"malformed request body: {type(exc).__name__}") from None
