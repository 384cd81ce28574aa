"""Backup and restore of the embedded stack (`cubelab backup`, `cubelab restore`).

A backup dumps every database first and copies the buckets after. mlflow writes an artefact to the bucket before
it records anything that leads to it (a run's artefacts live under the run's artefact root, which exists from the
run's creation; a logged model's files are uploaded before it is marked READY; a model version points at a run or
logged model that already exists), and it never rewrites an object in place. So every object the dumped metadata
can lead to is already in the bucket when the copy starts, and is copied; objects logged after the dump are copied
too and are simply not referenced. Only a permanent delete between dump and copy could remove one, and `cubelab
gc` takes the same maintenance lock as backup and restore.
"""

from __future__ import annotations

import datetime
import json
import secrets as random
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cubelab import __version__, plan
from cubelab.backends.local import hub as hub_module
from cubelab.backends.local import supervisor
from cubelab.backends.local.postgres import SUPERUSER, server_bindir
from cubelab.backup import engine
from cubelab.backup.engine import Database
from cubelab.backup.repository import (
    MANIFEST,
    SNAPSHOTS,
    BackupError,
    FolderRepository,
    Repository,
    locate_snapshot,
    open_repository,
)
from cubelab.config import Team
from cubelab.passwords import PasswordFile, verify_password
from cubelab.provision import HUB_DATABASE, HUB_ROLE, provision_database
from cubelab.secrets import write_private

if TYPE_CHECKING:
    from cubelab.backends.local.stack import LocalBackend

