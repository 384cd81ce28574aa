"""The scaler, the sampler and preprocessing on a real dask cluster (distributed's LocalCluster: a scheduler and
two worker processes, as a dask-gateway cluster has) give what the kernel's own threads give."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from cubelab_toolkit.cube import open_cube, synthetic_cube, task_chunks, write_cube
from cubelab_toolkit.preprocess import preprocess_cube, scaler_of
from cubelab_toolkit.sampler import points_dataset
from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import TRAIN, with_split
from cubelab_toolkit.train_sklearn import train_sgd

VARIABLES = ["air_temperature_2m", "land_surface_temperature"]


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def cube_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("cubes") / "cube.zarr")
    return write_cube(synthetic_cube(years=2, resolution=4.0, seed=5), url, chunking="timeseries")


def test_scaler_on_a_cluster_equals_the_kernels_and_uses_the_training_split_only(client: Client, cube_url: str) -> None:
    ds = with_split(open_cube(cube_url), "block", seed=3, block=(23, 5, 5))
    here = Scaler.fit(ds, VARIABLES, ds["split"])
    there = Scaler.fit(ds, VARIABLES, ds["split"], client=client)
    for name in VARIABLES:
        assert there.mean[name] == pytest.approx(here.mean[name], rel=1e-6)
        assert there.std[name] == pytest.approx(here.std[name], rel=1e-6)
        train = ds[name].values[ds["split"].values == TRAIN]
        assert there.mean[name] == pytest.approx(float(np.nanmean(train)), rel=1e-5)
        everything = Scaler.fit(ds, [name], client=client)
        assert everything.mean[name] != pytest.approx(there.mean[name], rel=1e-7)  # the split matters
    assert client.run(lambda: 1)  # the workers are alive: the cluster did the work, not a fallback


def test_points_dataset_counts_on_the_cluster(client: Client, cube_url: str) -> None:
    ds = with_split(open_cube(cube_url), "block", seed=3, block=(23, 5, 5))
    here = points_dataset(ds, ["air_temperature_2m"], "land_surface_temperature", which=TRAIN)
    there = points_dataset(ds, ["air_temperature_2m"], "land_surface_temperature", which=TRAIN, client=client)
    assert there.sizes["sample"] == here.sizes["sample"] > 0
    np.testing.assert_array_equal(there["y"].compute(scheduler=client), here["y"].values)


def test_task_chunks_group_whole_stored_chunks(cube_url: str) -> None:
    ds = open_cube(cube_url)  # 92 x 64 x 64 stored chunks of a 92 x 30 x 90 cube: one chunk holds all lat
    stored = {d: max(c) for d, c in ds["air_temperature_2m"].chunksizes.items()}
    assert task_chunks(ds, 64.0) == {"time": ds.sizes["time"], "lat": ds.sizes["lat"], "lon": ds.sizes["lon"]}
    small = task_chunks(ds, 0.5)  # 0.5 MB: fewer than a stored chunk's cells, so one stored chunk per task
    assert small == {d: min(stored[d], ds.sizes[d]) for d in stored}
    with pytest.raises(ValueError, match="target_mb must be positive"):
        task_chunks(ds, 0)
    opened = open_cube(cube_url, task_mb=64.0)
    assert opened["air_temperature_2m"].data.numblocks == (1, 1, 1)
    xr.testing.assert_identical(opened.load(), ds.load())


def test_preprocessing_on_a_cluster_writes_the_standardised_cube_and_its_lineage(
    client: Client, cube_url: str, tmp_path: Path
) -> None:
    split = {"method": "block", "seed": 42, "block": (23, 5, 5)}
    # Small tasks (one stored chunk each), so the statistics are reductions over many tasks.
    local = preprocess_cube(cube_url, str(tmp_path / "local.zarr"), VARIABLES, split=split, standardise=True,
                            task_mb=0.5)  # fmt: skip
    remote = preprocess_cube(cube_url, str(tmp_path / "remote.zarr"), VARIABLES, split=split, standardise=True,
                             client=client, task_mb=0.5)  # fmt: skip
    a, b = open_cube(local.url).load(), open_cube(remote.url).load()
    xr.testing.assert_identical(a, b)
    assert remote.dataset.digest == local.dataset.digest  # the same bytes were written
    for name in VARIABLES:
        train = b[name].values[b["split"].values == TRAIN]
        assert abs(float(np.nanmean(train))) < 1e-4 and float(np.nanstd(train)) == pytest.approx(1.0, rel=1e-4)
        source = open_cube(cube_url)[name]
        assert b[name].encoding["chunks"] == tuple(max(c) for c in source.chunks)  # stored like the source
    assert scaler_of(b) == remote.scaler and b.attrs["source_cube"] == cube_url
    profile = remote.dataset.profile
    assert profile["variables"] == sorted([*VARIABLES, "split"]) and profile["split"]["seed"] == 42


def test_training_on_a_preprocessed_cube_uses_its_scaler(client: Client, cube_url: str, tmp_path: Path) -> None:
    prepared = preprocess_cube(cube_url, str(tmp_path / "train.zarr"), VARIABLES,
                               split={"method": "block", "seed": 42, "block": (23, 5, 5)}, client=client)  # fmt: skip
    cube = open_cube(prepared.url)
    np.testing.assert_array_equal(cube["air_temperature_2m"].values, open_cube(cube_url)["air_temperature_2m"].values)
    result = train_sgd(cube, ["air_temperature_2m"], "land_surface_temperature", epochs=2, scaler=scaler_of(cube))
    assert result.scaler == prepared.scaler and result.test_rmse < 1.5
    with pytest.raises(ValueError, match="no statistics of net_radiation"):
        train_sgd(cube, ["net_radiation"], "land_surface_temperature", epochs=1, scaler=prepared.scaler)


def test_preprocessing_refuses_unknown_variables(cube_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no variable soil_moisture"):
        preprocess_cube(cube_url, str(tmp_path / "x.zarr"), ["air_temperature_2m", "soil_moisture"])
    assert not (tmp_path / "x.zarr").exists()
