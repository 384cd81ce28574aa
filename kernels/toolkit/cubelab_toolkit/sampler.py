"""Cube -> samples, one chunk at a time: points (one sample per valid cell) or n-D patches (windows with overlap).

Work follows the cube's own chunks, so memory stays bounded by a chunk and the blocks can run on a dask cluster
(`points_dataset` builds a lazy dask graph; `iter_point_blocks` streams blocks in the current process).
NaN policies: "drop" keeps cells whose target and features are all finite; "fill" keeps cells with a finite
target and fills missing features with a value, marking them in a `missing` mask.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cubelab_toolkit.splits import DIMS

NAN_POLICIES = ("drop", "fill")


@dataclass(frozen=True)
class PointBlock:
    x: np.ndarray  # (n, features) float32
    y: np.ndarray  # (n,) float32
    index: np.ndarray | None  # (n, 3) int64: time, lat, lon index of each sample in the cube (None: not asked for)
    missing: np.ndarray  # (n, features) bool: the feature was NaN (filled)


def block_slices(ds: xr.Dataset, reference: str) -> Iterator[tuple[slice, slice, slice]]:
    chunks = ds[reference].chunks
    if chunks is None:
        chunks = tuple((ds.sizes[d],) for d in DIMS)
    bounds = [np.cumsum((0, *c)) for c in chunks]
    for i, j, k in itertools.product(*(range(len(c)) for c in chunks)):
        yield tuple(slice(int(b[n]), int(b[n + 1])) for b, n in zip(bounds, (i, j, k), strict=True))  # type: ignore[misc]


def points_from_block(
    values: dict[str, np.ndarray],
    features: list[str],
    target: str,
    offset: tuple[int, int, int],
    *,
    split: np.ndarray | None = None,
    which: int | None = None,
    mask: np.ndarray | None = None,
    nan_policy: str = "drop",
    fill_value: float = 0.0,
    with_index: bool = True,
) -> PointBlock:
    """The point samples of one block of the cube (numpy arrays over time, lat, lon)."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, not {nan_policy!r}")
    y = values[target]
    shape = y.shape
    # Flat 1-D selections: much cheaper than 3-D fancy indexing on every block.
    keep = np.isfinite(y).ravel()
    columns = [np.broadcast_to(values[f], shape).ravel() for f in features]
    missing_cols = [~np.isfinite(c) for c in columns]
    if nan_policy == "drop":
        for miss in missing_cols:
            keep &= ~miss
    if split is not None and which is not None:
        keep &= (split == which).ravel()
    if mask is not None:
        keep &= np.broadcast_to(mask, shape).ravel().astype(bool)
    flat = np.flatnonzero(keep)
    xs = np.empty((len(flat), len(features)), dtype="float32")
    missing = np.zeros((len(flat), len(features)), dtype=bool)
    for i, (column, miss) in enumerate(zip(columns, missing_cols, strict=True)):
        xs[:, i] = column[flat]
        if nan_policy == "fill":
            missing[:, i] = miss[flat]
    if nan_policy == "fill":
        xs[missing] = fill_value
    index = None
    if with_index:
        index = np.stack(np.unravel_index(flat, shape), axis=-1).astype("int64") + np.asarray(offset, dtype="int64")
    return PointBlock(xs, y.ravel()[flat].astype("float32", copy=False), index, missing)


