"""Backup and restore of the embedded stack: a round trip into a new state directory while a member logs."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import requests
import xarray as xr
from mlflow.entities import ViewType
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab import plan
from cubelab.backends.local.postgres import SUPERUSER
from cubelab.backends.local.stack import LocalBackend
from platform_tests.hubclient import login

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
MODEL = "cube-model"


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        return model_input * 2


def cli(config: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cubelab", "-c", str(config), *args],
                          capture_output=True, text=True, check=False, timeout=timeout)  # fmt: skip


class Member:
    """Acts as one user against one team's server: MLFLOW_TRACKING_TOKEN is set for the duration of each call."""

    def __init__(self, backend: LocalBackend, user: str, team: str) -> None:
        self.token = backend.hub.issue_token(user)
        self.uri = backend.tracking.url(backend.config.team(team))

    def __enter__(self) -> mlflow.MlflowClient:
        self._old = os.environ.get("MLFLOW_TRACKING_TOKEN")
        os.environ["MLFLOW_TRACKING_TOKEN"] = self.token
        mlflow.set_tracking_uri(self.uri)
        return mlflow.MlflowClient(self.uri)

    def __exit__(self, *exc: object) -> None:
        if self._old is None:
            os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        else:
            os.environ["MLFLOW_TRACKING_TOKEN"] = self._old


def fill(backend: LocalBackend, scratch: Path) -> None:
    """Runs by two teammates (params, tags, metric histories, a zarr cube), a logged model registered twice with
    an alias, and a run of the other team."""
    cube = xr.Dataset({"t2m": (("time", "lat"), np.arange(24.0).reshape(6, 4))}, coords={"lat": [10, 20, 30, 40]})
    cube.to_zarr(scratch / "cube.zarr", mode="w")
    with Member(backend, "alice", "ocean") as client:
        exp = client.create_experiment("cube-forecast")
        for i in range(2):
            run = client.create_run(exp, run_name=f"alice-{i}", tags={"stage": "dev", "i": str(i)}).info.run_id
            client.log_param(run, "lr", 0.1 * (i + 1))
            for step in range(30):
                client.log_metric(run, "loss", 1.0 / (step + 1 + i), step=step)
            client.log_artifacts(run, str(scratch / "cube.zarr"), "cubes/train.zarr")
            client.set_terminated(run)
        mlflow.set_experiment(experiment_id=exp)
        for version in range(2):
            with mlflow.start_run(run_name=f"model-{version}"):
                mlflow.pyfunc.log_model(name="model", python_model=Doubler(), registered_model_name=MODEL)
        client.set_registered_model_alias(MODEL, "champion", "1")
    with Member(backend, "bob", "ocean") as client:
        run = client.create_run(exp, run_name="bob-0").info.run_id
        client.log_param(run, "lr", 0.5)
        client.log_metric(run, "loss", 0.25)
        client.log_text(run, "bob's notes", "notes.txt")
    with Member(backend, "carol", "land") as client:
        run = client.create_run(client.create_experiment("soil")).info.run_id
        client.log_metric(run, "rmse", 3.5)
        client.log_text(run, "soil moisture", "soil.txt")


def team_state(backend: LocalBackend, user: str, team: str) -> dict[str, Any]:
    """What a member sees of the team's server: every run (author, params, tags, metric histories), every
    registered model (versions, sources, aliases)."""
    with Member(backend, user, team) as client:
        runs = {}
        for exp in client.search_experiments(view_type=ViewType.ALL):
            for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL):
                histories = {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, k)]
                             for k in run.data.metrics}  # fmt: skip
                runs[run.info.run_id] = {
                    "experiment": exp.name, "name": run.info.run_name, "user": run.info.user_id,
                    "status": run.info.status, "params": run.data.params, "tags": run.data.tags,
                    "metrics": histories, "artifact_uri": run.info.artifact_uri,
                }  # fmt: skip
        models = {}
        for model in client.search_registered_models():
            versions = client.search_model_versions(f"name='{model.name}'")
            models[model.name] = {
                "aliases": model.aliases,
                "versions": sorted((v.version, v.source, v.run_id, v.status) for v in versions),
            }
    return {"runs": runs, "models": models}


