"""The toolkit in a zarr-python 2 environment, as in the xcube kernel (xcube needs zarr < 3): the packages of
kernels/xcube/environment.yml that PyPI has (all but xcube itself), installed with uv into a throwaway environment.
There the toolkit writes zarr format 2 by default, reads it back, logs and loads it as an artefact, its sampler
reads the zarr arrays directly, ml4xcube samples the cube, and format 3 is refused with a message that says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cubelab import locks

ROOT = Path(__file__).resolve().parents[3]
XCUBE_KERNEL = ROOT / "kernels" / "xcube" / "environment.yml"
NOT_ON_PYPI = {"python", "pip", "xcube", "ipykernel", "matplotlib"}  # conda-forge only, or not needed here

CHECK = r"""
import json, os, pathlib, sys, tempfile
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # a file store: mlflow-skinny has no database backend
import mlflow, numpy as np, xarray as xr, zarr
from cubelab_toolkit import load_zarr, log_zarr
from cubelab_toolkit.cube import open_cube, synthetic_cube, write_cube
from cubelab_toolkit.sampler import iter_point_blocks, zarr_source

tmp = pathlib.Path(tempfile.mkdtemp())
ds = synthetic_cube(layout="v2.1.1", years=1, resolution=4.0, lat_range=(30.0, 70.0), lon_range=(-10.0, 30.0))
url = write_cube(ds, str(tmp / "cube.zarr"), chunking="timeseries")
opened = open_cube(url)
out = {"zarr": zarr.__version__, "format2_files": (tmp / "cube.zarr" / ".zgroup").exists(),
       "round_trip": bool(opened.load().identical(ds.load())),
       "direct_read": zarr_source(open_cube(url)["air_temperature_2m"].data) is not None}
blocks = iter_point_blocks(open_cube(url), ["air_temperature_2m"], "land_surface_temperature")
out["sampled"] = sum(len(b.y) for b in blocks)
mlflow.set_tracking_uri((tmp / "mlruns").as_uri())
with mlflow.start_run() as run:
    log_zarr(ds.isel(time=slice(0, 4)), "cube.zarr", direct=False)
out["artefact_identical"] = bool(load_zarr(run.info.run_id, "cube.zarr").load()
                                 .identical(ds.isel(time=slice(0, 4)).load()))
from ml4xcube.datasets.xr_dataset import XrDataset
sampler = XrDataset(ds=open_cube(url)[["land_surface_temperature", "air_temperature_2m"]], num_chunks=1,
                    rand_chunk=False, apply_mask=False)
out["ml4xcube_samples"] = int(len(sampler.get_datasets()["air_temperature_2m"]))
try:
    write_cube(ds, str(tmp / "v3.zarr"), zarr_format=3)
    out["format3"] = "written"
except ValueError as e:
    out["format3"] = str(e)
print(json.dumps(out))
"""


def requirements() -> list[str]:
    spec = yaml.safe_load(XCUBE_KERNEL.read_text())
    out: list[str] = []
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            out += dep["pip"]
        elif (name := dep.split("=")[0]) not in NOT_ON_PYPI:
            out.append(f"{name}=={dep.split('=', 1)[1]}")
    return out


@pytest.fixture(scope="module")
def zarr2_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = locks.uv_binary()
    if uv is None:
        pytest.skip("uv is not installed (make test installs it with cubelab)")
    venv = tmp_path_factory.mktemp("zarr2") / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "--quiet", "--python", str(python), *locks.pip_sources()]
    done = subprocess.run([*install, "--constraint", str(locks.CONSTRAINTS), *requirements()],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run([*install, "--no-deps", str(ROOT / "kernels" / "toolkit")], check=True, capture_output=True)
    return python


def test_the_xcube_kernel_pins_zarr_2() -> None:
    assert "zarr==2.18.7" in requirements() and not any(r.startswith("xcube") for r in requirements())


def test_the_toolkit_reads_and_writes_zarr_2_where_zarr_python_is_2(zarr2_python: Path) -> None:
    # Nothing of mlflow's settings from this test session (another test's experiment, server or token).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run([str(zarr2_python), "-c", CHECK], capture_output=True, text=True, check=False, timeout=600,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["zarr"].startswith("2.")
    assert out["format2_files"] and out["round_trip"] and out["artefact_identical"], out
    assert out["direct_read"] and out["sampled"] > 0 and out["ml4xcube_samples"] > 0, out
    assert "zarr format 3 needs zarr-python 3" in out["format3"], out
