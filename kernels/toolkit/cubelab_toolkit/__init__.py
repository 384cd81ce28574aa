"""cubelab's in-kernel toolkit."""

from cubelab_toolkit.artifacts import download_artifacts, load_zarr, log_zarr, log_zarr_store

__all__ = ["download_artifacts", "load_zarr", "log_zarr", "log_zarr_store"]
