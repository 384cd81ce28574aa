"""TensorFlow/Keras on a cube: tf.data streaming from the same chunk-aligned sampler, the right number of steps
per epoch (every training batch, counted up front), early stopping on the test split, TensorBoard logs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from cubelab_toolkit.sampler import count_point_batches, iter_point_batches
from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import TEST, TRAIN


def dataset(
    ds: xr.Dataset,
    features: list[str],
    target: str,
    scaler: Scaler,
    *,
    which: int,
    batch_size: int = 1024,
    shuffle: bool = True,
    seed: int = 0,
) -> Any:
    """A tf.data.Dataset of scaled (x, y) batches, read block by block (bounded memory)."""
    import tensorflow as tf

    epoch = {"n": 0}

    def batches() -> Any:
        rng = np.random.default_rng((seed, epoch["n"])) if shuffle else None
        epoch["n"] += 1
        yield from iter_point_batches(ds, features, target, scaler, which=which, batch_size=batch_size, rng=rng)

    spec = (tf.TensorSpec((None, len(features)), tf.float32), tf.TensorSpec((None,), tf.float32))
    return tf.data.Dataset.from_generator(batches, output_signature=spec).prefetch(2)


@dataclass
class KerasResult:
    model: Any
    scaler: Scaler
    test_rmse: float
    steps_per_epoch: int
    history: dict[str, list[float]] = field(default_factory=dict)


def train_keras(
    ds: xr.Dataset,
    features: list[str],
    target: str,
    *,
    epochs: int = 10,
    batch_size: int = 1024,
    lr: float = 3e-3,
    patience: int = 3,
    seed: int = 0,
    tensorboard_dir: str | None = None,
    model: Any = None,
    callbacks: list[Any] | None = None,
) -> KerasResult:
    import keras

    keras.utils.set_random_seed(seed)
    scaler = Scaler.fit(ds, [*features, target], ds["split"])
    train = dataset(ds, features, target, scaler, which=TRAIN, batch_size=batch_size, seed=seed).repeat()
    test = dataset(ds, features, target, scaler, which=TEST, batch_size=4096, shuffle=False)
    # Counted, not guessed: with a repeating dataset Keras runs exactly this many steps per epoch.
    steps = count_point_batches(ds, features, target, which=TRAIN, batch_size=batch_size)
    model = model or keras.Sequential([
        keras.Input((len(features),)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(1),
        keras.layers.Reshape(()),
    ])  # fmt: skip
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    all_callbacks: list[Any] = [stopping, *(callbacks or [])]
    if tensorboard_dir:
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=tensorboard_dir))
    fit = model.fit(
        train, epochs=epochs, steps_per_epoch=steps, validation_data=test, callbacks=all_callbacks, verbose=0
    )
    test_mse = float(model.evaluate(test, verbose=0))
    return KerasResult(model, scaler, math.sqrt(test_mse) * scaler.std[target], steps, dict(fit.history))


def log_keras(
    result: KerasResult,
    features: list[str],
    target: str,
    *,
    registered_name: str | None = None,
    alias: str | None = "champion",
    params: dict[str, Any] | None = None,
) -> Any:
    """Log params, per-epoch metrics, the scaler and the Keras model to the active run; register it and point
    alias at the new version. Returns mlflow's ModelInfo."""
    import mlflow

    from cubelab_toolkit.tracking import log_history, log_scaler, set_alias, tensor_signature

    mlflow.log_params({"model": "keras.Sequential", "features": ",".join(features), "target": target,
                       "steps_per_epoch": result.steps_per_epoch, **(params or {})})  # fmt: skip
    epochs = len(next(iter(result.history.values()), []))
    std = result.scaler.std[target]
    rows = [{"epoch": e, **{k: v[e] for k, v in result.history.items()}} for e in range(epochs)]
    for row in rows:  # in the target's units, comparable with the other frameworks' runs
        row["test_rmse"] = math.sqrt(row["val_loss"]) * std
    log_history(rows)
    mlflow.log_metric("test_rmse_best", result.test_rmse)
    log_scaler(result.scaler)
    example = np.zeros((2, len(features)), dtype="float32")
    # mlflow.tensorflow (not mlflow.keras, whose 3.17.2 log_model fails to write the input example).
    info = mlflow.tensorflow.log_model(
        result.model, name="model", signature=tensor_signature(len(features), (-1,)),
        input_example=example, registered_model_name=registered_name,
    )  # fmt: skip
    set_alias(info, registered_name, alias)
    return info
