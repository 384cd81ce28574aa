"""Keras: every training batch is one step (no silent 1/32 of an epoch) and the model learns to the noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cubelab_toolkit.cube import LST_NOISE_K, chunked, synthetic_cube
from cubelab_toolkit.sampler import iter_point_batches
from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import TRAIN, with_split
from cubelab_toolkit.train_keras import train_keras

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FEATURES, TARGET = ["air_temperature_2m"], "land_surface_temperature"


class StepCounter(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.per_epoch: list[int] = []

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.per_epoch[-1] += 1


def test_keras_runs_every_batch_and_learns(tmp_path: Path) -> None:
    ds = chunked(with_split(synthetic_cube(years=1, resolution=4.0, seed=9), "block", seed=9, block=(23, 5, 5)),
                 "timeseries", block=10)  # fmt: skip
    counter = StepCounter()
    result = train_keras(ds, FEATURES, TARGET, epochs=6, batch_size=512, callbacks=[counter],
                         tensorboard_dir=str(tmp_path / "tb"))  # fmt: skip
    # Counted here by one shuffled pass of the sampler, not by the function train_keras uses.
    scaler = Scaler.fit(ds, [*FEATURES, TARGET], ds["split"])
    rng = np.random.default_rng(5)
    expected = sum(1 for _ in iter_point_batches(ds, FEATURES, TARGET, scaler, which=TRAIN, batch_size=512, rng=rng))
    assert result.steps_per_epoch == expected > 10
    assert counter.per_epoch and set(counter.per_epoch) == {expected}
    assert result.test_rmse <= 1.2 * LST_NOISE_K, result.history
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_logged_keras_model_loads_by_alias(tmp_path: Path) -> None:
    import mlflow
    import numpy as np

    from cubelab_toolkit.train_keras import log_keras

    ds = chunked(with_split(synthetic_cube(years=1, resolution=6.0, seed=4), "block", seed=4, block=(23, 5, 5)),
                 "timeseries", block=10)  # fmt: skip
    result = train_keras(ds, FEATURES, TARGET, epochs=2, batch_size=512)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("keras", artifact_location=(tmp_path / "a").as_uri())
    with mlflow.start_run(experiment_id=exp):
        log_keras(result, FEATURES, TARGET, registered_name="lst-keras")
    loaded = mlflow.pyfunc.load_model("models:/lst-keras@champion")
    x = np.array([[0.5], [-0.5]], dtype="float32")
    np.testing.assert_allclose(np.asarray(loaded.predict(x)).reshape(-1),
                               np.asarray(result.model(x)).reshape(-1), rtol=1e-5)  # fmt: skip
