"""A synthetic Earth System Data Cube following ESDC v3.0 conventions (or v2.1.1's), and opening cubes by URL.

The real ESDC cannot be downloaded here, so tests and notebooks use a faithful stand-in with known physics:

- dims (time, lat, lon); 8-day steps that restart each year on 5 January (46 a year); lat ascending; lon in
  -180..180; cell centres at the chosen resolution;
- float32 variables with CF attributes; global attributes as ESDC writes them;
- air_temperature_2m (deg C): a seasonal cycle whose amplitude grows with latitude, a latitude gradient and
  smooth spatial anomalies;
- land_surface_temperature (K) = LST_SLOPE * t2m + LST_OFFSET + 273.15 + noise (sd = LST_NOISE_K), with cloud
  gaps (NaN) and NaN over the ocean, so a model's best possible test RMSE is known;
- more predictors (net radiation, precipitation, kNDVI) and a land mask.

`layout="v2.1.1"` gives what DeepESDL's notebooks written for ESDC v2.1.1 expect instead: air temperature in
K, latitude descending (north first, so `lat=slice(90, 0)` selects the north), and v2.1.1's chunk sizes for
`chunked` (184 time steps x 270 x 270 cells, or whole maps); the same data otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cubelab_toolkit.splits import DIMS

STEPS_PER_YEAR = 46
STEP_DAYS = 8
LST_SLOPE = 1.1
LST_OFFSET = 2.0
LST_NOISE_K = 0.8
CHUNKINGS = ("map", "timeseries")
LAYOUTS = ("v3", "v2.1.1")
# ESDC v2.1.1's time-series chunks (esdc-8d-0.083deg-184x270x270-2.1.1.zarr): 184 steps, 270 x 270 cells.
V2_TIMESERIES_CHUNKS = {"time": 184, "lat": 270, "lon": 270}


def esdc_time_axis(start_year: int, years: int) -> pd.DatetimeIndex:
    """8-day steps from 5 January of each year, 46 a year (the last one a little shorter)."""
    stamps = [
        pd.Timestamp(year=year, month=1, day=5) + pd.Timedelta(days=STEP_DAYS * k)
        for year in range(start_year, start_year + years)
        for k in range(STEPS_PER_YEAR)
    ]
    return pd.DatetimeIndex(stamps, name="time")


def cell_centres(start: float, stop: float, resolution: float) -> np.ndarray:
    count = round((stop - start) / resolution)
    return (start + resolution * (np.arange(count) + 0.5)).astype("float64")


def _land_mask(lat: np.ndarray, lon: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blobs of land made from a few smooth random waves; about half of the cells."""
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    field = np.zeros_like(la)
    for _ in range(6):
        kx, ky, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        field += np.sin(kx * lo + phase) * np.cos(ky * la)
    return field > np.median(field)


