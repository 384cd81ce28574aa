"""Which zarr format the toolkit writes: format 3 where zarr-python 3 is installed (the framework kernels), format 2
where zarr-python 2 is (the xcube kernel: xcube needs zarr < 3). Reading needs nothing: xarray opens what it finds.
"""

from __future__ import annotations

import zarr

ZARR_MAJOR = int(zarr.__version__.split(".")[0])
DEFAULT = 3 if ZARR_MAJOR >= 3 else 2


def resolve(zarr_format: int | None) -> int:
    """The format to write: the one asked for, else this environment's default; a clear error for one it cannot."""
    fmt = DEFAULT if zarr_format is None else zarr_format
    if fmt not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, not {zarr_format!r}")
    if fmt == 3 and ZARR_MAJOR < 3:
        raise ValueError(f"zarr format 3 needs zarr-python 3; this environment has zarr {zarr.__version__} "
                         "(the xcube kernel's): write zarr_format=2, which every kernel and xcube read")  # fmt: skip
    return fmt
