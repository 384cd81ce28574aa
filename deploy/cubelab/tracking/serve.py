"""Runs one team's mlflow tracking server as a single process (run inside the services environment).

`mlflow server` starts a launcher process that then starts uvicorn in a second process; the launcher
only waits. Here the same initialisation (`initialize_backend_stores`, the server's environment
variables) runs in-process and uvicorn serves from the same process: half the memory, same server.
Secrets (the database URI) come from the environment, never from argv, so `ps` does not show them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from cubelab.plan import LISTEN_FDS_VAR
from cubelab.tracking.origins import allowed_origins, public_urls

# mlflow 3.17.2's own defaults (mlflow.server.security_utils.get_default_allowed_hosts): loopback names and
# private addresses. Spelled out because importing mlflow.server before the settings are in place is not
# possible (see main); a test compares this list with mlflow's.
MLFLOW_DEFAULT_HOSTS = (
    ["localhost", "127.0.0.1", "[::1]", "0.0.0.0", "localhost:*", "127.0.0.1:*", "[[]::1]:*", "0.0.0.0:*"]  # noqa: S104
    + ["192.168.*", "10.*"]
    + [f"172.{n}.*" for n in range(16, 32)]
    + ["fc00:*", "fd00:*"]
)


def allowed_hosts(env: Mapping[str, str]) -> list[str]:
    """Host headers the server accepts (mlflow's DNS-rebinding guard): mlflow's defaults, the hub's and the UI's
    public hosts (requests through the hub's proxy keep them), and $CUBELAB_ALLOWED_HOSTS, the names other
    containers use (tracking-TEAM:5000 under compose, the Service's names on Kubernetes)."""
    hosts = list(MLFLOW_DEFAULT_HOSTS)
    for host in (urlsplit(url).netloc for url in public_urls(env)):
        if host and host not in hosts:
            hosts.append(host)
    hosts += [h.strip() for h in env.get("CUBELAB_ALLOWED_HOSTS", "").split(",") if h.strip()]
    return hosts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    env = os.environ.get
    # Every target sets these through the environment (cubelab.plan.tracking_env); flags are for trying by hand.
    parser.add_argument("--host", default=env("CUBELAB_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("CUBELAB_PORT", "0")) or None)
    parser.add_argument(
        "--artifacts-destination",
        default=env("CUBELAB_ARTIFACTS_DESTINATION"),
        help="s3://BUCKET/PREFIX (default: $CUBELAB_ARTIFACTS_DESTINATION)",
    )
    parser.add_argument(
        "--static-prefix",
        default=env("CUBELAB_SERVICE_PREFIX"),
        help="serve the UI under this path prefix (default: $CUBELAB_SERVICE_PREFIX)",
    )
    args = parser.parse_args(argv)
    if args.port is None:
        parser.error("--port (or $CUBELAB_PORT) is required")
    if not args.artifacts_destination:
        parser.error("--artifacts-destination (or $CUBELAB_ARTIFACTS_DESTINATION) is required")
    store_uri = os.environ.get("CUBELAB_BACKEND_STORE_URI")
    if not store_uri:
        parser.error("CUBELAB_BACKEND_STORE_URI is not set")

    # mlflow.server registers its routes when imported, reading the static prefix then: so every setting
    # goes into the environment before the first mlflow.server import. Names: mlflow.server.constants and
    # handlers.STATIC_PREFIX_ENV_VAR (checked against mlflow below).
    settings = {
        "_MLFLOW_SERVER_FILE_STORE": store_uri,
        "_MLFLOW_SERVER_REGISTRY_STORE": store_uri,
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": args.artifacts_destination,
        # Clients get proxied artefact URIs, so they never need S3 keys for tracking.
        "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
        "_MLFLOW_SGI_NAME": "uvicorn",
        # The job runner costs ~1.5 GB and a dozen processes; nothing here uses it.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    if args.static_prefix:
        settings["_MLFLOW_STATIC_PREFIX"] = args.static_prefix
    settings["MLFLOW_SERVER_ALLOWED_HOSTS"] = ",".join(allowed_hosts(os.environ))
    # mlflow refuses changes from pages of origins it does not know (only localhost by default), which would
    # leave the UI read-only at any real host name: its own origins are the hub's and the UI's.
    # (cubelab.tracking.origins then removes every grant mlflow makes to any other origin.)
    settings["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = ",".join(allowed_origins(os.environ))
    os.environ.update(settings)
    del os.environ["CUBELAB_BACKEND_STORE_URI"]

    from mlflow.server import constants, handlers
    from mlflow.server.handlers import initialize_backend_stores

    names = (constants.BACKEND_STORE_URI_ENV_VAR, constants.REGISTRY_STORE_URI_ENV_VAR,
             constants.SERVE_ARTIFACTS_ENV_VAR, constants.ARTIFACTS_DESTINATION_ENV_VAR,
             constants.ARTIFACT_ROOT_ENV_VAR, handlers.STATIC_PREFIX_ENV_VAR)  # fmt: skip
    if unknown := set(names) - {*settings, "_MLFLOW_STATIC_PREFIX"}:
        raise SystemExit(f"cubelab: this mlflow reads settings cubelab does not set: {sorted(unknown)}")

    # Creates the schema on a new database. On an older one, mlflow migrates by itself only when the new release
    # added tables, and otherwise refuses to start: `cubelab upgrade` (and Helm's pre-upgrade Job) migrate
    # explicitly, after a backup, before a new server starts.
    initialize_backend_stores(store_uri, store_uri, "mlflow-artifacts:/")

    import uvicorn
    from mlflow.server.fastapi_app import app

    served: Any = app
    if os.environ.get("CUBELAB_HUB_API_URL"):
        from cubelab.tracking.auth import wrap

        served = wrap(app)
    else:
        print("cubelab: CUBELAB_HUB_API_URL is not set: this tracking server runs WITHOUT authentication", flush=True)
    from cubelab.tracking import metrics

    served = metrics.wrap(served, store_uri)
    if (fd := handed_socket(args.port)) is not None:  # the embedded stack's socket holder keeps the port
        uvicorn.run(served, fd=fd, workers=1, access_log=False)
    else:
        uvicorn.run(served, host=args.host, port=args.port, workers=1, access_log=False)


def handed_socket(port: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """The listening socket this process was handed for port ($CUBELAB_LISTEN_FDS, "PORT=FD,..."), if any."""
    for item in environ.get(LISTEN_FDS_VAR, "").split(","):
        key, _, fd = item.partition("=")
        if key == str(port) and fd.isdigit():
            return int(fd)
    return None


if __name__ == "__main__":
    main()
