"""PyTorch: the streaming dataset shards without loss or overlap, and the training loop learns to the noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cubelab_toolkit.cube import LST_NOISE_K, chunked, synthetic_cube
from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import TRAIN, with_split
from cubelab_toolkit.train_torch import CubePoints, train_torch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FEATURES, TARGET = ["air_temperature_2m"], "land_surface_temperature"


@pytest.fixture(scope="module")
def cube():
    ds = synthetic_cube(years=1, resolution=4.0, seed=7)
    return chunked(with_split(ds, "block", seed=7, block=(23, 5, 5)), "timeseries", block=10)


def samples(dataset: CubePoints, workers: int = 0) -> np.ndarray:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                        multiprocessing_context="spawn" if workers else None)  # fmt: skip
    ys = [y.numpy() for _, y in loader]
    return np.sort(np.concatenate(ys)) if ys else np.array([])


def test_ranks_and_workers_share_the_blocks_without_overlap(cube) -> None:
    scaler = Scaler.fit(cube, [*FEATURES, TARGET], cube.split)
    whole = samples(CubePoints(cube, FEATURES, TARGET, scaler, which=TRAIN, shuffle=False))
    parts = [samples(CubePoints(cube, FEATURES, TARGET, scaler, which=TRAIN, rank=r, world_size=3)) for r in range(3)]
    assert sum(len(p) for p in parts) == len(whole) > 0
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), whole)
    with_workers = samples(CubePoints(cube, FEATURES, TARGET, scaler, which=TRAIN), workers=2)
    np.testing.assert_array_equal(with_workers, whole)


def test_training_learns_and_steps_every_batch(cube, tmp_path: Path) -> None:
    result = train_torch(cube, FEATURES, TARGET, epochs=6, batch_size=512, patience=3,
                         tensorboard_dir=str(tmp_path / "tb"))  # fmt: skip
    assert result.test_rmse <= 1.2 * LST_NOISE_K, result.history
    scaler = Scaler.fit(cube, [*FEATURES, TARGET], cube.split)
    per_epoch = sum(1 for _ in CubePoints(cube, FEATURES, TARGET, scaler, which=TRAIN, batch_size=512))
    assert result.steps == per_epoch * len(result.history)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not result.model.training  # handed back in eval mode, ready to predict
    # The loss went down: the optimiser really stepped.
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_logged_torch_model_loads_by_alias(cube, tmp_path: Path) -> None:
    import mlflow

    from cubelab_toolkit.train_torch import log_torch

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("torch", artifact_location=(tmp_path / "a").as_uri())
    result = train_torch(cube, FEATURES, TARGET, epochs=2, batch_size=512)
    with mlflow.start_run(experiment_id=exp):
        log_torch(result, FEATURES, TARGET, registered_name="lst-torch")
    loaded = mlflow.pyfunc.load_model("models:/lst-torch@champion")
    x = np.array([[0.5], [-0.5]], dtype="float32")
    with torch.no_grad():
        expected = result.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(loaded.predict(x)).reshape(-1), expected.reshape(-1), rtol=1e-5)
