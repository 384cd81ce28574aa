"""Lineage: log_input records the cube's URI, variables, selection, chunking and split, with a content digest."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from cubelab_toolkit.cube import chunked, synthetic_cube
from cubelab_toolkit.lineage import content_digest, cube_dataset
from cubelab_toolkit.splits import with_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_log_input_records_the_cube(tmp_path: Path) -> None:
    ds = chunked(with_split(synthetic_cube(years=1, resolution=6.0, seed=2), "block", seed=11), "map")
    part = ds.sel(lat=slice(-30, 30))
    dataset = cube_dataset(part, "s3://cubelab-ocean/cubes/esdc.zarr", ["air_temperature_2m", "split"])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("lineage", artifact_location=(tmp_path / "a").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_input(dataset, context="training")
    logged = mlflow.get_run(run.info.run_id).inputs.dataset_inputs[0]
    assert logged.tags[0].value == "training"
    assert logged.dataset.source_type == "zarr"
    assert json.loads(logged.dataset.source) == {"uri": "s3://cubelab-ocean/cubes/esdc.zarr"}
    profile = json.loads(logged.dataset.profile)
    assert profile["variables"] == ["air_temperature_2m", "split"]
    assert -30 <= profile["selection"]["lat"][0] and profile["selection"]["lat"][1] <= 30
    assert profile["chunking"]["time"] == 1 and profile["split"]["seed"] == 11
    assert logged.dataset.digest == dataset.digest


def test_digest_changes_with_the_data() -> None:
    ds = synthetic_cube(years=1, resolution=8.0, seed=3)
    a = content_digest(chunked(ds, "map"), ["air_temperature_2m"])
    b = content_digest(ds, ["air_temperature_2m"])
    changed = ds.copy(deep=True)
    changed["air_temperature_2m"][0, 0, 0] += 1
    assert content_digest(changed, ["air_temperature_2m"]) != b
    # Each block is hashed where it is, then the block digests in order: other chunks, another digest.
    assert a != b and len(a) == len(b) == 64
    assert content_digest(chunked(ds, "map"), ["air_temperature_2m"]) == a  # and the same chunks, the same one
