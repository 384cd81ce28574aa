"""Cube -> samples, one chunk at a time: points (one sample per valid cell) or n-D patches (windows with overlap).

Work follows the cube's own chunks, so memory stays bounded by a chunk and the blocks can run on a dask cluster
(`points_dataset` builds a lazy dask graph; `iter_point_blocks` streams blocks in the current process).
NaN policies: "drop" keeps cells whose target and features are all finite; "fill" keeps cells with a finite
target and fills missing features with a value, marking them in a `missing` mask.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr
from xarray.backends.zarr import ZarrArrayWrapper

from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import DIMS

NAN_POLICIES = ("drop", "fill")


@dataclass(frozen=True)
class PointBlock:
    x: np.ndarray  # (n, features) float32
    y: np.ndarray  # (n,) float32
    index: np.ndarray | None  # (n, 3) int64: time, lat, lon index of each sample in the cube (None: not asked for)
    missing: np.ndarray  # (n, features) bool: the feature was NaN (filled)


BLOCK_CELLS = 2**21  # cells an unshuffled pass reads at once (8 MB per float32 variable): several chunks per read
RUN_SAMPLES = 2**18  # samples shuffled together (see runs_of)


def block_slices(ds: xr.Dataset, reference: str, max_cells: int | None = None) -> Iterator[tuple[slice, slice, slice]]:
    """Blocks of whole chunks of `reference`: one chunk each, or with `max_cells` as many neighbouring chunks as
    fit in that many cells (grown along lon, then lat, then time). A bigger block is read with one zarr call
    that decodes its chunks concurrently."""
    chunks = ds[reference].chunks
    if chunks is None:
        chunks = tuple((ds.sizes[d],) for d in DIMS)
    group = [1, 1, 1]
    if max_cells:
        largest = [max(c) for c in chunks]
        for axis in (2, 1, 0):
            while group[axis] < len(chunks[axis]):
                grown = [n * g + (n if a == axis else 0) for a, (n, g) in enumerate(zip(largest, group, strict=True))]
                if int(np.prod(grown)) > max_cells:
                    break
                group[axis] += 1
    # Every g-th chunk edge, and the end of the axis (np.unique: once, also when g divides the chunk count).
    bounds = [np.unique(np.append(np.cumsum((0, *c))[::g], sum(c))) for c, g in zip(chunks, group, strict=True)]
    for i, j, k in itertools.product(*(range(len(b) - 1) for b in bounds)):
        yield tuple(slice(int(b[n]), int(b[n + 1])) for b, n in zip(bounds, (i, j, k), strict=True))  # type: ignore[misc]


def valid_cells(
    values: dict[str, np.ndarray],
    features: list[str],
    target: str,
    *,
    split: np.ndarray | None = None,
    which: int | None = None,
    mask: np.ndarray | None = None,
    nan_policy: str = "drop",
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Flat indices of a block's sample cells and its feature columns (flat, broadcast to the target's shape).
    Flat 1-D selections: much cheaper than boolean or 3-D fancy indexing on every block."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, not {nan_policy!r}")
    shape = values[target].shape
    keep = np.isfinite(values[target]).ravel()
    columns = [np.broadcast_to(values[f], shape).ravel() for f in features]
    if nan_policy == "drop":
        finite = np.empty_like(keep)
        for column in columns:
            keep &= np.isfinite(column, out=finite)
    if split is not None and which is not None:
        keep &= (split == which).ravel()
    if mask is not None:
        keep &= np.broadcast_to(mask, shape).ravel().astype(bool)
    return np.flatnonzero(keep), columns


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
    y = values[target]
    flat, columns = valid_cells(values, features, target, split=split, which=which, mask=mask, nan_policy=nan_policy)
    xs = np.empty((len(flat), len(features)), dtype="float32")
    missing = np.zeros((len(flat), len(features)), dtype=bool)
    for i, column in enumerate(columns):
        xs[:, i] = column[flat]
    if nan_policy == "fill":
        missing = ~np.isfinite(xs)
        xs[missing] = fill_value
    index = None
    if with_index:
        index = np.stack(np.unravel_index(flat, y.shape), axis=-1).astype("int64") + np.asarray(offset, dtype="int64")
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


def zarr_source(data: object) -> object | None:
    """The lazily indexed zarr array behind a dask array exactly as `xarray.open_zarr` made it (one source array
    and one read task per chunk), or None for any other array. Reading a block from it directly gives the same
    values as computing the dask slice, without building and running a dask graph per block (~1 ms each)."""
    if not isinstance(data, da.Array):
        return None
    layers = getattr(data.__dask_graph__(), "layers", {})
    originals = [layer for name, layer in layers.items() if str(name).startswith("original-")]
    if len(layers) != 2 or len(originals) != 1 or len(originals[0]) != 1:
        return None
    source = next(iter(originals[0].values()))
    inner = source
    while hasattr(inner, "array"):  # xarray's indexing adapters, down to the backend array
        inner = inner.array
    if not isinstance(inner, ZarrArrayWrapper):
        return None
    if getattr(source, "shape", None) != data.shape or getattr(source, "dtype", None) != data.dtype:
        return None
    return source


def iter_loaded_blocks(
    ds: xr.Dataset,
    names: set[str],
    blocks: Sequence[tuple[slice, slice, slice]],
    prefetch: int = 1,
) -> Iterator[tuple[tuple[slice, slice, slice], dict[str, np.ndarray]]]:
    """Each block's values of the named variables as numpy arrays over (time, lat, lon); 2-D variables (lat, lon)
    come as (1, lat, lon). `prefetch` blocks are read ahead in a background thread."""
    ordered = {n: ds[n].transpose(*[d for d in DIMS if d in ds[n].dims]) for n in sorted(names)}
    sources = {n: zarr_source(v.data) for n, v in ordered.items()}

    def load(block: tuple[slice, slice, slice]) -> dict[str, np.ndarray]:
        sel = dict(zip(DIMS, block, strict=True))
        keys = {n: tuple(sel[d] for d in v.dims) for n, v in ordered.items()}
        values = {n: np.asarray(src[keys[n]]) for n, src in sources.items() if src is not None}  # type: ignore[index]
        lazy = [n for n, src in sources.items() if src is None]
        if lazy:  # The arrays themselves, sliced on chunk boundaries: no Dataset or index objects per block.
            # Synchronous: safe in forked loader workers (see FACTS) and no thread hand-off per block.
            loaded = dask.compute(*[ordered[n].data[keys[n]] for n in lazy], scheduler="synchronous")
            values.update({n: np.asarray(a) for n, a in zip(lazy, loaded, strict=True)})
        for name, array in values.items():  # 2-D variables (lat, lon) broadcast over time
            if array.ndim == 2:
                values[name] = array[None, :, :]
        return values

    yield from read_ahead(((b, load(b)) for b in blocks), prefetch)  # type: ignore[misc]


def _needed(ds: xr.Dataset, features: list[str], target: str, which: int | None, use_mask: str | None) -> set[str]:
    names = {*features, target}
    if which is not None:
        if "split" not in ds:
            raise ValueError("which= needs a `split` variable in the cube (see cubelab_toolkit.splits.with_split)")
        names.add("split")
    if use_mask:
        names.add(use_mask)
    return names


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
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, not {nan_policy!r}")
    names = _needed(ds, features, target, which, use_mask)
    chosen = list(block_slices(ds, target)) if blocks is None else list(blocks)
    for block, values in iter_loaded_blocks(ds, names, chosen, prefetch):
        yield points_from_block(
            values,
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


def iter_point_batches(
    ds: xr.Dataset,
    features: list[str],
    target: str,
    scaler: Scaler,
    *,
    which: int | None = None,
    batch_size: int | None = 1024,
    rng: np.random.Generator | None = None,
    use_mask: str | None = None,
    blocks: Sequence[tuple[slice, slice, slice]] | None = None,
    prefetch: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Scaled float32 mini-batches (x (n, features), y (n,)) of the point samples with no NaN, block by block.
    Batches never cross blocks or runs (`runs_of`; `batch_size=None`: one batch per run). With `rng`, blocks and
    runs come in a random order and each run's samples are shuffled: the shuffle permutes sample indices, and
    every batch is gathered straight from the block's arrays and scaled in place (no per-block copies)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    chosen = batch_blocks(ds, target, shuffle=rng is not None) if blocks is None else list(blocks)
    if rng is not None:
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    mean = np.asarray([scaler.mean[f] for f in features], dtype="float32")
    std = np.asarray([scaler.std[f] for f in features], dtype="float32")
    y_mean, y_std = np.float32(scaler.mean[target]), np.float32(scaler.std[target])
    for values, flat, columns in _valid_blocks(ds, features, target, which, use_mask, chosen, prefetch):
        y_all = values[target].ravel()
        runs = runs_of(len(flat))
        for r in rng.permutation(len(runs)) if rng is not None else range(len(runs)):
            run = flat[runs[r][0] : runs[r][1]]
            if rng is not None:
                rng.shuffle(run)
            step = batch_size or len(run)
            for start in range(0, len(run), step):
                take = run[start : start + step]
                x = np.empty((len(take), len(features)), dtype="float32")
                for i, column in enumerate(columns):
                    x[:, i] = column[take]
                x -= mean
                x /= std
                y = y_all[take].astype("float32", copy=False)
                y -= y_mean
                y /= y_std
                yield x, y


def runs_of(n: int) -> list[tuple[int, int]]:
    """A block's n samples in runs of at most RUN_SAMPLES (in memory order): each run is shuffled on its own and
    batches never cross runs, so the shuffle and the gathers stay within a few MB (in cache)."""
    return [(start, min(start + RUN_SAMPLES, n)) for start in range(0, n, RUN_SAMPLES)]


def batch_blocks(ds: xr.Dataset, target: str, *, shuffle: bool) -> list[tuple[slice, slice, slice]]:
    """The blocks of a batch pass: one chunk each when shuffled, up to BLOCK_CELLS cells of whole chunks
    otherwise. Measured on two cores (docs/benchmarks.md): grouped reads speed up passes in cube order by ~15 %
    and slow shuffled passes down, whose work per block then no longer overlaps the next block's read."""
    return list(block_slices(ds, target, None if shuffle else BLOCK_CELLS))


