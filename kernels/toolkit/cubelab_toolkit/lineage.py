"""Training-data lineage for mlflow.log_input: which cube, which variables, which part of it, which split.

`cube_dataset(ds, uri, ...)` describes a zarr cube (local or s3://) as an mlflow Dataset whose source is the
cube's URI and whose profile records variables, time and space selection, chunking and split seed; its digest
hashes the selected data itself, chunk by chunk (where the chunks are: on a dask cluster, when one is in use), so
two runs trained on different data never share a digest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import xarray as xr
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource


class ZarrCubeSource(DatasetSource):
    """A zarr cube at a URI (a local path or s3://bucket/path.zarr)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "zarr"

    def load(self, **storage_options: Any) -> xr.Dataset:
        return xr.open_zarr(self.uri, storage_options=storage_options or None)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.rstrip("/").endswith(".zarr")

    @classmethod
    def _resolve(cls, raw_source: Any) -> ZarrCubeSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> ZarrCubeSource:
        return cls(source_dict["uri"])


def _block_digest(block: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(block).tobytes()).hexdigest()


def content_digest(ds: xr.Dataset, variables: list[str], *, client: Any = None) -> str:
    """SHA-256 over names, dims, dtypes, attributes and the SHA-256 of every block of the variables' values, in
    block order. Blocks are hashed where they are (on a dask cluster when given its `client`, else on dask's
    current scheduler), so only the block digests travel and memory stays at a block per worker. The digest
    therefore depends on the chunking too (the profile records it): the same values in other chunks get
    another one."""
    import dask

    h = hashlib.sha256()
    for name in sorted(variables):
        var = ds[name]
        h.update(json.dumps([name, var.dims, str(var.dtype), var.sizes], default=str).encode())
        h.update(json.dumps(var.attrs, sort_keys=True, default=str).encode())
        data = var.data
        if hasattr(data, "to_delayed"):
            parts = [dask.delayed(_block_digest)(block) for block in data.to_delayed().ravel()]
            digests = dask.compute(*parts, scheduler=client) if client is not None else dask.compute(*parts)
        else:
            digests = (_block_digest(np.asarray(data)),)
        for digest in digests:
            h.update(digest.encode())
    return h.hexdigest()


def _selection(ds: xr.Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "time" in ds.coords and ds.sizes.get("time"):
        out["time"] = [str(np.datetime_as_string(ds.time.values[0], "D")),
                       str(np.datetime_as_string(ds.time.values[-1], "D"))]  # fmt: skip
    for dim in ("lat", "lon"):
        if dim in ds.coords and ds.sizes.get(dim):
            out[dim] = [float(ds[dim].min()), float(ds[dim].max())]
    return out


class CubeDataset(Dataset):
    def __init__(
        self,
        ds: xr.Dataset,
        uri: str,
        variables: list[str],
        *,
        name: str | None = None,
        digest: str | None = None,
        client: Any = None,
    ) -> None:
        self._ds = ds
        self._variables = sorted(variables)
        self._client = client
        super().__init__(source=ZarrCubeSource(uri), name=name or uri.rstrip("/").split("/")[-1], digest=digest)

    def _compute_digest(self) -> str:
        return content_digest(self._ds, self._variables, client=self._client)[:16]

    @property
    def profile(self) -> dict[str, Any]:
        ds = self._ds
        chunks = {d: int(max(c)) for d, c in ds[self._variables[0]].chunksizes.items()} if ds.chunks else {}
        profile: dict[str, Any] = {
            "variables": self._variables,
            "selection": _selection(ds),
            "sizes": {d: int(n) for d, n in ds.sizes.items()},
            "chunking": chunks,
        }
        if "split" in ds:
            attrs = ds["split"].attrs
            profile["split"] = {k.removeprefix("split_"): v for k, v in attrs.items() if k.startswith("split_")}
        return profile

    @property
    def schema(self) -> dict[str, Any]:
        return {name: {"dims": list(self._ds[name].dims), "dtype": str(self._ds[name].dtype),
                       "units": self._ds[name].attrs.get("units")} for name in self._variables}  # fmt: skip

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config["profile"] = json.dumps(self.profile, default=str)
        config["schema"] = json.dumps(self.schema, default=str)
        return config


def cube_dataset(
    ds: xr.Dataset, uri: str, variables: list[str], name: str | None = None, *, client: Any = None
) -> CubeDataset:
    """The cube's lineage record; log it with mlflow.log_input(..., context="training"). Its digest is computed
    on `client`'s dask cluster when given."""
    return CubeDataset(ds, uri, variables, name=name, client=client)
