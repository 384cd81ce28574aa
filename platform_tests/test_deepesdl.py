"""DeepESDL users' notebooks run with only the data source changed: kernels/deepesdl/ holds one notebook per framework,
written for cubelab, that uses what DeepESDL's "LST from air temperature" notebooks use (ml4xcube's datasets and
trainers, global_land_mask, mlflow autologging, `mlflow.pytorch.log_model(model, "model")` with no input example, the
Keras TensorBoard callback on $TENSORBOARD_LOGDIR). Each runs in its kernel on the platform and logs its model to the
team's server, where a teammate finds the run, its metrics and the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from platform_tests.conftest import client_as
from platform_tests.hubclient import UserServer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "kernels" / "deepesdl").glob("*.ipynb"))
# What each notebook's run must hold besides the model: ml4xcube's trainer metrics or autologging's.
EXPECTED = {
    "lst-at-sklearn.ipynb": {"metrics": {"validation_mse", "training_mae"}, "params": {"alpha", "loss"}},
    "lst-at-pytorch.ipynb": {"metrics": {"training_loss", "validation_loss"}, "params": {"lr", "number_epochs"}},
    "lst-at-keras.ipynb": {"metrics": {"loss", "val_loss", "val_mae"}, "params": {"lr", "number_epochs", "epochs"}},
}


def test_every_compatibility_notebook_is_checked() -> None:
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED), "kernels/deepesdl/ and EXPECTED disagree"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_deepesdl_style_notebook_runs_and_logs_its_model(
    deployment: dict[str, Any], team_server: UserServer, notebook: Path
) -> None:
    summary = team_server.run_notebook(notebook)
    assert summary["reloaded_same"] is True, summary  # the model on the server predicts what the trained one does
    if "test_rmse_k" in summary:  # a linear fit of LST from t2m: the synthetic cube's noise is 0.8 K
        assert summary["test_rmse_k"] < 2.5, summary

    team = deployment["teams"][0]
    with client_as(deployment, team, team["members"][1]) as client:  # a teammate looks
        run = client.get_run(summary["run_id"])
        assert run.info.user_id == team_server.user
        expected = EXPECTED[notebook.name]
        assert expected["metrics"] <= set(run.data.metrics), sorted(run.data.metrics)
        assert expected["params"] <= set(run.data.params), sorted(run.data.params)
        model = client.get_logged_model(summary["model_id"])
        assert model.source_run_id == run.info.run_id
        assert str(model.status).endswith("READY"), model.status

    if "tensorboard_run" in summary:  # the Keras callback wrote where TensorBoard, the teammates' too, reads
        assert {"train", "validation"} <= set(summary["tensorboard_files"]), summary
        assert team_server.wait_for_tensorboard_run(f"{team_server.user}/{summary['tensorboard_run']}/")