def bucket_digests(backend: LocalBackend, team: str) -> dict[str, str]:
    s3 = backend.s3.client(backend.s3.team_credentials(backend.config.team(team)))
    bucket = backend.config.bucket(backend.config.team(team))
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = hashlib.sha256(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()).hexdigest()
    return out


def artifact_tree(backend: LocalBackend, run_id: str, path: str) -> dict[str, str]:
    """A run's artefact folder as a member downloads it: relative file name -> SHA-256."""
    with Member(backend, "bob", "ocean"):
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))
    return {str(p.relative_to(local)): hashlib.sha256(p.read_bytes()).hexdigest() for p in local.rglob("*")
            if p.is_file()}  # fmt: skip


class Logger(threading.Thread):
    """A member logging a metric as fast as the server takes it; remembers each acknowledged step."""

    def __init__(self, backend: LocalBackend) -> None:
        super().__init__(daemon=True)
        member = Member(backend, "alice", "ocean")
        with member as client:
            self.run_id = client.create_run(client.create_experiment("live")).info.run_id
        self.url = f"{member.uri}/api/2.0/mlflow/runs/log-metric"
        self.headers = {"Authorization": f"Bearer {member.token}"}
        self.acked: list[tuple[int, float]] = []  # (step, when acknowledged)
        self.stop = threading.Event()

    def run(self) -> None:
        step = 0
        while not self.stop.is_set():
            body = {"run_id": self.run_id, "key": "live", "value": step, "timestamp": 0, "step": step}
            if requests.post(self.url, json=body, headers=self.headers, timeout=10).status_code == 200:
                self.acked.append((step, time.time()))
                step += 1


@pytest.fixture(scope="module")
def source(stacks: ScratchStacks, tmp_path_factory: pytest.TempPathFactory) -> LocalBackend:
    backend = stacks.backend(stacks.config())
    backend.up()
    fill(backend, tmp_path_factory.mktemp("fill"))
    return backend


@pytest.fixture(scope="module")
def backup_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backups") / "repo"


