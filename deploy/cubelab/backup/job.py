"""Backup and restore inside a container deployment (compose's `backup` service, the chart's CronJob): where
the databases and buckets are comes from the environment the deployment plan gives it
(cubelab.plan.backup_service), as for the provisioning job.

    python -m cubelab.backup.job backup --to /backups
    python -m cubelab.backup.job restore /backups [--team NAME] [--force]

Stop the tracking servers (and, for a whole restore, the hub) before a restore; start them after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cubelab.backup import snapshot
from cubelab.backup.engine import Database
from cubelab.backup.repository import BackupError, locate_snapshot, open_repository
from cubelab.backup.snapshot import TeamData
from cubelab.config import Team
from cubelab.provision import HUB_DATABASE, HUB_ROLE, TeamSecrets
from cubelab.secrets import write_private

PASSWORDS = "passwords.json"


def _need(name: str) -> str:
    if not (value := os.environ.get(name, "")):
        raise BackupError(f"environment variable {name} is not set (the job's environment comes from the plan)")
    return value


def _progress(message: str) -> None:
    print(f"[cubelab backup {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _database(label: str, database: str, role: str) -> Database:
    return Database(label, database, role, _need("POSTGRES_HOST"), int(os.environ.get("POSTGRES_PORT", "5432")),
                    os.environ.get("POSTGRES_USER", "postgres"), _need("POSTGRES_PASSWORD"))  # fmt: skip


def _teams() -> list[TeamData]:
    import boto3
    import botocore.config

    out = []
    for name in _need("CUBELAB_TEAMS").split():
        team, names = Team(name=name, members=()), TeamSecrets(name)
        # The team's own keys: each team's copy reaches its bucket and no other.
        keys = {"aws_access_key_id": _need(names.s3_access_key), "aws_secret_access_key": _need(names.s3_secret_key)}
        s3 = boto3.client("s3", endpoint_url=_need("S3_ENDPOINT"), region_name="us-east-1", **keys,
                          config=botocore.config.Config(retries={"max_attempts": 5}))  # fmt: skip
        bucket = os.environ.get("CUBELAB_BUCKET_PREFIX", "cubelab-") + name
        out.append(TeamData(name, _database(name, team.database, team.role), _need(names.db_password), bucket, s3))
    return out


def _hub() -> Database | None:
    """The hub's database where the deployment keeps it in this Postgres (compose; not zero-to-jupyterhub)."""
    return _database("hub", HUB_DATABASE, HUB_ROLE) if os.environ.get("HUB_DB_PASSWORD") else None


def backup(location: str) -> None:
    repo = open_repository(location)  # a folder is made (0700) on the first write
    files = {}
    if (passwords := os.environ.get("CUBELAB_PASSWORDS_FILE")) and Path(passwords).exists():
        files[PASSWORDS] = (Path(passwords).read_text(), True)
    about = {"backend": os.environ.get("CUBELAB_BACKEND", "container"), "secrets": False}
    manifest = snapshot.take(repo, _hub(), _teams(), files, about, _progress)
    _progress(f"backup {manifest['id']} complete: {repo.location}/snapshots/{manifest['id']}")


def restore(location: str, teams: list[str] | None, force: bool) -> None:
    repo, sid = locate_snapshot(location)
    manifest = snapshot.load(repo, sid)
    data = {t.name: t for t in _teams()}
    chosen = snapshot.chosen_teams(manifest, teams, set(data), "this deployment (CUBELAB_TEAMS)")
    present = snapshot.refuse_non_empty([data[name] for name in chosen], force)
    for name in chosen:
        snapshot.put_back_team(repo, manifest, data[name], present[name], _progress)
    hub = _hub()
    if not teams and hub is not None and "database" in manifest["hub"]:
        snapshot.put_back_hub(repo, manifest, hub, _need("HUB_DB_PASSWORD"))
        if (stored := manifest["files"].get(PASSWORDS)) and (target := os.environ.get("CUBELAB_PASSWORDS_FILE")):
            write_private(Path(target), repo.read_text(stored))
        _progress("hub database and users' password hashes restored")
    _progress(f"restore of {sid} complete: start the tracking servers and the hub again")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cubelab.backup.job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    bk = sub.add_parser("backup", help="back up every team's database and bucket (and the hub's database)")
    bk.add_argument("--to", required=True, metavar="DIR|s3://BUCKET/PREFIX")
    rs = sub.add_parser("restore", help="put a backup back (stop the tracking servers and the hub first)")
    rs.add_argument("backup", metavar="BACKUP")
    rs.add_argument("--team", action="append", metavar="NAME", help="only this team (repeatable)")
    rs.add_argument("--force", action="store_true", help="replace teams that are not empty")
    args = parser.parse_args(argv)
    try:
        if args.command == "backup":
            backup(args.to)
        else:
            restore(args.backup, args.team, args.force)
    except BackupError as exc:
        print(f"cubelab backup: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
