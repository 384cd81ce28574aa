"""One backup as a whole: what it holds (the manifest), in what order it is taken, and how it goes back.

Used by the embedded stack (cubelab.backends.local.maintenance) and by the container job (cubelab.backup.job)
that compose and the Helm chart run; each says where its databases and buckets are.

Every database is dumped first, and the buckets are copied after. mlflow writes an artefact to the bucket before
it records anything that leads to it (a run's artefacts live under the run's artefact root, which exists from the
run's creation; a logged model's files are uploaded before it is marked READY; a model version points at a run or
logged model that already exists), and it never rewrites an object in place. So every object the dumped metadata
can lead to is already in the bucket when the copy starts, and is copied; objects logged after the dump are
copied too and are simply not referenced. Only a permanent delete between dump and copy could remove one: `gc`
takes the same lock as backup on the embedded stack, and the chart's schedules keep them apart.
"""

from __future__ import annotations

import datetime
import json
import secrets
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from cubelab import __version__
from cubelab.backup import engine
from cubelab.backup.engine import Database, Progress
from cubelab.backup.repository import MANIFEST, SNAPSHOTS, BackupError, Repository

FORMAT = 1


@dataclass(frozen=True)
class TeamData:
    """Where one team's data is: its database (and its role's password, to make it again) and its bucket."""

    name: str
    database: Database
    db_password: str
    bucket: str
    s3: Any  # a boto3 client that reaches the bucket


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def new_id() -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


def previous_indexes(repo: Repository) -> dict[str, list[dict[str, Any]]]:
    """bucket -> its object index in the newest snapshot of the repository that has it."""
    found: dict[str, list[dict[str, Any]]] = {}
    for sid in reversed(repo.snapshot_ids()):
        old = json.loads(repo.read_text(f"{SNAPSHOTS}/{sid}/{MANIFEST}"))
        for entry in old.get("teams", {}).values():
            if entry.get("bucket") and entry["bucket"] not in found:
                found[entry["bucket"]] = engine.read_index(repo, entry["index"])
    return found


def take(repo: Repository, hub: Database | None, teams: list[TeamData], files: dict[str, tuple[str, bool]],
         about: dict[str, Any], progress: Progress) -> dict[str, Any]:  # fmt: skip
    """Write a snapshot: databases, then buckets (incrementally against the repository's newest snapshot),
    then files (name -> (text, private)), then the manifest, which marks the snapshot complete. `about` goes
    into the manifest (backend, config, …). Returns the manifest."""
    sid = new_id()
    folder = f"{SNAPSHOTS}/{sid}"
    progress(f"backup {sid} into {repo.location}")
    manifest: dict[str, Any] = {"format": FORMAT, "id": sid, "started": _now(), "cubelab": __version__,
                                "mlflow": _version("mlflow"), **about, "hub": {}, "teams": {}}  # fmt: skip
    if hub is not None:
        manifest["hub"]["database"] = engine.dump_database(hub, repo, f"{folder}/databases/hub.dump")
    for team in teams:
        dump = engine.dump_database(team.database, repo, f"{folder}/databases/team-{team.name}.dump")
        manifest["teams"][team.name] = {"database": dump}
    progress(f"databases dumped: {'hub and ' if hub else ''}{len(teams)} team(s)")
    previous = previous_indexes(repo)
    for team in teams:
        index, counts = engine.backup_bucket(team.s3, team.bucket, repo, previous.get(team.bucket, []), progress,
                                             f"team {team.name}")  # fmt: skip
        name = f"{folder}/teams/{team.name}.objects.jsonl"
        repo.write_text(name, "".join(json.dumps(e, sort_keys=True) + "\n" for e in index))
        manifest["teams"][team.name] |= {"bucket": team.bucket, "index": name, **counts}
    manifest["files"] = {}
    for name, (text, private) in files.items():
        manifest["files"][name] = f"{folder}/files/{name}"
        repo.write_text(manifest["files"][name], text, private=private)
    manifest["finished"] = _now()
    repo.write_text(f"{folder}/{MANIFEST}", json.dumps(manifest, indent=2) + "\n")
    return manifest


def load(repo: Repository, sid: str) -> dict[str, Any]:
    manifest = json.loads(repo.read_text(f"{SNAPSHOTS}/{sid}/{MANIFEST}"))
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{repo.location}/{SNAPSHOTS}/{sid} has backup format {manifest.get('format')}; "
                          f"this cubelab reads format {FORMAT}")  # fmt: skip
    return manifest


def chosen_teams(manifest: dict[str, Any], teams: list[str] | None, deployed: set[str], where: str) -> list[str]:
    """The teams a restore replaces: those named (each in the backup and deployed), or all of the backup's."""
    in_backup = set(manifest["teams"])
    if teams:
        for name in teams:
            if name not in in_backup:
                raise BackupError(f"team {name!r} is not in this backup (it has: {', '.join(sorted(in_backup))})")
            if name not in deployed:
                raise BackupError(f"team {name!r} is not in {where}; add it first")
        return list(dict.fromkeys(teams))
    if missing := sorted(in_backup - deployed):
        raise BackupError(f"the backup has team(s) {', '.join(missing)} that {where} lacks; deploy them first "
                          "(the backup's config is in it, under files/) or name teams with --team")  # fmt: skip
    return sorted(in_backup)


def contents(team: TeamData) -> tuple[str, list[str]]:
    """What the team holds now, in words ('' when it is empty: no runs, models, own experiments or objects), and
    the keys of its bucket's objects."""
    counts = engine.table_counts(team.database, {
        "runs": "SELECT count(*) FROM runs",
        "experiments": "SELECT count(*) FROM experiments WHERE experiment_id <> 0",
        "registered models": "SELECT count(*) FROM registered_models",
    })  # fmt: skip
    keys = [o["key"] for o in engine.list_bucket(team.s3, team.bucket)]
    counts["objects"] = len(keys)
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n), keys


def refuse_non_empty(teams: list[TeamData], force: bool) -> dict[str, list[str]]:
    """Stops with the list of what would be replaced, unless force; returns each team's present object keys."""
    found = {team.name: contents(team) for team in teams}
    refused = [f"team {name}: {what}" for name, (what, _keys) in found.items() if what]
    if refused and not force:
        raise BackupError("restore would replace what these teams hold now:\n  " + "\n  ".join(refused)
                          + "\nBack them up first if they matter, then add --force.")  # fmt: skip
    return {name: keys for name, (_what, keys) in found.items()}


def put_back_team(repo: Repository, manifest: dict[str, Any], team: TeamData, present: list[str],
                  progress: Progress) -> None:  # fmt: skip
    entry = manifest["teams"][team.name]
    engine.restore_database(team.database, repo, entry["database"], team.db_password)
    progress(f"team {team.name}: database restored ({entry['database']['bytes'] / 2**20:.1f} MB dump)")
    engine.restore_bucket(team.s3, team.bucket, repo, engine.read_index(repo, entry["index"]), progress,
                          f"team {team.name}", present)  # fmt: skip


def put_back_hub(repo: Repository, manifest: dict[str, Any], hub: Database, password: str) -> None:
    if "database" not in manifest["hub"]:
        raise BackupError("this backup has no hub database (the deployment's hub kept its own)")
    engine.restore_database(hub, repo, manifest["hub"]["database"], password)
