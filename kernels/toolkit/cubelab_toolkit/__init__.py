"""cubelab's in-kernel toolkit.

The artefact helpers import mlflow, so they load on first use: the cube, sampler and trainers import without it
(a GPU check or a training job with tracking off needs no mlflow)."""

from __future__ import annotations

from typing import Any

__all__ = ["download_artifacts", "load_zarr", "log_zarr", "log_zarr_store"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cubelab_toolkit import artifacts

        return getattr(artifacts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
