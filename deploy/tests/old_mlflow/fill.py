"""Run with the old mlflow (deploy/tests/old_mlflow): makes the team database's schema at that release and logs
into it directly through mlflow's SQL store. Prints what it logged as JSON. The store URI comes from
OLD_STORE_URI (never argv)."""

from __future__ import annotations

import json
import os

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

uri = os.environ["OLD_STORE_URI"]
client = MlflowClient(tracking_uri=uri, registry_uri=uri)
experiment = client.create_experiment("legacy", tags={"era": "3.0"})
runs = []
for i in range(2):
    run = client.create_run(experiment, run_name=f"legacy-{i}", tags={"mlflow.user": "alice"}).info.run_id
    client.log_batch(run, metrics=[Metric("loss", 1.0 / (s + 1 + i), 1_700_000_000_000 + s, s) for s in range(50)],
                     params=[Param("lr", str(0.1 * (i + 1)))], tags=[RunTag("stage", "old")])  # fmt: skip
    client.set_terminated(run)
    runs.append(run)
client.create_registered_model("legacy-model")
client.create_model_version("legacy-model", source="s3://somewhere/model", run_id=runs[0])
client.set_registered_model_alias("legacy-model", "prod", "1")
print(json.dumps({"mlflow": mlflow.__version__, "experiment": experiment, "runs": runs}))
