"""The best-practice notebooks run end to end in their own kernels on the platform, and leave their run, metrics,
registered model, zarr artefact and lineage in the team's mlflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest

from platform_tests.conftest import issue_token
from platform_tests.hubclient import UserServer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"
NOTEBOOKS = sorted(KERNELS_DIR.glob("*/*.ipynb"))
NOISE_K = 0.8  # the synthetic cube's LST noise (cubelab_toolkit.cube.LST_NOISE_K)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_logs_everything(deployment: dict[str, Any], team_server: UserServer, notebook: Path) -> None:
    nb = json.loads(notebook.read_text())
    kernel = nb["metadata"]["kernelspec"]["name"]
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    outputs = team_server.run_cells(cells, timeout=600, kernel_name=kernel)
    summary = json.loads(outputs[-1].strip().splitlines()[-1])

    team = deployment["teams"][0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", issue_token(deployment, team["members"][1]))  # a teammate looks
        client = mlflow.MlflowClient(team["tracking_uri"])
        run = client.get_run(summary["run_id"])
        assert run.info.user_id == team_server.user
        assert summary["test_rmse"] <= 1.2 * NOISE_K
        assert len(client.get_metric_history(run.info.run_id, "test_rmse")) >= 2
        version = client.get_model_version_by_alias(summary["model"], "champion")
        assert version.version == summary["model_version"] and version.run_id == run.info.run_id
        inputs = run.inputs.dataset_inputs
        assert inputs and inputs[0].dataset.source_type == "zarr"
        assert json.loads(inputs[0].dataset.profile)["split"]["seed"] == 42
        paths = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
        assert any(p.endswith(".png") for p in paths)
    assert summary["zarr_identical"] is True
