"""Zarr cubes as run artefacts come back identical (values and attributes), zarr format 2 and 3."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cubelab_toolkit import download_artifacts, load_zarr, log_zarr, log_zarr_store
from cubelab_toolkit.artifacts import has_consolidated_metadata

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def small_cube() -> xr.Dataset:
    """A little ESDC-like cube whose chunking produces folders holding a single chunk file."""
    rng = np.random.default_rng(3)
    time = pd.date_range("2020-01-05", periods=6, freq="8D")
    lat, lon = np.linspace(-45, 45, 10), np.linspace(-170, 170, 12)
    t2m = rng.normal(15, 8, size=(6, 10, 12)).astype("float32")
    t2m[0, :2, :2] = np.nan
    ds = xr.Dataset(
        {
            "air_temperature_2m": (("time", "lat", "lon"), t2m, {"units": "degC", "long_name": "2 m air temperature"}),
            "land_mask": (("lat", "lon"), rng.random((10, 12)) > 0.4, {"long_name": "land"}),
        },
        coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}), "lon": lon},
        attrs={"title": "platform test cube", "Conventions": "CF-1.9"},
    )
    # One chunk along lat/lon: chunk keys c/<t>/0/0, the layout mlflow's stock client drops.
    return ds.chunk({"time": 3, "lat": 10, "lon": 12})


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def run_id(team: dict[str, Any], unique: str, member_token: str) -> str:
    mlflow.set_tracking_uri(team["tracking_uri"])
    mlflow.set_experiment(unique)
    with mlflow.start_run() as run:
        return run.info.run_id


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_toolkit_zarr_roundtrip_is_identical(run_id: str, zarr_format: int) -> None:
    cube = small_cube()
    log_zarr(cube, "cube.zarr", zarr_format=zarr_format, run_id=run_id)
    back = load_zarr(run_id, "cube.zarr")
    xr.testing.assert_identical(back.load(), cube.load())
    # The toolkit's layout also survives a stock mlflow client's download.
    stock = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="cube.zarr"))
    reopened = xr.open_zarr(stock, consolidated=has_consolidated_metadata(stock))
    xr.testing.assert_identical(reopened.load(), cube.load())


def test_default_v3_layout_logged_with_stock_mlflow_comes_back_whole(run_id: str) -> None:
    cube = small_cube()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "cube.zarr"
        cube.to_zarr(store, zarr_format=3)
        expected = files_under(store)
        assert any(f.endswith("/c/0/0/0") for f in expected)
        mlflow.MlflowClient().log_artifacts(run_id, str(store), "cube.zarr")
    local = download_artifacts(run_id, "cube.zarr")
    assert files_under(local) == expected
    xr.testing.assert_identical(xr.open_zarr(local, consolidated=False).load(), cube.load())


def test_stock_client_still_drops_lone_chunks(run_id: str) -> None:
    """Why the toolkit's download exists: mlflow 3.17.2's own download silently skips a folder `0` that holds
    only a file `0`. If this test starts failing, mlflow has fixed its client and the workaround can go."""
    cube = small_cube()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "cube.zarr"
        cube.to_zarr(store, zarr_format=3)
        expected = files_under(store)
        mlflow.MlflowClient().log_artifacts(run_id, str(store), "cube.zarr")
    stock = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="cube.zarr"))
    missing = expected - files_under(stock)
    assert missing and all(f.split("/")[-1] == f.split("/")[-2] == "0" for f in missing), missing


def test_single_file_artifact_downloads_as_a_file(run_id: str) -> None:
    mlflow.MlflowClient().log_text(run_id, "just text", "notes/0")
    local = download_artifacts(run_id, "notes/0")
    assert local.is_file() and local.read_text() == "just text"
    assert os.path.basename(local) == "0"


@pytest.fixture
def team_session(team: dict[str, Any], deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a user's server of the team gets: the team's S3 keys and the artefact root."""
    monkeypatch.setenv("CUBELAB_ARTIFACT_ROOT", f"s3://{team['bucket']}/{team['artifact_prefix']}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", team["s3"]["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", team["s3"]["secret_key"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", deployment["s3_endpoint"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_direct_logging_lands_where_the_server_serves_it(run_id: str, team_session: None) -> None:
    cube = small_cube()
    where = log_zarr(cube, "direct/cube.zarr", run_id=run_id)
    assert where.startswith("s3://") and run_id in where
    # The tracking server lists and serves what the session wrote: a stock client downloads it whole.
    stock = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="direct/cube.zarr"))
    xr.testing.assert_identical(xr.open_zarr(stock, consolidated=None).load(), cube.load())
    xr.testing.assert_identical(load_zarr(run_id, "direct/cube.zarr").load(), cube.load())


def test_direct_store_upload_of_any_layout(run_id: str, team_session: None) -> None:
    cube = small_cube()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "cube.zarr"
        cube.to_zarr(store, zarr_format=3)  # default layout, lone chunk files included
        expected = files_under(store)
        log_zarr_store(store, "direct/store.zarr", run_id=run_id)
    local = download_artifacts(run_id, "direct/store.zarr")
    assert files_under(local) == expected