def test_round_trip_into_a_new_state_directory_while_a_member_logs(
    source: LocalBackend, stacks: ScratchStacks, backup_dir: Path
) -> None:
    before = {"ocean": team_state(source, "bob", "ocean"), "land": team_state(source, "carol", "land")}
    objects_before = {team: bucket_digests(source, team) for team in ("ocean", "land")}
    assert objects_before["ocean"] and before["ocean"]["models"][MODEL]["aliases"] == {"champion": "1"}
    logger = Logger(source)
    logger.start()
    time.sleep(1.0)
    started = time.time()
    done = cli(source.config.path, "backup", "--to", str(backup_dir))
    logger.stop.set()
    logger.join(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "databases dumped" in done.stdout and "objects" in done.stdout and " MB" in done.stdout
    acked_before_backup = [step for step, when in logger.acked if when < started]
    assert len(acked_before_backup) > 5 and len(logger.acked) > len(acked_before_backup)
    objects_after = {team: bucket_digests(source, team) for team in ("ocean", "land")}

    # The backup folder: private, a manifest, no secrets unless asked.
    (snapshot,) = (backup_dir / "snapshots").iterdir()
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert not manifest["secrets"] and not (snapshot / "files" / "secrets").exists()
    assert stat.S_IMODE((snapshot / "files" / "passwords.json").stat().st_mode) == 0o600
    assert manifest["teams"]["ocean"]["objects"] >= len(objects_before["ocean"])

    target_config = stacks.config()
    restored_run = cli(target_config, "restore", str(backup_dir))
    assert restored_run.returncode == 0, restored_run.stdout + restored_run.stderr
    assert "objects" in restored_run.stdout and "restored backup" in restored_run.stdout
    target = stacks.backend(target_config)
    assert target.config.state_dir != source.config.state_dir and target.hub.url != source.hub.url

    # Every object of the bucket as it was before the backup is there, byte for byte; nothing the source
    # never had.
    for team in ("ocean", "land"):
        got = bucket_digests(target, team)
        assert objects_before[team].items() <= got.items(), team
        assert got.items() <= objects_after[team].items(), team

    # Every run (author, params, tags, full metric histories, artefact root) and model, as teammates see them.
    after = {"ocean": team_state(target, "bob", "ocean"), "land": team_state(target, "carol", "land")}
    live = after["ocean"]["runs"].pop(logger.run_id)
    assert after["land"] == before["land"]
    assert after["ocean"] == before["ocean"]
    assert {r["user"] for r in after["ocean"]["runs"].values()} == {"alice", "bob"}

    # The run logged into during the backup has every step acknowledged before the backup began, in order.
    steps = [step for step, _value, _ts in live["metrics"]["live"]]
    assert steps == list(range(len(steps))) and len(steps) >= len(acked_before_backup)

    # The registered model loads by its alias from the restored server and predicts as before.
    with Member(target, "bob", "ocean"):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        assert list(model.predict(np.array([1.0, 2.5]))) == [2.0, 5.0]
    # The zarr artefact downloads through the restored server as it does through the original one. (mlflow's
    # client skips t2m/c/0/0 on such a download: README, "Zarr cubes as run artefacts"; the bucket digests
    # above cover every object.)
    run_id = next(k for k, r in after["ocean"]["runs"].items() if r["name"] == "alice-0")
    trees = [artifact_tree(backend, run_id, "cubes/train.zarr") for backend in (source, target)]
    assert trees[0] == trees[1] and "t2m/zarr.json" in trees[0], trees

    # Users log in with the passwords they had; the restored stack's own first passwords are gone, not stale.
    for user in ("alice", "carol"):
        password = (source.paths.secrets / "users" / user).read_text().strip()
        session, resp = login(target.hub.url, user, password)
        assert resp.status_code == 302 and "jupyterhub-hub-login" in session.cookies, (user, resp.status_code)
        assert not (target.paths.secrets / "users" / user).exists()
    assert login(target.hub.url, "alice", "not-her-password")[1].status_code != 302


def test_a_second_backup_copies_only_what_changed(source: LocalBackend, backup_dir: Path) -> None:
    first = cli(source.config.path, "backup", "--to", str(backup_dir))
    assert first.returncode == 0, first.stderr
    with Member(source, "alice", "ocean") as client:
        run = client.create_run("0").info.run_id
        client.log_text(run, "one new file", "new.txt")
    done = cli(source.config.path, "backup", "--to", str(backup_dir))
    assert done.returncode == 0, done.stderr
    newest = sorted((backup_dir / "snapshots").iterdir())[-1]
    teams = json.loads((newest / "manifest.json").read_text())["teams"]
    assert teams["ocean"]["copied_objects"] == 1 and teams["ocean"]["copied_bytes"] == len("one new file")
    assert teams["land"]["copied_objects"] == 0 and teams["land"]["objects"] > 0


def test_restore_refuses_a_team_that_holds_data_and_one_team_restores_alone(
    source: LocalBackend, backup_dir: Path
) -> None:
    with Member(source, "carol", "land") as client:
        extra = client.create_run(client.create_experiment(f"after-{time.time_ns()}")).info.run_id
    with Member(source, "alice", "ocean") as client:
        ocean_run = client.create_run("0").info.run_id
    refused = cli(source.config.path, "restore", str(backup_dir), "--team", "land")
    assert refused.returncode == 1
    assert "team land:" in refused.stderr and "--force" in refused.stderr, refused.stderr
    with Member(source, "carol", "land") as client:
        assert client.get_run(extra).info.run_id == extra  # nothing changed
    done = cli(source.config.path, "restore", str(backup_dir), "--team", "land", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    with Member(source, "carol", "land") as client:
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_run(extra)  # land is as it was in the backup
        assert [e.name for e in client.search_experiments() if e.name == "soil"] == ["soil"]
    with Member(source, "alice", "ocean") as client:
        assert client.get_run(ocean_run).info.run_id == ocean_run  # ocean untouched


def test_secrets_only_when_asked_and_private(source: LocalBackend, tmp_path: Path) -> None:
    done = cli(source.config.path, "backup", "--to", str(tmp_path / "b"), "--with-secrets")
    assert done.returncode == 0, done.stderr
    (snapshot,) = (tmp_path / "b" / "snapshots").iterdir()
    files = [p for p in (snapshot / "files" / "secrets").rglob("*") if p.is_file()]
    assert any(p.name == "postgres-superuser" for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o700
    secret = (source.paths.secrets / "postgres-superuser").read_text().strip()
    assert secret not in done.stdout + done.stderr


def test_bad_backup_locations_are_named(source: LocalBackend, backup_dir: Path, tmp_path: Path) -> None:
    missing = cli(source.config.path, "restore", str(tmp_path / "nothing-here"))
    assert missing.returncode == 1 and "holds no backup" in missing.stderr
    scheme = cli(source.config.path, "backup", "--to", "http://example.org/x")
    assert scheme.returncode == 1 and "folder or to s3://" in scheme.stderr
    unknown = cli(source.config.path, "restore", str(backup_dir), "--team", "nosuch")
    assert unknown.returncode == 1 and "team 'nosuch' is not in this backup" in unknown.stderr
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    refused = cli(source.config.path, "backup", "--to", str(shared))
    assert refused.returncode == 1 and "can be written by other accounts" in refused.stderr, refused.stderr
    assert list(shared.iterdir()) == []  # nothing half-written


def test_the_container_job_backs_up_and_restores_with_the_plans_environment(
    source: LocalBackend, tmp_path: Path
) -> None:
    """compose's backup service and the chart's CronJob run cubelab.backup.job with the plan's environment
    (cubelab.plan.backup_service); here with the embedded stack's addresses and secrets."""
    passwords = tmp_path / "passwords.json"
    passwords.write_text((source.paths.hub / "passwords.json").read_text())
    service = plan.backup_service(source.config, source.tracking.addresses(), to=str(tmp_path / "repo"),
                                  passwords_file=str(passwords))  # fmt: skip
    secrets = source.hub.secret_values() | {"POSTGRES_PASSWORD": source.postgres.password()}
    env = os.environ | plan.resolve(service.env, secrets.__getitem__) | {"POSTGRES_USER": SUPERUSER}

    def job(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cubelab.backup.job", *args], env=env, capture_output=True,
                              text=True, check=False, timeout=600)  # fmt: skip

    done = job(*service.command[3:])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "complete" in done.stdout and secrets["POSTGRES_PASSWORD"] not in done.stdout + done.stderr
    (snapshot,) = (tmp_path / "repo" / "snapshots").iterdir()
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert set(manifest["teams"]) == {"ocean", "land"} and "database" in manifest["hub"]
    with Member(source, "carol", "land") as client:
        extra = client.create_run(client.create_experiment(f"job-{time.time_ns()}")).info.run_id
    refused = job("restore", str(tmp_path / "repo"), "--team", "land")
    assert refused.returncode == 1 and "--force" in refused.stderr
    done = job("restore", str(tmp_path / "repo"), "--team", "land", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    source.up()  # the job's documented last step: start the servers again (here: reconnect)
    with Member(source, "carol", "land") as client, pytest.raises(mlflow.exceptions.MlflowException):
        client.get_run(extra)
