"""Each team's tracking server: runs, metric histories, models, the registry, aliases."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.models import infer_signature
from sklearn.linear_model import Ridge

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def client(team: dict[str, Any], member_token: str) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(team["tracking_uri"])
    return mlflow.MlflowClient(team["tracking_uri"])


def test_server_is_healthy(team: dict[str, Any]) -> None:
    import requests

    resp = requests.get(f"{team['tracking_uri']}/health", timeout=5)
    assert resp.status_code == 200 and resp.text.strip() == "OK"


def test_params_and_metric_history(client: mlflow.MlflowClient, unique: str) -> None:
    exp_id = client.create_experiment(unique)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_params({"lr": 0.01, "variables": "air_temperature_2m"})
        for epoch in range(20):
            mlflow.log_metric("rmse", 2.0 * 0.9**epoch, step=epoch)
    history = client.get_metric_history(run.info.run_id, "rmse")
    assert [m.step for m in history] == list(range(20))
    np.testing.assert_allclose([m.value for m in history], [2.0 * 0.9**e for e in range(20)])
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.01", "variables": "air_temperature_2m"}
    assert got.info.experiment_id == exp_id
    found = mlflow.search_runs([exp_id], filter_string="metrics.rmse < 1", output_format="list")
    assert [r.info.run_id for r in found] == [run.info.run_id]


def test_model_register_alias_and_load_back(client: mlflow.MlflowClient, unique: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 3)).astype("float32")
    y = x @ np.array([1.5, -2.0, 0.5], dtype="float32") + 0.1 * rng.normal(size=200).astype("float32")
    model = Ridge(alpha=0.1).fit(x, y)
    mlflow.set_experiment(unique)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(x, model.predict(x)), input_example=x[:2],
            registered_model_name=unique,
        )  # fmt: skip
    version = client.get_registered_model(unique).latest_versions[0]
    assert version.version == "1" and version.source
    client.set_registered_model_alias(unique, "champion", version.version)
    assert client.get_model_version_by_alias(unique, "champion").version == "1"

    loaded = mlflow.pyfunc.load_model(f"models:/{unique}@champion")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert info.model_uri
    sk = mlflow.sklearn.load_model(f"models:/{unique}@champion")
    np.testing.assert_array_equal(sk.coef_, model.coef_)
