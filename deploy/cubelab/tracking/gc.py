"""Permanently removes what a team's members deleted: runs and experiments in mlflow's `deleted` stage (its
deletes are logical: metadata and artefacts stay) and their artefacts. Run in the tracking server's own
environment (the team's database role and S3 keys, nothing of another team's): `cubelab gc` on the embedded
stack, the chart's CronJob under Helm.

mlflow's own `mlflow gc` takes the database URI, password included, as a command-line argument that `ps`
shows to every account on the machine; here it is read from the environment and handed to the same command
inside this process. Artefacts are deleted straight from the team's bucket (CUBELAB_ARTIFACTS_DESTINATION).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from typing import Any


def _artifacts_from_the_bucket(destination: str) -> None:
    """Runs record their artefacts as `mlflow-artifacts:/PATH`, which mlflow's client resolves through a tracking
    server's HTTP proxy. Resolve them as that server does, to DESTINATION/PATH in the team's bucket, and delete
    there with the team's S3 keys (which reach no other bucket, whatever a run's record says)."""
    from urllib.parse import urlsplit

    from mlflow.store.artifact.artifact_repository_registry import (
        _artifact_repository_registry,
        get_artifact_repository,
    )

    def in_bucket(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> Any:
        return get_artifact_repository(f"{destination.rstrip('/')}/{urlsplit(artifact_uri).path.lstrip('/')}")

    _artifact_repository_registry.register("mlflow-artifacts", in_bucket)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cubelab.tracking.gc", description=__doc__)
    parser.add_argument("--older-than", type=float, default=0, metavar="DAYS",
                        help="only what was deleted more than DAYS ago (default: everything deleted)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.older_than < 0:
        parser.error("--older-than must not be negative")
    store, artifacts = os.environ.get("CUBELAB_BACKEND_STORE_URI"), os.environ.get("CUBELAB_ARTIFACTS_DESTINATION")
    if not store or not artifacts:
        parser.error("CUBELAB_BACKEND_STORE_URI and CUBELAB_ARTIFACTS_DESTINATION must be set (the tracking env)")
    from mlflow.cli import gc

    _artifacts_from_the_bucket(artifacts)
    # mlflow's gc insists on a tracking URI although it works on the store directly: the store itself.
    options = ["--backend-store-uri", store, "--artifacts-destination", artifacts, "--tracking-uri", store]
    if args.older_than:
        options += ["--older-than", f"{args.older_than}d"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gc.main(args=options, standalone_mode=False)
    lines = out.getvalue().splitlines()
    runs = sum("Run with ID" in line and "permanently deleted" in line for line in lines)
    experiments = sum("Experiment with ID" in line and "permanently deleted" in line for line in lines)
    team = os.environ.get("CUBELAB_TEAM_NAME", "?")
    print(f"team {team}: {runs} run(s) and {experiments} experiment(s) permanently deleted, with their artefacts")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
