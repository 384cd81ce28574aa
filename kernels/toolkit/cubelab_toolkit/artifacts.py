"""Zarr cubes as run artefacts, lossless in both directions.

mlflow 3.17.2's client loses files of some zarr v3 stores on download: HttpArtifactRepository.list_artifacts
returns [] when a listing holds exactly one file whose name equals the folder's name (it takes the folder
for a file), so a chunk folder `0` holding only chunk `0` (zarr v3's default `c/0/0` keys) is skipped
without an error and the array reads back as fill values. Two fixes, used together:

- `log_zarr` writes zarr v3 with '.'-separated chunk keys (`c.0.0`), a layout in which no folder can hold
  a lone file of its own name, so even a stock `mlflow.artifacts.download_artifacts` gets every chunk;
- `download_artifacts` lists folders exactly (no single-file guess), so stores logged by anyone, in any
  layout, come back whole.
"""

from __future__ import annotations

import atexit
import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import xarray as xr
from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import augmented_raise_for_status, http_request
from mlflow.utils.uri import validate_path_is_safe

from cubelab_toolkit import zarrformat

FLAT_CHUNK_KEYS = {"name": "default", "separator": "."}
_ENDPOINT = "/mlflow-artifacts/artifacts"


class ExactListingRepository(MlflowArtifactsRepository):
    """The proxied artefact store, listed as the server lists it."""

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        url, tail = self.artifact_uri.split(_ENDPOINT, maxsplit=1)
        root = tail.lstrip("/")
        params = {"path": posixpath.join(root, path) if path else root}
        resp = http_request(get_default_host_creds(url), _ENDPOINT, "GET", params=params)
        augmented_raise_for_status(resp)
        infos = []
        for entry in resp.json().get("files", []):
            name = validate_path_is_safe(entry["path"])
            size = int(entry["file_size"]) if "file_size" in entry else None
            infos.append(FileInfo(posixpath.join(path, name) if path else name, entry["is_dir"], size))
        # A file's own path lists as nothing on the S3-backed server, so an exact listing needs no guess.
        return sorted(infos, key=lambda f: f.path)


def download_artifacts(
    run_id: str, artifact_path: str, dst_path: str | Path | None = None, tracking_uri: str | None = None
) -> Path:
    """Download a run's artefact file or folder, every file of it. Returns the local path. Without dst_path the
    files go to a temporary folder that is removed when the process exits (pass dst_path to keep them)."""
    client = mlflow.MlflowClient(tracking_uri)
    root_uri = client.get_run(run_id).info.artifact_uri
    resolved_tracking = tracking_uri or mlflow.get_tracking_uri()
    if root_uri.startswith("mlflow-artifacts:"):
        repo: Any = ExactListingRepository(root_uri, tracking_uri=resolved_tracking)
    else:
        repo = get_artifact_repository(root_uri, tracking_uri=resolved_tracking)
    if dst_path:
        dst = str(dst_path)
    else:
        dst = tempfile.mkdtemp(prefix="cubelab-artifacts-")
        # Lazily opened datasets read from it for as long as the session lives; then it goes.
        atexit.register(shutil.rmtree, dst, True)
    return Path(repo.download_artifacts(artifact_path, dst))


def direct_location(run_id: str, artifact_path: str) -> str | None:
    """The S3 URL of a run's artefact when this session may write there itself, else None.

    On cubelab the tracking server keeps artefacts under $CUBELAB_ARTIFACT_ROOT (s3://BUCKET/mlflow) and the
    session holds the team's S3 keys for that same bucket. Writing there straight, in parallel, is ~4x faster
    than mlflow's one-file-at-a-time upload through the server; the server lists and serves the files as usual.
    """
    root = os.environ.get("CUBELAB_ARTIFACT_ROOT")
    if not root or not os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    artifact_uri = mlflow.MlflowClient().get_run(run_id).info.artifact_uri
    if not artifact_uri.startswith("mlflow-artifacts:/"):
        return None
    relative = artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
    return f"{root.rstrip('/')}/{relative}/{artifact_path.strip('/')}"


def s3_options() -> dict[str, Any]:
    """fsspec/s3fs options from the session's environment (the team's keys and endpoint), stated explicitly so
    that a cached filesystem of other keys is never reused."""
    options: dict[str, Any] = {
        "key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret": os.environ.get("AWS_SECRET_ACCESS_KEY"),
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def _active_run_id(run_id: str | None) -> str:
    if run_id:
        return run_id
    run = mlflow.active_run()
    if run is None:
        raise ValueError("no active run: pass run_id= or call inside mlflow.start_run()")
    return run.info.run_id


def _zarr_encoding(dataset: xr.Dataset, zarr_format: int) -> dict[str, dict[str, Any]]:
    if zarr_format != 3:
        return {}
    return {name: {"chunk_key_encoding": FLAT_CHUNK_KEYS} for name in dataset.variables}


def log_zarr(
    dataset: xr.Dataset,
    artifact_path: str,
    *,
    zarr_format: int | None = None,
    run_id: str | None = None,
    direct: bool = True,
) -> str:
    """Write dataset as a zarr store (chunks as they are) under artifact_path of the run; returns where it went.
    zarr_format: 2 or 3; by default 3, or 2 where zarr-python 2 is installed (cubelab_toolkit.zarrformat).

    Straight to the run's S3 location when the session may (see direct_location), else through the tracking
    server. Either way the layout has no folder holding a lone same-named file (see the module doc)."""
    run_id = _active_run_id(run_id)
    zarr_format = zarrformat.resolve(zarr_format)
    encoding = _zarr_encoding(dataset, zarr_format)
    target = direct_location(run_id, artifact_path) if direct else None
    if target:
        dataset.to_zarr(target, zarr_format=zarr_format, encoding=encoding, consolidated=True, mode="w",
                        storage_options=s3_options())  # fmt: skip
        return target
    with tempfile.TemporaryDirectory(prefix="cubelab-zarr-") as tmp:
        store = Path(tmp) / Path(artifact_path).name
        dataset.to_zarr(store, zarr_format=zarr_format, encoding=encoding, consolidated=zarr_format == 2)
        mlflow.MlflowClient().log_artifacts(run_id, str(store), artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def log_zarr_store(store: str | Path, artifact_path: str, *, run_id: str | None = None, direct: bool = True) -> str:
    """Log an existing zarr store folder (any layout) under artifact_path of the run; returns where it went."""
    run_id = _active_run_id(run_id)
    target = direct_location(run_id, artifact_path) if direct else None
    if target:
        import s3fs

        s3fs.S3FileSystem(**s3_options()).put(str(store).rstrip("/") + "/", target + "/", recursive=True)
        return target
    mlflow.MlflowClient().log_artifacts(run_id, str(store), artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def load_zarr(run_id: str, artifact_path: str, dst_path: str | Path | None = None, direct: bool = True) -> xr.Dataset:
    """Open a zarr artefact of a run lazily with xarray: straight from S3 when the session may read there, else
    downloaded (exactly, any layout) first."""
    target = direct_location(run_id, artifact_path) if direct and dst_path is None else None
    if target:
        return xr.open_zarr(target, consolidated=None, storage_options=s3_options())
    local = download_artifacts(run_id, artifact_path, dst_path)
    return xr.open_zarr(local, consolidated=has_consolidated_metadata(local))


def has_consolidated_metadata(store: Path) -> bool:
    """Whether a local zarr store (format 2 or 3) carries consolidated metadata."""
    if (store / ".zmetadata").exists():
        return True
    meta = store / "zarr.json"
    return meta.exists() and json.loads(meta.read_text()).get("consolidated_metadata") is not None
