"""Runs one team's mlflow tracking server as a single process (run inside the services environment).

`mlflow server` starts a launcher process that then starts uvicorn in a second process; the launcher
only waits. Here the same initialisation (`initialize_backend_stores`, the server's environment
variables) runs in-process and uvicorn serves from the same process: half the memory, same server.
Secrets (the database URI) come from the environment, never from argv, so `ps` does not show them.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--artifacts-destination", required=True, help="s3://BUCKET/PREFIX")
    parser.add_argument("--static-prefix", default=None, help="serve the UI under this path prefix")
    args = parser.parse_args(argv)
    store_uri = os.environ.get("CUBELAB_BACKEND_STORE_URI")
    if not store_uri:
        parser.error("CUBELAB_BACKEND_STORE_URI is not set")

    from mlflow.server import (
        ARTIFACT_ROOT_ENV_VAR,
        ARTIFACTS_DESTINATION_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
        SERVE_ARTIFACTS_ENV_VAR,
        STATIC_PREFIX_ENV_VAR,
    )

    settings = {
        BACKEND_STORE_URI_ENV_VAR: store_uri,
        REGISTRY_STORE_URI_ENV_VAR: store_uri,
        SERVE_ARTIFACTS_ENV_VAR: "true",
        ARTIFACTS_DESTINATION_ENV_VAR: args.artifacts_destination,
        # Clients get proxied artefact URIs, so they never need S3 keys for tracking.
        ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
        "_MLFLOW_SGI_NAME": "uvicorn",
        # The job runner costs ~1.5 GB and a dozen processes; nothing here uses it.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    if args.static_prefix:
        settings[STATIC_PREFIX_ENV_VAR] = args.static_prefix
    os.environ.update(settings)
    del os.environ["CUBELAB_BACKEND_STORE_URI"]

    from mlflow.server.handlers import initialize_backend_stores

    # Creates the schema on a new database and runs migrations on an old one.
    initialize_backend_stores(store_uri, store_uri, "mlflow-artifacts:/")

    import uvicorn
    from mlflow.server.fastapi_app import app

    uvicorn.run(app, host=args.host, port=args.port, workers=1, access_log=False)


if __name__ == "__main__":
    main()