def synthetic_cube(
    *,
    start_year: int = 2018,
    years: int = 2,
    resolution: float = 1.0,
    lat_range: tuple[float, float] = (-60.0, 60.0),
    lon_range: tuple[float, float] = (-180.0, 180.0),
    cloud_fraction: float = 0.25,
    seed: int = 0,
    layout: str = "v3",
) -> xr.Dataset:
    """An in-memory ESDC-like cube (numpy-backed); chunk it with `chunked` or write it with `write_cube`.
    layout: "v3" (ESDC v3.0: t2m in deg C, latitude ascending) or "v2.1.1" (t2m in K, latitude descending)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    rng = np.random.default_rng(seed)
    time = esdc_time_axis(start_year, years)
    lat = cell_centres(*lat_range, resolution)
    lon = cell_centres(*lon_range, resolution)
    nt, ny, nx = len(time), len(lat), len(lon)

    land = _land_mask(lat, lon, rng)
    doy = time.dayofyear.to_numpy()[:, None, None]
    lat3 = lat[None, :, None]
    season = -np.cos(2 * np.pi * (doy - 15) / 365.25) * np.sign(lat3 + 1e-9)
    amplitude = 2.0 + 0.25 * np.abs(lat3)
    base = 27.0 - 0.5 * np.abs(lat3)
    anomaly = 2.0 * np.sin(np.deg2rad(lon)[None, None, :] * 3 + rng.uniform(0, 6)) * np.cos(np.deg2rad(lat3) * 2)
    weather = rng.normal(0.0, 1.5, size=(nt, ny, nx))
    t2m = (base + amplitude * season + anomaly + weather).astype("float32")

    radiation = (150 + 100 * np.cos(np.deg2rad(lat3)) + 60 * season + rng.normal(0, 10, (nt, ny, nx))).astype("float32")
    precipitation = rng.gamma(0.8, 2.5, size=(nt, ny, nx)).astype("float32")
    kndvi = np.clip(0.3 + 0.02 * t2m + rng.normal(0, 0.05, (nt, ny, nx)), 0, 1).astype("float32")

    lst = (LST_SLOPE * t2m + LST_OFFSET + 273.15 + rng.normal(0, LST_NOISE_K, (nt, ny, nx))).astype("float32")
    clouds = rng.random((nt, ny, nx)) < cloud_fraction
    lst[clouds] = np.nan
    lst[:, ~land] = np.nan
    kndvi[:, ~land] = np.nan

    def var(data: np.ndarray, units: str, long_name: str, standard_name: str | None = None) -> xr.Variable:
        attrs = {"units": units, "long_name": long_name}
        if standard_name:
            attrs["standard_name"] = standard_name
        return xr.Variable(("time", "lat", "lon"), data, attrs)

    ds = xr.Dataset(
        {
            "air_temperature_2m": var(t2m, "degC", "2 metre air temperature", "air_temperature"),
            "land_surface_temperature": var(lst, "K", "Land surface temperature", "surface_temperature"),
            "net_radiation": var(radiation, "W m-2", "Net surface radiation", "surface_net_downward_radiative_flux"),
            "precipitation": var(precipitation, "mm d-1", "Daily precipitation", "lwe_precipitation_rate"),
            "kndvi": var(kndvi, "1", "Kernel normalized difference vegetation index"),
            "land_mask": xr.Variable(("lat", "lon"), land, {"long_name": "land (true) or ocean (false)"}),
        },
        coords={
            "time": ("time", time, {"long_name": "time", "standard_name": "time"}),
            "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}),
        },
        attrs={
            "Conventions": "CF-1.9",
            "title": "cubelab synthetic Earth System Data Cube (ESDC v3.0 conventions)",
            "source": "cubelab_toolkit.cube.synthetic_cube",
            "time_coverage_start": str(time[0].date()),
            "time_coverage_end": str((time[-1] + pd.Timedelta(days=STEP_DAYS)).date()),
            "time_coverage_resolution": f"P{STEP_DAYS}D",
            "geospatial_lat_min": float(lat_range[0]),
            "geospatial_lat_max": float(lat_range[1]),
            "geospatial_lon_min": float(lon_range[0]),
            "geospatial_lon_max": float(lon_range[1]),
            "geospatial_lat_resolution": float(resolution),
            "geospatial_lon_resolution": float(resolution),
            "lst_model": f"LST = {LST_SLOPE} * t2m + {LST_OFFSET} + 273.15 + N(0, {LST_NOISE_K}^2) [K]",
            "lst_noise_k": LST_NOISE_K,
            "seed": seed,
            "esdc_layout": layout,
        },
    )
    if layout == "v2.1.1":
        t2m_k = (ds["air_temperature_2m"] + np.float32(273.15)).astype("float32")
        ds["air_temperature_2m"] = t2m_k.assign_attrs(ds["air_temperature_2m"].attrs | {"units": "K"})
        ds = ds.isel(lat=slice(None, None, -1))
        ds.attrs["title"] = "cubelab synthetic Earth System Data Cube (ESDC v2.1.1 conventions)"
        ds.attrs["lst_model"] = (
            f"LST = {LST_SLOPE} * (t2m - 273.15) + {LST_OFFSET} + 273.15 + N(0, {LST_NOISE_K}^2) [K]"
        )
    return ds


def chunked(ds: xr.Dataset, chunking: str = "map", block: int = 64) -> xr.Dataset:
    """Chunk like the ESDC's two layouts: whole maps per time step ("map") or long series per cell block
    ("timeseries": block x block cells; a v2.1.1-layout cube takes v2.1.1's 184 x 270 x 270)."""
    if chunking == "map":
        return ds.chunk({"time": 1, "lat": -1, "lon": -1})
    if chunking == "timeseries":
        if ds.attrs.get("esdc_layout") == "v2.1.1":
            return ds.chunk({dim: min(size, ds.sizes[dim]) for dim, size in V2_TIMESERIES_CHUNKS.items()})
        return ds.chunk({"time": -1, "lat": block, "lon": block})
    raise ValueError(f"chunking must be one of {CHUNKINGS}, not {chunking!r}")


def write_cube(
    ds: xr.Dataset,
    url: str,
    *,
    chunking: str = "map",
    storage_options: Mapping[str, Any] | None = None,
    zarr_format: int | None = None,
) -> str:
    """Write ds chunked as asked to a local path or an s3:// URL; returns the URL. zarr_format: 2 or 3; by default
    3, or 2 where zarr-python 2 is installed (cubelab_toolkit.zarrformat)."""
    from cubelab_toolkit import zarrformat

    zarr_format = zarrformat.resolve(zarr_format)
    out = chunked(ds, chunking)
    for name in out.variables:
        out[name].encoding.pop("chunks", None)
    out.to_zarr(url, mode="w", zarr_format=zarr_format, consolidated=True,
                storage_options=dict(storage_options) if storage_options else None)  # fmt: skip
    return url


def task_chunks(ds: xr.Dataset, target_mb: float = 64.0) -> dict[str, int]:
    """Dask chunks for work on a cluster: whole multiples of the cube's stored chunks (grown along lon, then lat,
    then time) of up to `target_mb` megabytes per variable. Small stored chunks (ESDC's series chunks are 1-13 MB)
    make one task each, and each task costs a cluster a few milliseconds of scheduling and transfer; bigger tasks
    that read several stored chunks at once (zarr decodes them concurrently) keep that cost small."""
    if target_mb <= 0:
        raise ValueError(f"target_mb must be positive, not {target_mb}")
    cubes = [v for v in ds.data_vars.values() if v.dims == DIMS and v.chunks is not None]
    if not cubes:
        raise ValueError(f"no chunked variable over {DIMS} in the cube")
    var = max(cubes, key=lambda v: v.dtype.itemsize)
    stored = [max(c) for c in var.chunks]  # type: ignore[union-attr]
    sizes = [ds.sizes[d] for d in DIMS]
    limit = target_mb * 1e6 / var.dtype.itemsize
    chunks = list(stored)
    for axis in (2, 1, 0):
        while chunks[axis] < sizes[axis]:
            grown = [*chunks[:axis], min(chunks[axis] + stored[axis], sizes[axis]), *chunks[axis + 1 :]]
            if int(np.prod(grown)) > limit:
                break
            chunks = grown
    return dict(zip(DIMS, chunks, strict=True))


def open_cube(
    url: str, *, storage_options: Mapping[str, Any] | None = None, task_mb: float | None = None
) -> xr.Dataset:
    """Open a zarr cube lazily (dask) from a local path or an s3:// URL, synthetic or real: one dask chunk per
    stored chunk, or with `task_mb` chunks of several stored chunks, about that many megabytes (`task_chunks`:
    for a dask cluster)."""
    options = dict(storage_options) if storage_options else None
    ds = xr.open_zarr(url, storage_options=options, consolidated=None)
    if task_mb is None:
        return ds
    return xr.open_zarr(url, storage_options=options, consolidated=None, chunks=task_chunks(ds, task_mb))