FORMAT = 1
PASSWORDS = "passwords.json"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class Maintenance:
    """Backup and restore for one LocalBackend."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.progress = backend.progress

    # -- what is where ----------------------------------------------------------------------------
    def _database(self, label: str, database: str, role: str) -> Database:
        pg = self.backend.postgres
        return Database(label, database, role, "127.0.0.1", pg.port, SUPERUSER, pg.password(), server_bindir())

    def _team_database(self, team: Team) -> Database:
        return self._database(team.name, team.database, team.role)

    def _hub_database(self) -> Database:
        return self._database("hub", HUB_DATABASE, HUB_ROLE)

    def _team_s3(self, team: Team) -> Any:
        """The team's own keys: a team's backup and restore reach its bucket and no other."""
        return self.backend.s3.client(self.backend.s3.team_credentials(team))

    # -- backup ---------------------------------------------------------------------------------
    def backup(self, location: str, with_secrets: bool = False) -> tuple[Repository, str, dict[str, Any]]:
        backend = self.backend
        if not backend.postgres.healthy() or not backend.s3.healthy():
            raise BackupError("Postgres and SeaweedFS must be running for a backup: run `cubelab up` first")
        repo = open_repository(location)
        if isinstance(repo, FolderRepository):
            repo.create()
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        sid = f"{stamp}-{random.token_hex(2)}"
        folder = f"{SNAPSHOTS}/{sid}"
        with backend.procs.lock("maintenance"):
            self.progress(f"backup {sid} into {repo.location}")
            manifest: dict[str, Any] = {
                "format": FORMAT, "id": sid, "started": _now(), "cubelab": __version__, "mlflow": _version("mlflow"),
                "backend": "local", "postgres": self._server_version(), "config": f"{folder}/config.yaml",
                "secrets": with_secrets, "hub": {}, "teams": {},
            }  # fmt: skip
            # 1. Every database first (see the module's docstring for why this order is consistent).
            dumps = f"{folder}/databases"
            manifest["hub"]["database"] = engine.dump_database(self._hub_database(), repo, f"{dumps}/hub.dump")
            for team in backend.config.teams:
                entry = engine.dump_database(self._team_database(team), repo, f"{dumps}/team-{team.name}.dump")
                manifest["teams"][team.name] = {"database": entry}
            self.progress(f"databases dumped: hub and {len(backend.config.teams)} team(s)")
            # 2. Then the buckets, incrementally against the newest earlier snapshot in this repository.
            previous = self._previous_indexes(repo)
            for team in backend.config.teams:
                bucket = backend.config.bucket(team)
                index, counts = engine.backup_bucket(self._team_s3(team), bucket, repo, previous.get(bucket, []),
                                                     self.progress, f"team {team.name}")  # fmt: skip
                name = f"{folder}/teams/{team.name}.objects.jsonl"
                repo.write_text(name, "".join(json.dumps(e, sort_keys=True) + "\n" for e in index))
                manifest["teams"][team.name] |= {"bucket": bucket, "index": name, **counts}
            # 3. What else a deployment needs: its config, the hub's password hashes, and secrets if asked.
            repo.write_text(manifest["config"], Path(backend.config.path).read_text())
            passwords = backend.paths.hub / PASSWORDS
            if passwords.exists():
                manifest["hub"]["passwords"] = f"{folder}/hub/{PASSWORDS}"
                repo.write_text(manifest["hub"]["passwords"], passwords.read_text(), private=True)
            if with_secrets:
                manifest["secret_files"] = self._save_secrets(repo, folder)
            manifest["finished"] = _now()
            # The manifest last: a snapshot without one is unfinished, and restore does not see it.
            repo.write_text(f"{folder}/{MANIFEST}", json.dumps(manifest, indent=2) + "\n")
        return repo, sid, manifest

    def _server_version(self) -> str:
        with self.backend.postgres.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return str(cur.fetchone()[0])

    def _previous_indexes(self, repo: Repository) -> dict[str, list[dict[str, Any]]]:
        """bucket -> the index of the newest snapshot in the repository that has it."""
        found: dict[str, list[dict[str, Any]]] = {}
        for sid in reversed(repo.snapshot_ids()):
            old = json.loads(repo.read_text(f"{SNAPSHOTS}/{sid}/{MANIFEST}"))
            for entry in old.get("teams", {}).values():
                if entry.get("bucket") and entry["bucket"] not in found:
                    found[entry["bucket"]] = engine.read_index(repo, entry["index"])
        return found

    def _save_secrets(self, repo: Repository, folder: str) -> list[str]:
        root = self.backend.paths.secrets
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        for name in names:
            repo.write_text(f"{folder}/secrets/{name}", (root / name).read_text(), private=True)
        self.progress(f"{len(names)} secret file(s) included (mode 0600)")
        return names

    # -- restore --------------------------------------------------------------------------------
    def restore(self, location: str, teams: list[str] | None = None, force: bool = False) -> dict[str, Any]:
        backend = self.backend
        repo, sid = locate_snapshot(location)
        folder = f"{SNAPSHOTS}/{sid}"
        manifest = json.loads(repo.read_text(f"{folder}/{MANIFEST}"))
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{repo.location}/{folder} has backup format {manifest.get('format')}; this cubelab "
                              f"reads format {FORMAT}")  # fmt: skip
        chosen = self._chosen_teams(manifest, teams)
        whole = not teams
        what = "everything" if whole else "team(s) " + ", ".join(chosen)
        self.progress(f"restore of {sid} from {repo.location}: {what}")
        backend.paths.create()
        if manifest.get("secrets"):
            self._restore_secrets(repo, folder, manifest, chosen, whole, force)
        # Storage running and every team provisioned: a fresh deployment starts empty, a stopped one starts.
        backend.up()
        with backend.procs.lock("maintenance"), backend.procs.lock():
            refused = [f"team {name}: {what}" for name in chosen if (what := self._contents(name))]
            if refused and not force:
                raise BackupError("restore would replace what these teams hold now:\n  " + "\n  ".join(refused)
                                  + "\nBack them up first if they matter, then add --force.")  # fmt: skip
            if backend.procs.stop(supervisor.NAME):
                self.progress("supervisor stopped for the restore")
            for name in chosen:
                self._restore_team(repo, manifest, backend.config.team(name))
            if whole:
                self._restore_hub(repo, manifest)
        backend.up()  # everything back, with the restored data
        return manifest

    def _chosen_teams(self, manifest: dict[str, Any], teams: list[str] | None) -> list[str]:
        config_teams = {t.name for t in self.backend.config.teams}
        in_backup = set(manifest["teams"])
        if teams:
            for name in teams:
                if name not in in_backup:
                    raise BackupError(f"team {name!r} is not in this backup (it has: {', '.join(sorted(in_backup))})")
                if name not in config_teams:
                    raise BackupError(f"team {name!r} is not in {self.backend.config.path}; add it to the config first")
            return list(dict.fromkeys(teams))
        if missing := sorted(in_backup - config_teams):
            raise BackupError(
                f"the backup has team(s) {', '.join(missing)} that {self.backend.config.path} lacks; "
                "restore with the backup's config (config.yaml in the backup) or name teams with --team"
            )
        return sorted(in_backup)

    def _contents(self, name: str) -> str:
        """What the team holds now, in words; '' when it is empty (no runs, models, own experiments or objects)."""
        team = self.backend.config.team(name)
        counts = {}
        with self.backend.postgres.connect(team.database) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.runs') IS NOT NULL")
            if cur.fetchone()[0]:
                for what, query in (("runs", "SELECT count(*) FROM runs"),
                                    ("experiments", "SELECT count(*) FROM experiments WHERE experiment_id <> 0"),
                                    ("registered models", "SELECT count(*) FROM registered_models")):  # fmt: skip
                    cur.execute(query)
                    counts[what] = int(cur.fetchone()[0])
        objects = len(engine.list_bucket(self._team_s3(team), self.backend.config.bucket(team)))
        held = [f"{n} {what}" for what, n in [*counts.items(), ("objects", objects)] if n]
        return ", ".join(held)

    def _recreate(self, database: str, role: str, password: str) -> Callable[[], None]:
        def recreate() -> None:
            from psycopg2 import sql

            conn = self.backend.postgres.connect()
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
                provision_database(conn, role, database, password)
            finally:
                conn.close()

        return recreate

    def _restore_team(self, repo: Repository, manifest: dict[str, Any], team: Team) -> None:
        backend, entry = self.backend, manifest["teams"][team.name]
        if backend.procs.stop(team.service):
            self.progress(f"{team.service} stopped for the restore")
        recreate = self._recreate(team.database, team.role, backend.tracking.db_password(team))
        engine.restore_database(self._team_database(team), repo, entry["database"], recreate)
        self.progress(f"team {team.name}: database restored ({entry['database']['bytes'] / 2**20:.1f} MB dump)")
        engine.restore_bucket(self._team_s3(team), backend.config.bucket(team), repo,
                              engine.read_index(repo, entry["index"]), self.progress, f"team {team.name}")  # fmt: skip

    def _restore_hub(self, repo: Repository, manifest: dict[str, Any]) -> None:
        backend = self.backend
        if backend.procs.stop(hub_module.NAME):
            self.progress("hub stopped for the restore (users' servers stop with it)")
        password = backend.hub.secret_values()[plan.HUB_DB_PASSWORD]
        engine.restore_database(self._hub_database(), repo, manifest["hub"]["database"],
                                self._recreate(HUB_DATABASE, HUB_ROLE, password))  # fmt: skip
        if name := manifest["hub"].get("passwords"):
            hashes = json.loads(repo.read_text(name))
            wanted = {u.name for u in backend.config.users}
            store = PasswordFile(backend.paths.hub / PASSWORDS)
            store.save({u: h for u, h in hashes.items() if u in wanted} | {u: h for u, h in store.load().items()
                                                                           if u not in hashes})  # fmt: skip
            self._forget_stale_initial_passwords(store.load())
        self.progress("hub database and users' passwords restored")

    def _forget_stale_initial_passwords(self, hashes: dict[str, str]) -> None:
        """secrets/users/NAME is a user's first password; one that no longer opens the account is removed."""
        folder = self.backend.paths.secrets / "users"
        for path in folder.glob("*") if folder.exists() else []:
            if path.name in hashes and not verify_password(path.read_text().strip(), hashes[path.name]):
                path.unlink()

    def _restore_secrets(self, repo: Repository, folder: str, manifest: dict[str, Any], chosen: list[str],
                         whole: bool, force: bool) -> None:  # fmt: skip
        root = self.backend.paths.secrets
        restored = kept = 0
        for name in manifest.get("secret_files", []):
            if not whole and not any(name.startswith(f"teams/{team}/") for team in chosen):
                continue
            target = root / name
            if target.exists() and not force:
                kept += 1
                continue
            write_private(target, repo.read_text(f"{folder}/secrets/{name}"))
            restored += 1
        self.progress(f"secrets: {restored} restored, {kept} existing kept" + ("" if force or not kept else
                      " (--force replaces them)"))  # fmt: skip
