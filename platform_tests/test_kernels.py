"""The three kernels: listed in JupyterLab under their names, each with its framework and the toolkit, each
logging to the team's tracking server with no credentials in the code."""

from __future__ import annotations

import json
from typing import Any

import mlflow
import pytest

from platform_tests.conftest import issue_token
from platform_tests.hubclient import UserServer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KERNELS = {
    "cubelab-sklearn": ("scikit-learn", "import sklearn as fw"),
    "cubelab-pytorch": ("PyTorch", "import torch as fw"),
    "cubelab-tensorflow": ("TensorFlow/Keras", "import tensorflow as fw, keras, tensorboard"),
}

PROBE = """
{imports}
import json, sys, mlflow, cubelab_toolkit, xarray, zarr, dask
mlflow.set_experiment("kernels")
with mlflow.start_run(run_name="{kernel}") as run:
    mlflow.log_param("framework_version", fw.__version__)
print(json.dumps({{"run_id": run.info.run_id, "python": sys.executable, "version": fw.__version__}}))
"""


def test_kernels_are_listed_with_their_names(team_server: UserServer) -> None:
    specs = team_server.kernelspecs()
    for name, (framework, _) in KERNELS.items():
        assert name in specs, sorted(specs)
        assert framework in specs[name]["spec"]["display_name"]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_each_kernel_runs_its_framework_and_logs_to_the_team(
    deployment: dict[str, Any], team_server: UserServer, kernel: str
) -> None:
    out = team_server.run(PROBE.format(imports=KERNELS[kernel][1], kernel=kernel), timeout=240, kernel_name=kernel)
    result = json.loads(out.strip().splitlines()[-1])
    assert f"kernel-{kernel.removeprefix('cubelab-')}" in result["python"]  # its own environment
    team = deployment["teams"][0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", issue_token(deployment, team["members"][1]))
        run = mlflow.MlflowClient(team["tracking_uri"]).get_run(result["run_id"])
    assert run.info.user_id == team_server.user
    assert run.data.params["framework_version"] == result["version"]
