"""Runs one team's mlflow tracking server as a single process (run inside the services environment).

`mlflow server` starts a launcher process that then starts uvicorn in a second process; the launcher
only waits. Here the same initialisation (`initialize_backend_stores`, the server's environment
variables) runs in-process and uvicorn serves from the same process: half the memory, same server.
Secrets (the database URI) come from the environment, never from argv, so `ps` does not show them.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    env = os.environ.get
    # Containers set these through the environment (images/tracking); the embedded stack passes flags.
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
    os.environ.update(settings)
    del os.environ["CUBELAB_BACKEND_STORE_URI"]

    from mlflow.server import constants, handlers
    from mlflow.server.handlers import initialize_backend_stores

    names = (constants.BACKEND_STORE_URI_ENV_VAR, constants.REGISTRY_STORE_URI_ENV_VAR,
             constants.SERVE_ARTIFACTS_ENV_VAR, constants.ARTIFACTS_DESTINATION_ENV_VAR,
             constants.ARTIFACT_ROOT_ENV_VAR, handlers.STATIC_PREFIX_ENV_VAR)  # fmt: skip
    if unknown := set(names) - {*settings, "_MLFLOW_STATIC_PREFIX"}:
        raise SystemExit(f"cubelab: this mlflow reads settings cubelab does not set: {sorted(unknown)}")

    # Creates the schema on a new database and runs migrations on an old one.
    initialize_backend_stores(store_uri, store_uri, "mlflow-artifacts:/")

    import uvicorn
    from mlflow.server.fastapi_app import app

    served: Any = app
    if os.environ.get("CUBELAB_HUB_API_URL"):
        from cubelab.tracking.auth import wrap

        served = wrap(app)
    else:
        print("cubelab: CUBELAB_HUB_API_URL is not set: this tracking server runs WITHOUT authentication", flush=True)
    uvicorn.run(served, host=args.host, port=args.port, workers=1, access_log=False)


if __name__ == "__main__":
    main()
