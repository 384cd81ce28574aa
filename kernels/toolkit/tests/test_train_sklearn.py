"""scikit-learn training on the synthetic cube learns LST from air temperature to the generator's noise level."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from cubelab_toolkit.cube import LST_NOISE_K, chunked, synthetic_cube
from cubelab_toolkit.splits import with_split
from cubelab_toolkit.train_sklearn import log_to_mlflow, train_sgd

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cube():
    ds = synthetic_cube(years=1, resolution=4.0, seed=5)
    return chunked(with_split(ds, "block", seed=5, block=(23, 5, 5)), "timeseries", block=15)


def test_sgd_learns_to_the_noise_level(cube) -> None:
    result = train_sgd(cube, ["air_temperature_2m"], "land_surface_temperature", epochs=3)
    assert result.test_rmse <= 1.2 * LST_NOISE_K, result.history
    assert result.history[0]["train_rmse"] >= result.history[-1]["train_rmse"] - 0.05
    assert result.scaler.fitted_on == "train"


def test_logged_model_is_registered_and_loads_by_alias(cube, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("lst", artifact_location=(tmp_path / "artifacts").as_uri())
    result = train_sgd(cube, ["air_temperature_2m"], "land_surface_temperature", epochs=2)
    with mlflow.start_run(experiment_id=exp):
        log_to_mlflow(result, ["air_temperature_2m"], "land_surface_temperature", registered_name="lst-sgd")
    loaded = mlflow.pyfunc.load_model("models:/lst-sgd@champion")
    x = np.array([[0.1], [-1.0]], dtype="float32")
    np.testing.assert_allclose(loaded.predict(x), result.model.predict(x), rtol=1e-6)
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "test_rmse")
    assert [m.step for m in history] == [0, 1]
