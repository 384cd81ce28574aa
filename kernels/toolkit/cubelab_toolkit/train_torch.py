"""PyTorch on a cube: a streaming IterableDataset sharded across DataLoader workers and distributed ranks, and a
training loop that is correct (zero_grad/backward/step every batch, train/eval modes, early stopping on the
test split, the right number of steps) and logs to mlflow and TensorBoard. Trains on the GPU when there is one
(`device`); the model comes back on the CPU either way."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cubelab_toolkit.sampler import batch_blocks, iter_point_batches
from cubelab_toolkit.scaling import Scaler
from cubelab_toolkit.splits import TEST, TRAIN


class CubePoints(IterableDataset):
    """Mini-batches of scaled point samples, block by block; each (rank, worker) reads only its share of blocks."""

    def __init__(
        self,
        ds: xr.Dataset,
        features: list[str],
        target: str,
        scaler: Scaler,
        *,
        which: int,
        batch_size: int = 1024,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.ds, self.features, self.target, self.scaler = ds, features, target, scaler
        self.which, self.batch_size, self.shuffle, self.seed = which, batch_size, shuffle, seed
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        self.epoch = 0
        self.blocks = batch_blocks(ds, target, shuffle=shuffle)

    def set_epoch(self, epoch: int) -> None:
        """A different shuffle every epoch (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def shard(self) -> list[tuple[slice, slice, slice]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shards, shard = self.world_size * workers, self.rank * workers + worker
        return self.blocks[shard::shards]

    def __iter__(self) -> Any:
        rng = np.random.default_rng((self.seed, self.epoch, self.rank)) if self.shuffle else None
        batches = iter_point_batches(
            self.ds, self.features, self.target, self.scaler,
            which=self.which, batch_size=self.batch_size, rng=rng, blocks=self.shard(),
        )  # fmt: skip
        for x, y in batches:
            yield torch.from_numpy(x), torch.from_numpy(y)


def mlp(n_in: int, hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))  # fmt: skip


@dataclass
class TorchResult:
    model: nn.Module
    scaler: Scaler
    test_rmse: float
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0


def default_device() -> torch.device:
    """The first CUDA device when torch sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(
    model: nn.Module, loader: DataLoader, scaler: Scaler, target: str, device: torch.device | str = "cpu"
) -> float:
    """RMSE in the target's units; eval mode and no gradients. Batches go to `device` (where the model is)."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            predicted = model(x).squeeze(-1)
            err = (predicted - y) * scaler.std[target]
            total += (err.double() ** 2).sum()
            count += len(y)
    return math.sqrt(float(total) / count) if count else float("nan")


def train_torch(
    ds: xr.Dataset,
    features: list[str],
    target: str,
    *,
    epochs: int = 10,
    batch_size: int = 1024,
    lr: float = 3e-3,
    patience: int = 3,
    workers: int = 0,
    seed: int = 0,
    model: nn.Module | None = None,
    tensorboard_dir: str | None = None,
    log_mlflow: bool = False,
    device: torch.device | str | None = None,
) -> TorchResult:
    """Train (default: an MLP) with Adam on the train split, early stopping on the test split's RMSE. `device`:
    where the model and every batch live while training (default: CUDA if torch sees a GPU, else the CPU).
    The returned model is on the CPU, in eval mode, holding the best epoch's weights."""
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    scaler = Scaler.fit(ds, [*features, target], ds["split"])
    train = CubePoints(ds, features, target, scaler, which=TRAIN, batch_size=batch_size, seed=seed)
    test = CubePoints(ds, features, target, scaler, which=TEST, batch_size=4096, shuffle=False)
    # spawn: forked workers hang on dask's thread pool once the parent has used dask (FACTS.md).
    context = "spawn" if workers else None
    train_loader = DataLoader(train, batch_size=None, num_workers=workers, multiprocessing_context=context)
    test_loader = DataLoader(test, batch_size=None)
    model = (model or mlp(len(features))).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    writer = None
    if tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tensorboard_dir)
    best, best_state, bad_epochs, steps, history = math.inf, None, 0, 0, []
    for epoch in range(epochs):
        train.set_epoch(epoch)
        model.train()
        # Summed on the device: float(loss) every step would wait for the GPU after each batch.
        running, batches = torch.zeros((), device=device), 0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss = loss_fn(model(x).squeeze(-1), y)
            loss.backward()
            optimizer.step()
            running += loss.detach()
            batches += 1
            steps += 1
        test_rmse = evaluate(model, test_loader, scaler, target, device)
        row = {"epoch": epoch, "train_loss": float(running) / max(batches, 1), "test_rmse": test_rmse}
        history.append(row)
        if writer:
            writer.add_scalar("loss/train", row["train_loss"], epoch)
            writer.add_scalar("rmse/test", test_rmse, epoch)
        if log_mlflow:
            import mlflow

            mlflow.log_metrics({"train_loss": row["train_loss"], "test_rmse": test_rmse}, step=epoch)
        if test_rmse < best - 1e-4:
            best, bad_epochs = test_rmse, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                break
    if writer:
        writer.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu")  # callers predict on numpy-backed tensors and log_torch saves it: hand it back on the CPU
    return TorchResult(model, scaler, best, history, steps)


def log_torch(
    result: TorchResult,
    features: list[str],
    target: str,
    *,
    registered_name: str | None = None,
    alias: str | None = "champion",
    params: dict[str, Any] | None = None,
) -> Any:
    """Log params, per-epoch metrics, the scaler and the model (signature, input example) to the active run;
    register it and point alias at the new version. Returns mlflow's ModelInfo."""
    import mlflow

    from cubelab_toolkit.tracking import log_history, log_scaler, set_alias, tensor_signature

    mlflow.log_params({"model": type(result.model).__name__, "features": ",".join(features), "target": target,
                       "steps": result.steps, **(params or {})})  # fmt: skip
    log_history(result.history)
    mlflow.log_metric("test_rmse_best", result.test_rmse)
    log_scaler(result.scaler)
    example = np.zeros((2, len(features)), dtype="float32")
    # Tensor specs, stated: mlflow's default 'pt2' format traces the model and accepts nothing else.
    signature = tensor_signature(len(features), (-1, 1))
    info = mlflow.pytorch.log_model(
        result.model, name="model", signature=signature, input_example=example,
        registered_model_name=registered_name,
    )  # fmt: skip
    set_alias(info, registered_name, alias)
    return info
