"""The synthetic cube follows ESDC v3.0 conventions and its known physics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cubelab_toolkit.cube import (
    LST_NOISE_K,
    LST_OFFSET,
    LST_SLOPE,
    chunked,
    esdc_time_axis,
    open_cube,
    synthetic_cube,
    write_cube,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    return synthetic_cube(years=2, resolution=2.0, seed=1)


def test_dims_dtypes_and_axes(cube: xr.Dataset) -> None:
    for name, var in cube.data_vars.items():
        if name == "land_mask":
            assert var.dims == ("lat", "lon") and var.dtype == bool
            continue
        assert var.dims == ("time", "lat", "lon"), name
        assert var.dtype == np.float32, name
        assert {"units", "long_name"} <= set(var.attrs), name
    assert np.all(np.diff(cube.lat) > 0)  # ascending
    assert cube.lon.min() > -180 and cube.lon.max() < 180
    assert np.allclose(np.diff(cube.lon), 2.0) and cube.sizes["lat"] == 60 and cube.sizes["lon"] == 180
    for key in ("Conventions", "title", "time_coverage_start", "time_coverage_end", "geospatial_lat_min",
                "geospatial_lat_max", "geospatial_lon_min", "geospatial_lon_max"):  # fmt: skip
        assert key in cube.attrs
    assert cube.air_temperature_2m.attrs["units"] == "degC" and cube.land_surface_temperature.attrs["units"] == "K"


def test_calendar_is_eight_days_restarting_on_january_5() -> None:
    time = esdc_time_axis(2019, 3)
    assert len(time) == 3 * 46
    for year in (2019, 2020, 2021):
        this = time[time.year == year]
        assert len(this) == 46 and this[0] == pd.Timestamp(year, 1, 5)
        assert set(np.diff(this).astype("timedelta64[D]").astype(int)) == {8}
    assert (time[46] - time[45]).days in (5, 6)  # the year's last step is short; the next starts on 5 Jan


def test_lst_follows_the_known_relation_with_gaps(cube: xr.Dataset) -> None:
    lst, t2m, land = cube.land_surface_temperature, cube.air_temperature_2m, cube.land_mask
    assert bool(lst.where(~land).isnull().all())  # NaN over the ocean
    cloudy = float(np.isnan(lst.values[:, land.values]).mean())  # cloud gaps over land
    assert 0.15 < cloudy < 0.35
    residual = (lst - (LST_SLOPE * t2m + LST_OFFSET + 273.15)).values
    assert abs(np.nanstd(residual) - LST_NOISE_K) < 0.05 and abs(np.nanmean(residual)) < 0.05
    # Seasonality: the northern mid-latitudes are warmer in July than in January.
    north = t2m.sel(lat=slice(30, 60)).mean(("lat", "lon"))
    assert float(north.sel(time="2018-07").mean()) > float(north.sel(time="2018-01").mean()) + 5


def test_both_chunkings_and_a_lossless_round_trip(cube: xr.Dataset, tmp_path: Path) -> None:
    maps = chunked(cube, "map")
    assert maps.air_temperature_2m.chunks[0] == (1,) * cube.sizes["time"]
    series = chunked(cube, "timeseries", block=16)
    assert series.air_temperature_2m.chunks[0] == (cube.sizes["time"],)
    assert max(series.air_temperature_2m.chunks[1]) == 16
    with pytest.raises(ValueError, match="chunking must be one of"):
        chunked(cube, "cubes")
    url = write_cube(cube, str(tmp_path / "cube.zarr"), chunking="timeseries")
    back = open_cube(url)
    assert back.air_temperature_2m.chunks is not None
    xr.testing.assert_identical(back.load(), cube)


def test_the_v2_layout_is_what_esdc_v2_notebooks_expect() -> None:
    """ESDC v2.1.1, which DeepESDL's notebooks open: t2m in K, latitude north first, 184 x 270 x 270 chunks; the
    same data as the v3 layout otherwise (so the LST relation holds in K)."""
    v3 = synthetic_cube(years=1, resolution=2.0, seed=3)
    v2 = synthetic_cube(years=1, resolution=2.0, seed=3, layout="v2.1.1")
    assert v2["air_temperature_2m"].attrs["units"] == "K" and v3["air_temperature_2m"].attrs["units"] == "degC"
    assert (np.diff(v2.lat) < 0).all() and (np.diff(v3.lat) > 0).all()
    same = v2.sortby("lat")
    np.testing.assert_allclose(same["air_temperature_2m"] - 273.15, v3["air_temperature_2m"], atol=1e-4)
    xr.testing.assert_identical(same["land_surface_temperature"], v3["land_surface_temperature"])
    north = v2.sel(lat=slice(90, 0))  # as the v2.1.1 notebooks select
    assert north.sizes["lat"] == v2.sizes["lat"] // 2 and (north.lat > 0).all()
    lst = v2["land_surface_temperature"]
    predicted = LST_SLOPE * (v2["air_temperature_2m"] - 273.15) + LST_OFFSET + 273.15
    residual = (lst - predicted).values[np.isfinite(lst.values)]
    assert abs(residual.std() - LST_NOISE_K) < 0.05
    chunks = chunked(v2, "timeseries").chunks
    assert chunks["time"][0] == min(184, v2.sizes["time"]) and chunks["lat"][0] == min(270, v2.sizes["lat"])
    with pytest.raises(ValueError, match="layout"):
        synthetic_cube(layout="v4")


def test_a_v2_cube_round_trips_through_zarr_format_2(tmp_path: Path) -> None:
    """What xcube (zarr < 3) writes and reads: zarr format 2, here written and opened by the toolkit on zarr 3."""
    v2 = synthetic_cube(years=1, resolution=4.0, seed=5, layout="v2.1.1")
    url = write_cube(v2, str(tmp_path / "esdc-v2.zarr"), chunking="timeseries", zarr_format=2)
    assert (tmp_path / "esdc-v2.zarr" / ".zmetadata").exists()  # format 2's consolidated metadata
    back = open_cube(url)
    xr.testing.assert_identical(back.load(), v2)
