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

import json
import posixpath
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
    """Download a run's artefact file or folder, every file of it. Returns the local path."""
    client = mlflow.MlflowClient(tracking_uri)
    root_uri = client.get_run(run_id).info.artifact_uri
    resolved_tracking = tracking_uri or mlflow.get_tracking_uri()
    if root_uri.startswith("mlflow-artifacts:"):
        repo: Any = ExactListingRepository(root_uri, tracking_uri=resolved_tracking)
    else:
        repo = get_artifact_repository(root_uri, tracking_uri=resolved_tracking)
    dst = str(dst_path) if dst_path else tempfile.mkdtemp(prefix="cubelab-artifacts-")
    return Path(repo.download_artifacts(artifact_path, dst))


def log_zarr(dataset: xr.Dataset, artifact_path: str, *, zarr_format: int = 3, run_id: str | None = None) -> None:
    """Write dataset as a zarr store (chunks as they are) and log it under artifact_path of the active run."""
    encoding: dict[str, dict[str, Any]] = {}
    if zarr_format == 3:
        encoding = {name: {"chunk_key_encoding": FLAT_CHUNK_KEYS} for name in dataset.variables}
    with tempfile.TemporaryDirectory(prefix="cubelab-zarr-") as tmp:
        store = Path(tmp) / Path(artifact_path).name
        dataset.to_zarr(store, zarr_format=zarr_format, encoding=encoding, consolidated=zarr_format == 2)
        if run_id:
            mlflow.MlflowClient().log_artifacts(run_id, str(store), artifact_path)
        else:
            mlflow.log_artifacts(str(store), artifact_path)


def load_zarr(run_id: str, artifact_path: str, dst_path: str | Path | None = None) -> xr.Dataset:
    """Download a zarr artefact of a run (any layout) and open it lazily with xarray."""
    local = download_artifacts(run_id, artifact_path, dst_path)
    return xr.open_zarr(local, consolidated=has_consolidated_metadata(local))


def has_consolidated_metadata(store: Path) -> bool:
    """Whether a local zarr store (format 2 or 3) carries consolidated metadata."""
    if (store / ".zmetadata").exists():
        return True
    meta = store / "zarr.json"
    return meta.exists() and json.loads(meta.read_text()).get("consolidated_metadata") is not None
