"""Standard scaling fitted on training samples only, kept as plain JSON next to the model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cubelab_toolkit.splits import TRAIN


@dataclass(frozen=True)
class Scaler:
    """Per-variable mean and standard deviation, from training data only."""

    mean: dict[str, float]
    std: dict[str, float]
    fitted_on: str = "train"

    @classmethod
    def fit(
        cls, ds: xr.Dataset, variables: list[str], split: xr.DataArray | None = None, *, client: Any = None
    ) -> Scaler:
        """Statistics of each variable over the finite values where split is train (all values without split), in
        one pass over the data: on a dask cluster when given its `client` (a distributed.Client, such as a
        dask-gateway cluster's `get_client()`), else on dask's current scheduler."""
        import dask

        train = (split == TRAIN) if split is not None else True
        stats = []
        for name in variables:
            values = ds[name].where(train)
            stats += [values.mean(skipna=True), values.std(skipna=True)]
        computed = dask.compute(*stats, scheduler=client) if client is not None else dask.compute(*stats)
        mean, std = {}, {}
        for i, name in enumerate(variables):
            m, s = float(computed[2 * i]), float(computed[2 * i + 1])
            if not np.isfinite(m) or not np.isfinite(s):
                raise ValueError(f"{name} has no finite training values")
            mean[name], std[name] = m, s if s > 0 else 1.0
        return cls(mean, std, "train" if split is not None else "all")

    def transform(self, name: str, values: xr.DataArray | np.ndarray) -> xr.DataArray | np.ndarray:
        return (values - self.mean[name]) / self.std[name]

    def inverse(self, name: str, values: xr.DataArray | np.ndarray) -> xr.DataArray | np.ndarray:
        return values * self.std[name] + self.mean[name]

    def scale_block(self, block: Any, features: list[str], target: str) -> tuple[np.ndarray, np.ndarray]:
        """Scaled float32 features (n, len(features)) and target (n,) of a sampler PointBlock."""
        x = np.stack([self.transform(f, block.x[:, i]) for i, f in enumerate(features)], axis=1)
        return x.astype("float32"), np.asarray(self.transform(target, block.y), dtype="float32")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scaler:
        return cls(**json.loads(text))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path