def read_ahead(items: Iterable[object], depth: int) -> Iterator[object]:
    """Iterate `items` in a background thread, up to `depth` items ahead of the consumer: reading and decoding the
    next chunks (zarr and its codecs release the GIL) overlaps with the consumer's work on this one. Stops the
    thread when the consumer stops early."""
    if depth <= 0:
        yield from items
        return
    done, stop = object(), threading.Event()
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except Exception as error:  # noqa: BLE001 - handed to the consumer, raised there
            put(error)

    thread = threading.Thread(target=work, name="cubelab-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def iter_point_blocks(
    ds: xr.Dataset,
    features: list[str],
    target: str,
    *,
    which: int | None = None,
    use_mask: str | None = None,
    nan_policy: str = "drop",
    fill_value: float = 0.0,
    blocks: Sequence[tuple[slice, slice, slice]] | None = None,
    with_index: bool = True,
    prefetch: int = 1,
) -> Iterator[PointBlock]:
    """Point samples block by block, following the target's chunks. `which` selects train (0) or test (1) by the
    cube's `split` variable; `use_mask` names a boolean variable (e.g. land_mask) that samples must be in.
    `blocks` (from `block_slices`) picks and orders the blocks; `prefetch` blocks are read ahead in a thread;
    `with_index=False` skips each sample's cube index (trainers do not need it)."""
    names = {*features, target}
    if which is not None:
        if "split" not in ds:
            raise ValueError("which= needs a `split` variable in the cube (see cubelab_toolkit.splits.with_split)")
        names.add("split")
    if use_mask:
        names.add(use_mask)
    ordered = {n: ds[n].transpose(*[d for d in DIMS if d in ds[n].dims]) for n in sorted(names)}

    def load(block: tuple[slice, slice, slice]) -> dict[str, np.ndarray]:
        sel = dict(zip(DIMS, block, strict=True))
        # The arrays themselves, sliced on chunk boundaries: no Dataset or index objects per block.
        lazy = [v.data[tuple(sel[d] for d in v.dims)] for v in ordered.values()]
        # Synchronous: safe in forked loader workers (see FACTS) and no thread hand-off per block.
        loaded = dask.compute(*lazy, scheduler="synchronous")
        values = {n: np.asarray(a) for n, a in zip(ordered, loaded, strict=True)}
        for name in names:  # 2-D variables (lat, lon) broadcast over time
            if values[name].ndim == 2:
                values[name] = values[name][None, :, :]
        return values

    chosen = list(block_slices(ds, target)) if blocks is None else list(blocks)
    loaded = read_ahead(((b, load(b)) for b in chosen), prefetch)
    for block, values in loaded:  # type: ignore[misc]
        yield points_from_block(
            {n: values[n] for n in [*features, target]},
            features,
            target,
            tuple(s.start for s in block),  # type: ignore[arg-type]
            split=values.get("split"),
            which=which,
            mask=values.get(use_mask) if use_mask else None,
            nan_policy=nan_policy,
            fill_value=fill_value,
            with_index=with_index,
        )


def points_dataset(ds: xr.Dataset, features: list[str], target: str, **kwargs: object) -> xr.Dataset:
    """All point samples as a lazy dataset over a `sample` dimension (one dask chunk per cube block), ready for
    `.to_zarr(local_or_s3_url)` on a dask cluster."""

    @dask.delayed
    def one(block: tuple[slice, slice, slice]) -> PointBlock:
        sub = ds.isel(dict(zip(DIMS, block, strict=True)))
        offset = tuple(s.start for s in block)
        blocks = list(iter_point_blocks(sub, features, target, **kwargs))  # type: ignore[arg-type]
        merged = PointBlock(
            np.concatenate([b.x for b in blocks]),
            np.concatenate([b.y for b in blocks]),
            np.concatenate([b.index for b in blocks]) + np.asarray(offset, dtype="int64"),
            np.concatenate([b.missing for b in blocks]),
        )
        return merged

    parts = [one(block) for block in block_slices(ds, target)]
    # A first pass counts each block's samples (on the cluster, like the second) so the result has known chunks.
    counts = dask.compute(*[dask.delayed(lambda b: len(b.y))(p) for p in parts])
    nfeat = len(features)
    x = da.concatenate([da.from_delayed(p.x, (n, nfeat), "float32") for p, n in zip(parts, counts, strict=True)])
    y = da.concatenate([da.from_delayed(p.y, (n,), "float32") for p, n in zip(parts, counts, strict=True)])
    index = da.concatenate([da.from_delayed(p.index, (n, 3), "int64") for p, n in zip(parts, counts, strict=True)])
    return xr.Dataset(
        {
            "x": (("sample", "feature"), x),
            "y": (("sample",), y),
            "cube_index": (("sample", "axis"), index),
        },
        coords={"feature": features, "axis": list(DIMS)},
        attrs={"target": target, "features": ",".join(features)},
    )


def patches(array: np.ndarray, size: tuple[int, ...], stride: tuple[int, ...]) -> np.ndarray:
    """All windows of `size` taken every `stride` cells (overlapping where stride < size): shape
    (n_windows, *size). Windows never leave the array."""
    if len(size) != array.ndim or len(stride) != array.ndim:
        raise ValueError(f"size and stride need {array.ndim} entries, got {size} and {stride}")
    if any(s < 1 for s in (*size, *stride)) or any(s > n for s, n in zip(size, array.shape, strict=True)):
        raise ValueError(f"patch size {size} must be positive and fit in {array.shape}; stride {stride} positive")
    windows = np.lib.stride_tricks.sliding_window_view(array, size)
    windows = windows[tuple(slice(None, None, s) for s in stride)]
    return windows.reshape(-1, *size)
