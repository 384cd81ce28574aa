"""Train/test splits of a cube that cannot leak: random or space-time blocks, reproducible from a seed, kept in
the cube as a `split` variable (CF flags: 0 train, 1 test) so every later step uses the same one."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

TRAIN, TEST = 0, 1
DIMS = ("time", "lat", "lon")


def _exact_choice(count: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly round(fraction * count) True values, at random places."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), not {fraction}")
    chosen = np.zeros(count, dtype=bool)
    chosen[rng.permutation(count)[: round(fraction * count)]] = True
    return chosen


def random_split(sizes: dict[str, int], test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Each cell independently to train or test (exact test count); int8 array over (time, lat, lon)."""
    shape = tuple(sizes[d] for d in DIMS)
    rng = np.random.default_rng(seed)
    return _exact_choice(int(np.prod(shape)), test_fraction, rng).reshape(shape).astype("int8")


def _blocks(sizes: dict[str, int], block: tuple[int, int, int], test_fraction: float, seed: int) -> np.ndarray:
    """Which space-time block goes to test: a boolean array with one value per block (small)."""
    if any(b < 1 for b in block):
        raise ValueError(f"block sizes must be positive, not {block}")
    counts = tuple(-(-sizes[d] // b) for d, b in zip(DIMS, block, strict=True))
    return _exact_choice(int(np.prod(counts)), test_fraction, np.random.default_rng(seed)).reshape(counts)


def _expand(blocks: np.ndarray, block: tuple[int, int, int], ranges: list[tuple[int, int]]) -> np.ndarray:
    """The split of the cells in ranges [(start, stop) per dim] from the per-block choice."""
    index = np.ix_(*(np.arange(start, stop) // b for (start, stop), b in zip(ranges, block, strict=True)))
    return blocks[index].astype("int8")


def block_split(
    sizes: dict[str, int], block: tuple[int, int, int], test_fraction: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Whole space-time blocks (time, lat, lon sizes) to train or test, so neighbours never straddle the split."""
    blocks = _blocks(sizes, block, test_fraction, seed)
    return _expand(blocks, block, [(0, sizes[d]) for d in DIMS])


def lazy_block_split(
    sizes: dict[str, int],
    chunks: tuple[tuple[int, ...], ...],
    block: tuple[int, int, int],
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Any:
    """block_split as a dask array in `chunks`: each chunk is made where it is needed from the per-block choice
    (one value per block), so neither the kernel's memory nor a cluster's task graph holds the whole split."""
    import dask.array as da

    blocks = _blocks(sizes, block, test_fraction, seed)

    def chunk(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        return _expand(blocks, block, block_info[None]["array-location"])

    return da.map_blocks(chunk, chunks=chunks, dtype="int8", meta=np.empty((0, 0, 0), "int8"))


def with_split(
    ds: xr.Dataset,
    method: str = "block",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    block: tuple[int, int, int] = (46, 8, 8),
) -> xr.Dataset:
    """ds with a `split` variable (0 train, 1 test) and the recipe in its attributes."""
    sizes = {d: ds.sizes[d] for d in DIMS}
    if method == "random":
        values = random_split(sizes, test_fraction, seed)
        recipe = {"split_method": "random"}
    elif method == "block":
        chunked = next((ds[v].chunks for v in ds.data_vars if ds[v].dims == DIMS and ds[v].chunks), None)
        if chunked:  # a cube read lazily (perhaps bigger than memory): the split is made chunk by chunk
            values = lazy_block_split(sizes, chunked, block, test_fraction, seed)
        else:
            values = block_split(sizes, block, test_fraction, seed)
        recipe = {"split_method": "block", "split_block": list(block)}
    else:
        raise ValueError(f"method must be 'random' or 'block', not {method!r}")
    attrs = {
        "long_name": "train/test split",
        "flag_values": [TRAIN, TEST],
        "flag_meanings": "train test",
        "split_seed": seed,
        "split_test_fraction": test_fraction,
        **recipe,
    }
    return ds.assign(split=xr.Variable(DIMS, values, attrs))
