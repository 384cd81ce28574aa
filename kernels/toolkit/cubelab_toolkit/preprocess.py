"""Preprocessing a cube on a dask cluster (a dask-gateway cluster's client, or the kernel's own threads): the
variables a model needs, a train/test split, statistics of the training split only, written back as a zarr cube
(to the team's bucket) with its lineage record for `mlflow.log_input`.

    cluster = dask_gateway.Gateway().new_cluster(); cluster.scale(2); client = cluster.get_client()
    prepared = preprocess_cube(CUBE_URL, f"s3://{BUCKET}/prepared/lst.zarr", ["air_temperature_2m", ...],
                               split={"method": "block", "seed": 42}, client=client)
    mlflow.log_input(prepared.dataset, context="training")

The work follows the cube's chunks (grouped into tasks of `task_mb`, cubelab_toolkit.cube.task_chunks), so a cube
bigger than the cluster's memory streams through it; nothing but the statistics comes back to the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask
import xarray as xr

from cubelab_toolkit import zarrformat
from cubelab_toolkit.cube import open_cube
from cubelab_toolkit.lineage import CubeDataset, cube_dataset
from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import DIMS, with_split

SCALER_ATTR = "cubelab_scaler"  # the written cube's attribute holding the Scaler's JSON


@dataclass(frozen=True)
class Prepared:
    url: str  # where the cube was written
    scaler: Scaler  # fitted on the training split only
    dataset: CubeDataset  # the written cube's lineage record (source: url; profile: variables, split, chunking)


def standardised(ds: xr.Dataset, scaler: Scaler) -> xr.Dataset:
    """ds with every variable the scaler knows scaled to zero mean and unit variance (float32), lazily."""
    out = ds.copy()
    for name in scaler.mean:
        attrs = ds[name].attrs | {"units": "1", "standardised_from_units": ds[name].attrs.get("units", "")}
        out[name] = scaler.transform(name, ds[name]).astype("float32").assign_attrs(attrs)
    return out


def _stored_chunks(source: xr.Dataset, name: str) -> dict[str, int]:
    """The chunks a variable is stored in (what the written cube keeps), read from the opened cube's encoding."""
    var = source[name]
    preferred = var.encoding.get("preferred_chunks") or {}
    return {d: int(preferred.get(d, var.sizes[d])) for d in var.dims}


def preprocess_cube(
    source_url: str,
    dest_url: str,
    variables: list[str],
    *,
    split: Mapping[str, Any] | None = None,
    standardise: bool = False,
    client: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    task_mb: float = 64.0,
    zarr_format: int | None = None,
) -> Prepared:
    """Select `variables` of the cube at source_url, add a split (`split`: with_split's arguments; without it the
    cube's own `split` is kept, if it has one), fit a Scaler on the training split and write the cube to
    dest_url, standardised with it if `standardise`; everything on `client`'s cluster when given. The written
    cube keeps the source's stored chunks and records the scaler and the source in its attributes."""
    cube = open_cube(source_url, storage_options=storage_options, task_mb=task_mb)
    missing = [v for v in variables if v not in cube.data_vars]
    if missing:
        raise ValueError(f"{source_url} has no variable {', '.join(missing)} (it has: {', '.join(cube.data_vars)})")
    if not variables:
        raise ValueError("variables is empty: name the cube's variables to preprocess")
    ds = cube[variables]
    if split is not None:
        ds = with_split(ds, **split)
        ds["split"] = ds["split"].chunk({d: ds[variables[0]].chunksizes[d] for d in DIMS})
    elif "split" in cube:
        ds["split"] = cube["split"]
    scaler = Scaler.fit(ds, variables, ds["split"] if "split" in ds else None, client=client)
    out = standardised(ds, scaler) if standardise else ds
    out.attrs = cube.attrs | {"source_cube": source_url, SCALER_ATTR: scaler.to_json()}
    # The split, made here, is stored in the chunks of the first variable.
    stored = {name: _stored_chunks(cube, name if name in cube else variables[0]) for name in out.data_vars}
    encoding = {name: {"chunks": tuple(stored[name][d] for d in out[name].dims)} for name in out.data_vars}
    for name in out.variables:
        out[name].encoding = {}
    write = out.to_zarr(dest_url, mode="w", compute=False, consolidated=True, encoding=encoding,
                        zarr_format=zarrformat.resolve(zarr_format),
                        storage_options=dict(storage_options) if storage_options else None)  # fmt: skip
    dask.compute(write, scheduler=client) if client is not None else dask.compute(write)
    written = open_cube(dest_url, storage_options=storage_options)
    names = [*variables, "split"] if "split" in written else list(variables)
    return Prepared(dest_url, scaler, cube_dataset(written, dest_url, names, client=client))


def scaler_of(ds: xr.Dataset) -> Scaler:
    """The Scaler a preprocessed cube was made with (its training-split statistics)."""
    if SCALER_ATTR not in ds.attrs:
        raise ValueError(f"the cube has no {SCALER_ATTR} attribute: it was not written by preprocess_cube")
    return Scaler.from_json(ds.attrs[SCALER_ATTR])
