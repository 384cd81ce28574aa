"""Property tests: splits are reproducible, disjoint and keep blocks whole; scaling sees training data only."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import TEST, TRAIN, block_split, lazy_block_split, random_split, with_split

sizes_st = st.fixed_dictionaries({"time": st.integers(1, 30), "lat": st.integers(1, 12), "lon": st.integers(1, 12)})
fraction_st = st.floats(0.05, 0.95)


@given(sizes=sizes_st, fraction=fraction_st, seed=st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_random_split_is_reproducible_exact_and_disjoint(sizes: dict[str, int], fraction: float, seed: int) -> None:
    a, b = random_split(sizes, fraction, seed), random_split(sizes, fraction, seed)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {TRAIN, TEST}  # every cell is in exactly one set
    assert int((a == TEST).sum()) == round(fraction * a.size)


@given(
    sizes=sizes_st,
    block=st.tuples(st.integers(1, 10), st.integers(1, 5), st.integers(1, 5)),
    fraction=fraction_st,
    seed=st.integers(0, 2**31),
)
@settings(max_examples=60, deadline=None)
def test_block_split_keeps_blocks_whole(
    sizes: dict[str, int], block: tuple[int, int, int], fraction: float, seed: int
) -> None:
    split = block_split(sizes, block, fraction, seed)
    np.testing.assert_array_equal(split, block_split(sizes, block, fraction, seed))
    bt, by, bx = block
    for t0 in range(0, sizes["time"], bt):
        for y0 in range(0, sizes["lat"], by):
            for x0 in range(0, sizes["lon"], bx):
                cell = split[t0 : t0 + bt, y0 : y0 + by, x0 : x0 + bx]
                assert len(np.unique(cell)) == 1  # a block is all train or all test


@given(
    sizes=sizes_st,
    block=st.tuples(st.integers(1, 10), st.integers(1, 5), st.integers(1, 5)),
    chunk=st.tuples(st.integers(1, 12), st.integers(1, 7), st.integers(1, 7)),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=40, deadline=None)
def test_the_lazy_block_split_is_the_block_split(
    sizes: dict[str, int], block: tuple[int, int, int], chunk: tuple[int, int, int], seed: int
) -> None:
    """Made chunk by chunk, in chunks that do not line up with the blocks, it equals the split made at once."""
    import dask.array as da

    shape = (sizes["time"], sizes["lat"], sizes["lon"])
    chunks = da.core.normalize_chunks(chunk, shape)
    lazy = lazy_block_split(sizes, chunks, block, 0.3, seed)
    assert lazy.chunks == chunks
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), block_split(sizes, block, 0.3, seed))


def test_a_lazy_cube_gets_a_lazy_split_with_the_same_values() -> None:
    """A cube read lazily gets its split as dask chunks in the cube's own chunks (never the whole array at once):
    the same values as the cube loaded in memory."""
    values = np.zeros((46, 16, 16))
    eager = with_split(small_cube(values), "block", seed=7, block=(23, 4, 4))
    lazy = with_split(small_cube(values).chunk({"time": 10, "lat": 16, "lon": 5}), "block", seed=7, block=(23, 4, 4))
    assert lazy.split.chunks == lazy.x.chunks
    assert lazy.split.attrs == eager.split.attrs
    np.testing.assert_array_equal(lazy.split.values, eager.split.values)


def test_different_seeds_give_different_splits() -> None:
    sizes = {"time": 20, "lat": 10, "lon": 10}
    assert not np.array_equal(random_split(sizes, 0.3, 1), random_split(sizes, 0.3, 2))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        random_split({"time": 2, "lat": 2, "lon": 2}, 1.5)
    with pytest.raises(ValueError, match="block sizes"):
        block_split({"time": 2, "lat": 2, "lon": 2}, (0, 1, 1))


def small_cube(values: np.ndarray) -> xr.Dataset:
    return xr.Dataset({"x": (("time", "lat", "lon"), values)})


@given(
    data=st.lists(st.floats(-100, 100), min_size=64, max_size=64),
    poison=st.floats(-1e6, 1e6),
    seed=st.integers(0, 1000),
)
@settings(max_examples=50, deadline=None)
def test_scaler_is_fitted_on_training_data_only(data: list[float], poison: float, seed: int) -> None:
    ds = with_split(small_cube(np.array(data).reshape(4, 4, 4)), "random", test_fraction=0.25, seed=seed)
    fitted = Scaler.fit(ds, ["x"], ds.split)
    # Whatever the test values are, the statistics do not move.
    poisoned = ds.assign(x=ds.x.where(ds.split == TRAIN, poison))
    again = Scaler.fit(poisoned, ["x"], poisoned.split)
    assert fitted == again
    train_values = ds.x.values[ds.split.values == TRAIN]
    assert fitted.mean["x"] == pytest.approx(train_values.mean())
    assert Scaler.from_json(fitted.to_json()) == fitted
    np.testing.assert_allclose(fitted.inverse("x", fitted.transform("x", ds.x.values)), ds.x.values, atol=1e-9)


def test_split_variable_carries_its_recipe() -> None:
    ds = with_split(small_cube(np.zeros((46, 8, 8))), "block", seed=3, block=(23, 4, 4))
    assert ds.split.attrs["flag_meanings"] == "train test" and ds.split.attrs["split_seed"] == 3
    assert ds.split.attrs["split_block"] == [23, 4, 4]
