"""The toolkit's zarr layout and metadata detection, with a local file store (no server needed)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import xarray as xr

from cubelab_toolkit.artifacts import has_consolidated_metadata, log_zarr

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cube() -> xr.Dataset:
    data = np.arange(4 * 6 * 8, dtype="float32").reshape(4, 6, 8)
    return xr.Dataset({"t": (("time", "lat", "lon"), data, {"units": "K"})}, attrs={"title": "x"}).chunk(
        {"time": 2, "lat": 6, "lon": 8}
    )


@pytest.fixture
def local_run(tmp_path: Path) -> str:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("local", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        return run.info.run_id


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_log_zarr_writes_a_layout_without_lone_same_named_files(local_run: str, zarr_format: int) -> None:
    log_zarr(cube(), "cube.zarr", zarr_format=zarr_format, run_id=local_run)
    store = Path(mlflow.get_run(local_run).info.artifact_uri.removeprefix("file://")) / "cube.zarr"
    for folder in [store, *[p for p in store.rglob("*") if p.is_dir()]]:
        entries = list(folder.iterdir())
        lone = len(entries) == 1 and entries[0].is_file() and entries[0].name == folder.name
        assert not lone, folder
    assert not (store / "t" / "c").exists()  # chunk keys are flat: t/c.0.0.0, not t/c/0/0/0
    xr.testing.assert_identical(
        xr.open_zarr(store, consolidated=has_consolidated_metadata(store)).load(), cube().load()
    )


def test_consolidated_metadata_detection(tmp_path: Path) -> None:
    cube().to_zarr(tmp_path / "v2.zarr", zarr_format=2, consolidated=True)
    cube().to_zarr(tmp_path / "v3.zarr", zarr_format=3, consolidated=False)
    cube().to_zarr(tmp_path / "v3c.zarr", zarr_format=3, consolidated=True)
    assert has_consolidated_metadata(tmp_path / "v2.zarr")
    assert not has_consolidated_metadata(tmp_path / "v3.zarr")
    assert has_consolidated_metadata(tmp_path / "v3c.zarr")


def test_temporary_download_folder_is_removed_at_exit(tmp_path: Path) -> None:
    """download_artifacts without dst_path must not leave folders behind in /tmp (one per call, forever)."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import mlflow
        from cubelab_toolkit.artifacts import download_artifacts
        mlflow.set_tracking_uri({f"sqlite:///{tmp_path}/mlflow.db"!r})
        (p := __import__("pathlib").Path({str(tmp_path / "a.txt")!r})).write_text("x")
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(p))
        local = download_artifacts(run.info.run_id, "a.txt")
        assert local.read_text() == "x"
        print(local.parent)
    """)
    # A fresh process, without the MLFLOW_* variables earlier tests leave (mlflow.set_experiment exports one).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("cubelab-artifacts-")
    assert not folder.exists()
