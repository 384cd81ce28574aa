"""The three kernels: listed in JupyterLab under their names, each with its framework and the toolkit, each
logging to the team's tracking server with no credentials in the code."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
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
    # Its own environment: <install>/kernel-NAME on the embedded stack, /opt/conda/envs/cubelab-NAME in the image.
    short = kernel.removeprefix("cubelab-")
    assert {f"kernel-{short}", f"cubelab-{short}"} & set(Path(result["python"]).parts), result["python"]
    team = deployment["teams"][0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", issue_token(deployment, team["members"][1]))
        run = mlflow.MlflowClient(team["tracking_uri"]).get_run(result["run_id"])
    assert run.info.user_id == team_server.user
    assert run.data.params["framework_version"] == result["version"]


# What DeepESDL's ML notebooks import besides the framework: ml4xcube's datasets and trainers for it, and
# global_land_mask.
DEEPESDL = {
    "cubelab-sklearn": "ml4xcube.training.sklearn",
    "cubelab-pytorch": "ml4xcube.datasets.pytorch, ml4xcube.training.pytorch",
    "cubelab-tensorflow": "ml4xcube.datasets.tensorflow, ml4xcube.training.tensorflow",
}
DEEPESDL_PROBE = """
import ml4xcube.datasets.xr_dataset, ml4xcube.datasets.multiproc_sampler, ml4xcube.splits, ml4xcube.preprocessing
import {modules}
from global_land_mask import globe
print("land", bool(globe.is_land(50.9, 11.6)), bool(globe.is_land(0.0, -30.0)))
"""


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_each_kernel_has_what_deepesdl_notebooks_import(team_server: UserServer, kernel: str) -> None:
    out = team_server.run(DEEPESDL_PROBE.format(modules=DEEPESDL[kernel]), timeout=240, kernel_name=kernel)
    assert out.strip().splitlines()[-1] == "land True False"  # Thuringia is land, the mid-Atlantic is not


PYTORCH_LOG_MODEL = """
import json, mlflow, mlflow.pytorch, torch
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
mlflow.set_experiment("deepesdl-style")
with mlflow.start_run() as run:
    info = mlflow.pytorch.log_model(model, "model")  # as ml4xcube's trainer and DeepESDL's notebooks call it
back = mlflow.pytorch.load_model(info.model_uri)
x = torch.randn(5, 3)
print("RESULT", json.dumps({"model_id": info.model_id, "same": bool(torch.equal(back(x), model(x)))}))
"""


def test_a_plain_pytorch_log_model_works_in_the_pytorch_kernel(
    deployment: dict[str, Any], team_server: UserServer
) -> None:
    """mlflow 3.17's default (pt2) needs an input example: without cubelab_toolkit.compat this call fails and the
    logged model ends UPLOAD_FAILED."""
    out = team_server.run(PYTORCH_LOG_MODEL, timeout=300, kernel_name="cubelab-pytorch")
    found = re.findall(r"RESULT (\{.*\})", out)  # mlflow's progress bars share the line
    assert found, out[-3000:]
    result = json.loads(found[-1])
    assert result["same"] is True
    team = deployment["teams"][0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", issue_token(deployment, team["members"][0]))
        logged = mlflow.MlflowClient(team["tracking_uri"]).get_logged_model(result["model_id"])
    assert str(logged.status).endswith("READY"), logged.status


KERAS_TENSORBOARD = """
import os, numpy as np, keras
logdir = os.path.join(os.environ["TENSORBOARD_LOGDIR"], "RUN")
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[keras.callbacks.TensorBoard(log_dir=logdir)])
print(sorted(os.listdir(logdir)))
"""
TORCH_TENSORBOARD = """
import os
from torch.utils.tensorboard import SummaryWriter
writer = SummaryWriter(os.path.join(os.environ["TENSORBOARD_LOGDIR"], "RUN"))
for step in range(3):
    writer.add_scalar("loss", 1.0 / (step + 1), step)
writer.close()
print("written")
"""


def test_keras_and_pytorch_write_tensorboard_logs_teammates_see(team_server: UserServer) -> None:
    """Keras's TensorBoard callback cannot write s3://; $TENSORBOARD_LOGDIR is a folder both frameworks write, and
    the session's TensorBoard shows the runs from the team's bucket, where cubelab.hub.tbsync copies them."""
    keras_run, torch_run = f"keras-{uuid.uuid4().hex[:8]}", f"torch-{uuid.uuid4().hex[:8]}"
    out = team_server.run(KERAS_TENSORBOARD.replace("RUN", keras_run), timeout=300, kernel_name="cubelab-tensorflow")
    assert "train" in out.strip().splitlines()[-1], out[-2000:]
    out = team_server.run(TORCH_TENSORBOARD.replace("RUN", torch_run), timeout=300, kernel_name="cubelab-pytorch")
    assert out.strip().splitlines()[-1] == "written", out[-2000:]
    assert team_server.wait_for_tensorboard_run(f"{team_server.user}/{keras_run}/")  # Keras: .../train, .../validation
    assert team_server.wait_for_tensorboard_run(f"{team_server.user}/{torch_run}") == [
        f"{team_server.user}/{torch_run}"
    ]
