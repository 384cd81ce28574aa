"""Property tests of the sampler: every valid sample exactly once, masks and splits honoured, n-D patches."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from cubelab_toolkit import sampler
from cubelab_toolkit.sampler import (
    block_slices,
    count_point_batches,
    iter_point_batches,
    iter_point_blocks,
    patches,
    points_dataset,
    read_ahead,
    zarr_source,
)
from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import TEST, TRAIN, with_split


@st.composite
def cubes(draw: st.DrawFn) -> xr.Dataset:
    nt, ny, nx = draw(st.integers(1, 8)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(nt, ny, nx)).astype("float32")
    b = rng.normal(size=(nt, ny, nx)).astype("float32")
    y = rng.normal(size=(nt, ny, nx)).astype("float32")
    for arr, p in ((a, draw(st.floats(0, 0.5))), (b, draw(st.floats(0, 0.5))), (y, draw(st.floats(0, 0.5)))):
        arr[rng.random(arr.shape) < p] = np.nan
    mask = rng.random((ny, nx)) < 0.7
    ds = xr.Dataset({"a": (("time", "lat", "lon"), a), "b": (("time", "lat", "lon"), b),
                     "y": (("time", "lat", "lon"), y), "mask": (("lat", "lon"), mask)})  # fmt: skip
    chunks = {"time": draw(st.integers(1, nt)), "lat": draw(st.integers(1, ny)), "lon": draw(st.integers(1, nx))}
    return with_split(ds, "random", test_fraction=0.3, seed=seed).chunk(chunks)


def collect(ds: xr.Dataset, **kwargs: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    blocks = list(iter_point_blocks(ds, ["a", "b"], "y", **kwargs))  # type: ignore[arg-type]
    return (np.concatenate([b.x for b in blocks]), np.concatenate([b.y for b in blocks]),
            np.concatenate([b.index for b in blocks]), np.concatenate([b.missing for b in blocks]))  # fmt: skip


@given(ds=cubes(), which=st.sampled_from([None, TRAIN, TEST]), use_mask=st.booleans(), prefetch=st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_each_valid_point_exactly_once(ds: xr.Dataset, which: int | None, use_mask: bool, prefetch: int) -> None:
    x, y, index, missing = collect(ds, which=which, use_mask="mask" if use_mask else None, prefetch=prefetch)
    a, b, t, split, mask = (ds[v].values for v in ("a", "b", "y", "split", "mask"))
    valid = np.isfinite(a) & np.isfinite(b) & np.isfinite(t)
    if which is not None:
        valid &= split == which
    if use_mask:
        valid &= mask[None, :, :]
    expected = {tuple(i) for i in np.argwhere(valid)}
    got = [tuple(i) for i in index]
    assert len(got) == len(set(got))  # no sample twice
    assert set(got) == expected  # every valid sample, and only those
    ti, yi, xi = index.T
    np.testing.assert_array_equal(y, t[ti, yi, xi])
    np.testing.assert_array_equal(x[:, 0], a[ti, yi, xi])
    assert not missing.any()


@given(ds=cubes())
@settings(max_examples=30, deadline=None)
def test_fill_policy_keeps_target_cells_and_marks_missing_features(ds: xr.Dataset) -> None:
    x, _y, index, missing = collect(ds, nan_policy="fill", fill_value=-9.0)
    t = ds.y.values
    assert {tuple(i) for i in index} == {tuple(i) for i in np.argwhere(np.isfinite(t))}
    assert np.all(np.isfinite(x)) and np.all(x[missing] == -9.0)
    ti, yi, xi = index.T
    np.testing.assert_array_equal(missing[:, 0], ~np.isfinite(ds.a.values[ti, yi, xi]))


def test_points_dataset_is_lazy_and_matches_the_stream() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 4, 5)).astype("float32")
    data[0, 0, 0] = np.nan
    ds = xr.Dataset({"a": (("time", "lat", "lon"), data), "b": (("time", "lat", "lon"), data * 2),
                     "y": (("time", "lat", "lon"), data + 1)}).chunk({"time": 2, "lat": 2, "lon": 5})  # fmt: skip
    lazy = points_dataset(ds, ["a", "b"], "y")
    assert lazy.x.chunks is not None and len(lazy.x.chunks[0]) == 3 * 2
    x, _y, index, _ = collect(ds)
    np.testing.assert_array_equal(lazy.x.values, x)
    np.testing.assert_array_equal(lazy.cube_index.values, index)
    assert lazy.sizes["sample"] == 6 * 4 * 5 - 1


@given(
    shape=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_patches_cover_the_windows_with_overlap(shape: tuple[int, int, int], data: st.DataObject) -> None:
    size = tuple(data.draw(st.integers(1, n)) for n in shape)
    stride = tuple(data.draw(st.integers(1, 4)) for _ in shape)
    array = np.arange(np.prod(shape)).reshape(shape)
    out = patches(array, size, stride)
    starts = [range(0, n - s + 1, st_) for n, s, st_ in zip(shape, size, stride, strict=True)]
    assert out.shape == (np.prod([len(r) for r in starts]), *size)
    for patch, (i, j, k) in zip(out, np.ndindex(*[len(r) for r in starts]), strict=True):
        t0, y0, x0 = starts[0][i], starts[1][j], starts[2][k]
        np.testing.assert_array_equal(patch, array[t0 : t0 + size[0], y0 : y0 + size[1], x0 : x0 + size[2]])


def test_bad_sampler_arguments() -> None:
    with pytest.raises(ValueError, match="size and stride"):
        patches(np.zeros((3, 3)), (1,), (1, 1))
    with pytest.raises(ValueError, match="must be positive and fit"):
        patches(np.zeros((3, 3)), (4, 1), (1, 1))
    ds = xr.Dataset(
        {"a": (("time", "lat", "lon"), np.zeros((1, 1, 1))), "y": (("time", "lat", "lon"), np.zeros((1, 1, 1)))}
    )
    with pytest.raises(ValueError, match="nan_policy"):
        list(iter_point_blocks(ds, ["a"], "y", nan_policy="impute"))
    with pytest.raises(ValueError, match="needs a `split` variable"):
        list(iter_point_blocks(ds, ["a"], "y", which=TRAIN))


@given(ds=cubes(), data=st.data())
@settings(max_examples=30, deadline=None)
def test_chosen_blocks_in_the_given_order(ds: xr.Dataset, data: st.DataObject) -> None:
    every = list(block_slices(ds, "y"))
    shuffled = data.draw(st.permutations(every))
    chosen = shuffled[: data.draw(st.integers(0, len(every)))]
    got = list(iter_point_blocks(ds, ["a"], "y", blocks=chosen, with_index=False))
    assert len(got) == len(chosen)
    for block, points in zip(chosen, got, strict=True):
        assert points.index is None
        t = ds["y"].values[block]
        a = ds["a"].values[block]
        assert len(points.y) == int((np.isfinite(t) & np.isfinite(a)).sum())


def test_read_ahead_keeps_order_raises_errors_and_stops_early() -> None:
    import threading

    assert list(read_ahead(range(100), 3)) == list(range(100))
    assert list(read_ahead(range(5), 0)) == list(range(5))

    def failing() -> object:
        yield 1
        raise OSError("chunk unreadable")

    it = read_ahead(failing(), 2)
    assert next(it) == 1
    with pytest.raises(OSError, match="chunk unreadable"):
        next(it)

    produced: list[int] = []

    def endless() -> object:
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    it = read_ahead(endless(), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the consumer stops: the reading thread ends, it does not run on
    assert threading.active_count() == before
    assert len(produced) <= 3 + 2 + 1


@given(ds=cubes(), max_cells=st.one_of(st.none(), st.integers(1, 400)))
@settings(max_examples=60, deadline=None)
def test_grouped_blocks_tile_the_cube_on_chunk_boundaries(ds: xr.Dataset, max_cells: int | None) -> None:
    blocks = list(block_slices(ds, "y", max_cells))
    seen = np.zeros(ds["y"].shape, dtype=int)
    for block in blocks:
        seen[block] += 1
    assert (seen == 1).all()  # every cell in exactly one block
    edges = [set(np.cumsum((0, *c)).tolist()) for c in ds["y"].chunks]
    largest_chunk = int(np.prod([max(c) for c in ds["y"].chunks]))
    for block in blocks:
        assert all({s.start, s.stop} <= e for s, e in zip(block, edges, strict=True))  # whole chunks only
        cells = int(np.prod([s.stop - s.start for s in block]))
        assert cells <= max(max_cells or 0, largest_chunk)  # grown only while it fits
    if max_cells is None:
        assert len(blocks) == int(np.prod([len(c) for c in ds["y"].chunks]))


@given(ds=cubes(), which=st.sampled_from([None, TRAIN]), seed=st.one_of(st.none(), st.integers(0, 99)),
       batch_size=st.one_of(st.none(), st.integers(1, 50)), run=st.integers(1, 40))  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_batches_hold_each_valid_sample_once_scaled(
    ds: xr.Dataset, which: int | None, seed: int | None, batch_size: int | None, run: int
) -> None:
    scaler = Scaler(mean={"a": 1.0, "b": -2.0, "y": 0.5}, std={"a": 2.0, "b": 0.5, "y": 3.0})
    rng = None if seed is None else np.random.default_rng(seed)
    old, sampler.RUN_SAMPLES = sampler.RUN_SAMPLES, run  # small runs: several per block
    try:
        batches = list(iter_point_batches(ds, ["a", "b"], "y", scaler, which=which, batch_size=batch_size, rng=rng))
        count = count_point_batches(ds, ["a", "b"], "y", which=which, batch_size=batch_size or 10**9,
                                    shuffle=seed is not None)  # fmt: skip
    finally:
        sampler.RUN_SAMPLES = old
    x, y, _, _ = collect(ds, which=which)
    expected = np.column_stack([(x[:, 0] - 1.0) / 2.0, (x[:, 1] + 2.0) / 0.5, (y - 0.5) / 3.0]).astype("float32")
    got = np.concatenate([np.column_stack([bx, by]) for bx, by in batches]) if batches else np.empty((0, 3))
    assert all(bx.dtype == by.dtype == np.float32 and len(bx) == len(by) > 0 for bx, by in batches)
    if batch_size:
        assert all(len(by) <= batch_size for _, by in batches)
        assert len(batches) == count
    # The same samples (as rows), each once, in whatever order the shuffle gave.
    np.testing.assert_allclose(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)], rtol=1e-6)


def test_shuffled_batches_are_reproducible_and_differ_by_seed() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(8, 6, 6)).astype("float32")
    ds = xr.Dataset({"a": (("time", "lat", "lon"), data), "y": (("time", "lat", "lon"), data + 1)}).chunk(
        {"time": 4, "lat": 3, "lon": 3}
    )
    scaler = Scaler(mean={"a": 0.0, "y": 0.0}, std={"a": 1.0, "y": 1.0})

    def order(seed: int | None) -> np.ndarray:
        rng = None if seed is None else np.random.default_rng(seed)
        return np.concatenate([y for _, y in iter_point_batches(ds, ["a"], "y", scaler, batch_size=7, rng=rng)])

    np.testing.assert_array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))
    # Unshuffled: memory order (this small cube is read as one block).
    np.testing.assert_array_equal(order(None), ds["y"].values[np.isfinite(data)])
    with pytest.raises(ValueError, match="batch_size must be positive"):
        list(iter_point_batches(ds, ["a"], "y", scaler, batch_size=0))


def test_zarr_cubes_are_read_without_dask_graphs_and_give_the_same_samples(tmp_path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(6, 5, 4)).astype("float32")
    data[data > 1.2] = np.nan
    dims = ("time", "lat", "lon")
    ds = xr.Dataset({"a": (dims, data), "b": (dims, np.roll(data, 1, axis=2)), "y": (dims, data * 3),
                     "mask": (("lat", "lon"), rng.random((5, 4)) < 0.6)})  # fmt: skip
    ds.chunk({"time": 2, "lat": 5, "lon": 2}).to_zarr(tmp_path / "c.zarr", zarr_format=3)
    opened = xr.open_zarr(tmp_path / "c.zarr")
    assert zarr_source(opened["a"].data) is not None and zarr_source(opened["mask"].data) is not None
    # Anything but the bare opened array goes through dask.
    assert zarr_source(opened["a"].isel(time=slice(1, 5)).data) is None
    assert zarr_source((opened["a"] + 1).data) is None
    assert zarr_source(ds["a"].chunk({"time": 2}).data) is None
    assert zarr_source(np.zeros(3)) is None
    in_memory = ds.chunk({"time": 2, "lat": 5, "lon": 2})
    for kwargs in ({}, {"use_mask": "mask"}):
        got, want = collect(opened, **kwargs), collect(in_memory, **kwargs)  # type: ignore[arg-type]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
