"""The best-practice notebooks run end to end in their own kernels on the platform, and leave their run, metrics,
registered model, zarr artefact and lineage in the team's mlflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from platform_tests.conftest import client_as
from platform_tests.hubclient import UserServer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"
# Each kernel's own notebooks (kernels/deepesdl/ holds the compatibility notebooks: test_deepesdl.py).
NOTEBOOKS = sorted(p for p in KERNELS_DIR.glob("*/*.ipynb") if (p.parent / "environment.yml").exists())
NOISE_K = 0.8  # the synthetic cube's LST noise (cubelab_toolkit.cube.LST_NOISE_K)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_logs_everything(deployment: dict[str, Any], team_server: UserServer, notebook: Path) -> None:
    uses_gateway = "dask-gateway" in notebook.name
    if uses_gateway and "dask_gateway" not in deployment:
        pytest.skip("this deployment runs no Dask gateway (dask_gateway.enabled is false)")
    summary = team_server.run_notebook(notebook)
    if uses_gateway:  # preprocessed on a two-worker cluster, shut down afterwards
        assert summary["workers"] == 2 and summary["cluster"] not in summary["clusters_left"]
    team = deployment["teams"][0]
    with client_as(deployment, team, team["members"][1]) as client:  # a teammate looks
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
