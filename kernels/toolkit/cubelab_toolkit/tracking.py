"""What every trainer logs the same way: per-epoch metrics, the scaler, the registry alias, TensorBoard logs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from cubelab_toolkit.scaling import Scaler


def log_history(history: list[dict[str, float]]) -> None:
    for row in history:
        mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def log_scaler(scaler: Scaler) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(scaler.save(Path(tmp) / "scaler.json")), "preprocessing")


def tensor_signature(n_features: int, output_shape: tuple[int, ...] = (-1, 1)) -> Any:
    """A signature of float32 tensors (batch, n_features) -> output_shape, as the deep-learning flavours need
    (infer_signature may give column specs instead, which mlflow's pytorch and tensorflow flavours refuse)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, n_features))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), output_shape)]),
    )


def set_alias(model_info: Any, registered_name: str | None, alias: str | None) -> None:
    """Point alias (e.g. champion) at the version log_model just registered."""
    if registered_name and alias and model_info.registered_model_version:
        mlflow.MlflowClient().set_registered_model_alias(
            registered_name, alias, str(model_info.registered_model_version)
        )


def publish_tensorboard(local_dir: str | Path, run_name: str) -> str | None:
    """Copy TensorBoard event files to the team's TENSORBOARD_LOGDIR (s3:// or a folder) under run_name and
    keep them with the mlflow run. Returns where they went."""
    local_dir = Path(local_dir)
    if not any(local_dir.rglob("events.out.tfevents.*")):
        return None
    if mlflow.active_run():
        mlflow.log_artifacts(str(local_dir), "tensorboard")
    target = os.environ.get("TENSORBOARD_LOGDIR")
    if not target:
        return None
    destination = f"{target.rstrip('/')}/{run_name}"
    if destination.startswith("s3://"):
        import s3fs

        from cubelab_toolkit.artifacts import s3_options

        s3fs.S3FileSystem(**s3_options()).put(str(local_dir), destination, recursive=True)
    else:
        import shutil

        shutil.copytree(local_dir, destination, dirs_exist_ok=True)
    return destination
