"""`cubelab upgrade`: team databases made and filled by an older mlflow (the oldest 3.x that installs here, in
its own environment) are backed up, migrated to the pinned mlflow's schema and served again with their data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import ViewType
from scratch import REPO, ScratchStacks  # deploy/tests/scratch.py

from cubelab.backends.local.postgres import SUPERUSER, server_bindir
from cubelab.backends.local.stack import LocalBackend
from cubelab.backup.engine import Database, recreate_database

OLD = Path(__file__).parent / "old_mlflow"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def old_python() -> Path:
    """A venv with the old mlflow, made once and kept while its requirements do not change."""
    venv = REPO / ".cubelab" / "old-mlflow"
    requirements = (OLD / "requirements.txt").read_text()
    marker = venv / ".requirements"
    if not marker.exists() or marker.read_text() != requirements:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "-r",
                        str(OLD / "requirements.txt")], check=True, timeout=900)  # fmt: skip
        marker.write_text(requirements)
    return venv / "bin/python"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cubelab", "-c", str(config), *args],
                          capture_output=True, text=True, check=False, timeout=900)  # fmt: skip


def make_old(backend: LocalBackend, team_name: str, old_python: Path) -> dict:
    """The team's database made again, empty, and filled by the old mlflow (its server stopped meanwhile)."""
    team = backend.config.team(team_name)
    backend.procs.stop(team.service)
    password = backend.tracking.db_password(team)
    pg = backend.postgres
    db = Database(team.name, team.database, team.role, str(pg.socket_dir), pg.port, SUPERUSER, pg.password(),
                  server_bindir())  # fmt: skip
    recreate_database(db, password)
    uri = backend.postgres.store_uri(team, password).replace("+psycopg2", "")
    done = subprocess.run([str(old_python), str(OLD / "fill.py")], env=os.environ | {"OLD_STORE_URI": uri},
                          capture_output=True, text=True, check=False, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_upgrade_backs_up_migrates_and_serves_what_the_old_mlflow_logged(
    stacks: ScratchStacks, old_python: Path, tmp_path: Path
) -> None:
    backend = stacks.backend(stacks.config())
    backend.up()
    filled = make_old(backend, "ocean", old_python)
    assert filled["mlflow"] == "3.0.0"

    done = cli(backend.config.path, "upgrade", "--to", str(tmp_path / "backups"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "team ocean: mlflow" in done.stdout and "migrated from" in done.stdout, done.stdout
    assert "team land: mlflow" in done.stdout and "already current" in done.stdout
    assert "hub database" in done.stdout
    assert len(list((tmp_path / "backups" / "snapshots").iterdir())) == 1  # backed up first

    os.environ["MLFLOW_TRACKING_TOKEN"] = backend.hub.issue_token("bob")
    try:
        client = mlflow.MlflowClient(backend.tracking.url(backend.config.team("ocean")))
        runs = client.search_runs([filled["experiment"]], run_view_type=ViewType.ALL, order_by=["attribute.run_name"])
        assert [r.info.run_id for r in runs] == filled["runs"]
        for i, run in enumerate(runs):
            assert run.data.params == {"lr": str(0.1 * (i + 1))} and run.data.tags["stage"] == "old"
            history = client.get_metric_history(run.info.run_id, "loss")
            assert [m.step for m in history] == list(range(50)) and history[0].value == 1.0 / (1 + i)
            assert run.info.user_id == "alice" and run.info.status == "FINISHED"
        assert client.get_model_version_by_alias("legacy-model", "prod").run_id == filled["runs"][0]
        new = client.create_run(filled["experiment"]).info.run_id  # and the migrated database takes new runs
        client.log_metric(new, "loss", 0.1)
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)


def test_a_failed_migration_names_the_team_and_how_to_restore(
    stacks: ScratchStacks, old_python: Path, tmp_path: Path
) -> None:
    backend = stacks.backend(stacks.config())
    backend.up()
    make_old(backend, "land", old_python)
    with backend.postgres.connect(backend.config.team("land").database) as conn, conn.cursor() as cur:
        cur.execute("UPDATE alembic_version SET version_num = 'nosuchrevision'")  # a schema no mlflow knows
    done = cli(backend.config.path, "upgrade", "--to", str(tmp_path / "b"))
    assert done.returncode == 1
    assert "team land" in done.stderr and "cubelab restore" in done.stderr and "--team land" in done.stderr
    snapshot = Path(done.stderr.split("cubelab restore ", 1)[1].split()[0])
    assert (snapshot / "manifest.json").exists() and snapshot.is_relative_to(tmp_path / "b")
