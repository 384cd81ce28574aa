"""scikit-learn on a cube with bounded memory: partial_fit over chunk-aligned blocks of training points, scaler
fitted on training data only, evaluation on the test split, everything logged to mlflow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import xarray as xr
from sklearn.linear_model import SGDRegressor

from cubelab_toolkit.sampler import iter_point_batches, iter_point_blocks
from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import TEST, TRAIN
from cubelab_toolkit.tracking import log_history, log_scaler, set_alias


@dataclass
class TrainResult:
    model: Any
    scaler: Scaler
    test_rmse: float
    history: list[dict[str, float]]
    run_id: str | None = None
    model_uri: str | None = None


def rmse_on(model: Any, ds: xr.Dataset, features: list[str], target: str, scaler: Scaler, which: int) -> float:
    """Root-mean-square error in the target's own units over one split, block by block."""
    total, count = 0.0, 0
    for block in iter_point_blocks(ds, features, target, which=which):
        if len(block.y) == 0:
            continue
        x, _ = scaler.scale_block(block, features, target)
        predicted = scaler.inverse(target, model.predict(x))
        total += float(np.sum((predicted - block.y) ** 2))
        count += len(block.y)
    if count == 0:
        raise ValueError(f"no valid samples in split {which}")
    return float(np.sqrt(total / count))


def train_sgd(
    ds: xr.Dataset,
    features: list[str],
    target: str,
    *,
    epochs: int = 5,
    seed: int = 0,
    model: Any | None = None,
    scaler: Scaler | None = None,
) -> TrainResult:
    """Fit a linear model by partial_fit over the training blocks (shuffled within each block), `epochs` times.
    The scaler is fitted on the training split unless given (one fitted on a dask cluster, or by preprocess_cube)."""
    if "split" not in ds:
        raise ValueError("the cube needs a `split` variable (cubelab_toolkit.splits.with_split)")
    if scaler is None:
        scaler = Scaler.fit(ds, [*features, target], ds["split"])
    elif unknown := [name for name in (*features, target) if name not in scaler.mean]:
        raise ValueError(f"the scaler has no statistics of {', '.join(unknown)}")
    model = model or SGDRegressor(learning_rate="invscaling", eta0=0.01, random_state=seed, tol=None)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        # One partial_fit call per block: its samples, shuffled, as one batch.
        for x, y in iter_point_batches(ds, features, target, scaler, which=TRAIN, batch_size=None, rng=rng):
            model.partial_fit(x, y)
        history.append({
            "epoch": epoch,
            "train_rmse": rmse_on(model, ds, features, target, scaler, TRAIN),
            "test_rmse": rmse_on(model, ds, features, target, scaler, TEST),
        })  # fmt: skip
    return TrainResult(model, scaler, history[-1]["test_rmse"], history)


def log_to_mlflow(
    result: TrainResult,
    features: list[str],
    target: str,
    *,
    registered_name: str | None = None,
    alias: str | None = "champion",
    params: dict[str, Any] | None = None,
) -> TrainResult:
    """Log params, per-epoch metrics, the scaler and the model (signature, input example) to the active run;
    register it in the team registry and point `alias` at the new version."""
    from mlflow.models import infer_signature

    mlflow.log_params({"model": type(result.model).__name__, "features": ",".join(features), "target": target,
                       **(params or {})})  # fmt: skip
    log_history(result.history)
    mlflow.log_metric("test_rmse_final", result.test_rmse)
    log_scaler(result.scaler)
    example = np.zeros((2, len(features)), dtype="float32")
    info = mlflow.sklearn.log_model(
        result.model, name="model", signature=infer_signature(example, result.model.predict(example)),
        input_example=example, registered_model_name=registered_name,
        metadata={"scaler": json.loads(result.scaler.to_json()), "features": features, "target": target},
    )  # fmt: skip
    result.model_uri = info.model_uri
    result.run_id = mlflow.active_run().info.run_id if mlflow.active_run() else None
    set_alias(info, registered_name, alias)
    return result