def count_point_batches(
    ds: xr.Dataset,
    features: list[str],
    target: str,
    *,
    which: int | None,
    batch_size: int,
    shuffle: bool = True,
    use_mask: str | None = None,
) -> int:
    """How many batches one pass of `iter_point_batches` over all blocks yields (the same for every seed)."""
    blocks = batch_blocks(ds, target, shuffle=shuffle)
    return sum(
        math.ceil((stop - start) / batch_size)
        for _, flat, _ in _valid_blocks(ds, features, target, which, use_mask, blocks, prefetch=1)
        for start, stop in runs_of(len(flat))
    )


def _valid_blocks(
    ds: xr.Dataset,
    features: list[str],
    target: str,
    which: int | None,
    use_mask: str | None,
    blocks: Sequence[tuple[slice, slice, slice]],
    prefetch: int,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, list[np.ndarray]]]:
    """Each block's values, the flat indices of its samples with no NaN, and its feature columns."""
    names = _needed(ds, features, target, which, use_mask)
    for _, values in iter_loaded_blocks(ds, names, blocks, prefetch):
        mask = values.get(use_mask) if use_mask else None
        flat, columns = valid_cells(values, features, target, split=values.get("split"), which=which, mask=mask)
        yield values, flat, columns


def points_dataset(
    ds: xr.Dataset, features: list[str], target: str, *, client: object = None, **kwargs: object
) -> xr.Dataset:
    """All point samples as a lazy dataset over a `sample` dimension (one dask chunk per cube block), ready for
    `.to_zarr(local_or_s3_url)` on a dask cluster. Its first pass (counting each block's samples) runs on
    `client`'s cluster when given (a distributed.Client), else on dask's current scheduler."""

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
    lengths = [dask.delayed(lambda b: len(b.y))(p) for p in parts]
    counts = dask.compute(*lengths, scheduler=client) if client is not None else dask.compute(*lengths)
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
