"""Backup and restore of the embedded stack (`cubelab backup`, `cubelab restore`): where its databases, buckets
and files are, and which of its services stop while data goes back (cubelab.backup.snapshot does the rest)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cubelab import plan
from cubelab.backends.local import hub as hub_module
from cubelab.backends.local import supervisor
from cubelab.backends.local.postgres import SUPERUSER, server_bindir
from cubelab.backup import snapshot
from cubelab.backup.engine import Database
from cubelab.backup.repository import BackupError, Repository, locate_snapshot, open_repository
from cubelab.backup.snapshot import TeamData
from cubelab.config import Team
from cubelab.install import hub_env, installed, proxy_binary
from cubelab.passwords import PasswordFile, verify_password
from cubelab.provision import HUB_DATABASE, HUB_ROLE
from cubelab.secrets import write_private

if TYPE_CHECKING:
    from cubelab.backends.local.stack import LocalBackend

PASSWORDS = "passwords.json"
CONFIG = "config.yaml"
SECRETS = "secrets/"


class Maintenance:
    """Backup and restore for one LocalBackend."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.progress = backend.progress

    def _database(self, label: str, database: str, role: str) -> Database:
        pg = self.backend.postgres
        return Database(label, database, role, str(pg.socket_dir), pg.port, SUPERUSER, pg.password(), server_bindir())

    def _team(self, team: Team) -> TeamData:
        """The team's own S3 keys: a team's backup and restore reach its bucket and no other."""
        backend = self.backend
        return TeamData(team.name, self._database(team.name, team.database, team.role),
                        backend.tracking.db_password(team), backend.config.bucket(team),
                        backend.s3.client(backend.s3.team_credentials(team)))  # fmt: skip

    # -- backup ---------------------------------------------------------------------------------
    def backup(self, location: str, with_secrets: bool = False) -> tuple[Repository, dict[str, Any]]:
        backend = self.backend
        if not backend.postgres.healthy() or not backend.s3.healthy():
            raise BackupError("Postgres and SeaweedFS must be running for a backup: run `cubelab up` first")
        repo = open_repository(location)  # a folder is made (0700) on the first write
        files = {CONFIG: (Path(backend.config.path).read_text(), False)}
        passwords = backend.paths.hub / PASSWORDS
        if passwords.exists():
            files[PASSWORDS] = (passwords.read_text(), True)
        if with_secrets:
            root = backend.paths.secrets
            found = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
            files |= {SECRETS + str(p.relative_to(root)): (p.read_text(), True) for p in found}
            self.progress(f"{len(found)} secret file(s) included (mode 0600)")
        about = {"backend": "local", "postgres": self._server_version(), "secrets": with_secrets}
        hub = self._database("hub", HUB_DATABASE, HUB_ROLE)
        with backend.procs.lock("maintenance"):
            teams = [self._team(t) for t in backend.config.teams]
            manifest = snapshot.take(repo, hub, teams, files, about, self.progress)
        return repo, manifest

    def _server_version(self) -> str:
        with self.backend.postgres.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return str(cur.fetchone()[0])

    # -- restore --------------------------------------------------------------------------------
    def restore(self, location: str, teams: list[str] | None = None, force: bool = False) -> dict[str, Any]:
        backend = self.backend
        repo, sid = locate_snapshot(location)
        manifest = snapshot.load(repo, sid)
        deployed = {t.name for t in backend.config.teams}
        chosen = snapshot.chosen_teams(manifest, teams, deployed, str(backend.config.path))
        whole = not teams
        what = "everything" if whole else "team(s) " + ", ".join(chosen)
        self.progress(f"restore of {sid} from {repo.location}: {what}")
        backend.paths.create()
        if manifest.get("secrets"):
            self._restore_secrets(repo, manifest, chosen, whole, force)
        # Storage running and every team provisioned: a fresh deployment starts empty, a stopped one starts.
        if not all(row.healthy for row in backend.status()):
            backend.up()
        with backend.procs.lock("maintenance"), backend.procs.lock():
            data = [self._team(backend.config.team(name)) for name in chosen]
            present = snapshot.refuse_non_empty(data, force)
            if backend.procs.stop(supervisor.NAME):
                self.progress("supervisor stopped for the restore")
            for team in data:
                if backend.procs.stop(backend.config.team(team.name).service):
                    self.progress(f"team {team.name}: tracking server stopped for the restore")
                snapshot.put_back_team(repo, manifest, team, present[team.name], self.progress)
            if whole:
                self._restore_hub(repo, manifest)
        backend.up()  # everything back, with the restored data
        return manifest

    def _restore_hub(self, repo: Repository, manifest: dict[str, Any]) -> None:
        backend = self.backend
        if backend.procs.stop(hub_module.NAME):
            self.progress("hub stopped for the restore (users' servers stop with it)")
        password = backend.hub.secret_values()[plan.HUB_DB_PASSWORD]
        snapshot.put_back_hub(repo, manifest, self._database("hub", HUB_DATABASE, HUB_ROLE), password)
        if name := manifest["files"].get(PASSWORDS):
            hashes = json.loads(repo.read_text(name))
            wanted = {u.name for u in backend.config.users}
            store = PasswordFile(backend.paths.hub / PASSWORDS)
            current = store.load()
            store.save({u: h for u, h in hashes.items() if u in wanted} | {u: h for u, h in current.items()
                                                                           if u not in hashes})  # fmt: skip
            self._forget_stale_initial_passwords(store.load())
        self.progress("hub database and users' passwords restored")

    def _forget_stale_initial_passwords(self, hashes: dict[str, str]) -> None:
        """secrets/users/NAME is a user's first password; one that no longer opens the account is removed."""
        folder = self.backend.paths.secrets / "users"
        for path in folder.glob("*") if folder.exists() else []:
            if path.name in hashes and not verify_password(path.read_text().strip(), hashes[path.name]):
                path.unlink()

    def _restore_secrets(self, repo: Repository, manifest: dict[str, Any], chosen: list[str], whole: bool,
                         force: bool) -> None:  # fmt: skip
        root = self.backend.paths.secrets
        restored = kept = 0
        for name, stored in manifest["files"].items():
            if not name.startswith(SECRETS):
                continue
            relative = name.removeprefix(SECRETS)
            if not whole and not any(relative.startswith(f"teams/{team}/") for team in chosen):
                continue
            target = root / relative
            if target.exists() and not force:
                kept += 1
                continue
            write_private(target, repo.read_text(stored))
            restored += 1
        note = " (--force replaces them)" if kept and not force else ""
        self.progress(f"secrets: {restored} restored, {kept} existing kept{note}")

    # -- upgrade --------------------------------------------------------------------------------
    def upgrade(self, location: str | None) -> list[str]:
        """New environments, a backup (unless location is None), every database migrated with the servers
        stopped, then everything started. A failed migration stops with the team and the restore command."""
        backend, install = self.backend, self.backend.paths.install
        hub_venv = hub_env(install, self.progress)
        backend.start_storage()  # installs the services environment too
        venv, _hub = installed(install)
        restore = "a backup from before the upgrade"
        if location is not None:
            repo, manifest = self.backup(location)
            restore = f"{repo.location}/snapshots/{manifest['id']}"
        reports = []
        with backend.procs.lock("maintenance"), backend.procs.lock():
            for name in (supervisor.NAME, hub_module.NAME, *(t.service for t in backend.config.teams)):
                if backend.procs.stop(name):
                    self.progress(f"{name} stopped for the upgrade")
            service = plan.migrate_service(backend.config, backend.tracking.addresses())
            env = plan.resolve(service.env, {"POSTGRES_PASSWORD": backend.postgres.password()}.__getitem__)
            env |= {"POSTGRES_USER": SUPERUSER, "HOME": str(backend.paths.home), "LANG": "C.UTF-8"}
            for team in backend.config.teams:
                argv = [str(venv / "bin/python"), *service.command[1:], team.name]
                done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600, check=False)
                if done.returncode != 0:
                    why = (done.stderr.strip() or f"exit {done.returncode}").splitlines()[-1]
                    raise BackupError(
                        f"upgrade stopped: team {team.name}: {why}\nThe tracking servers and the hub are stopped; "
                        "teams before it in the config are migrated. To put this team back as it was:\n"
                        f"  cubelab restore {restore} --team {team.name} --force\n"
                        "then run the old release's `cubelab up`, or fix the cause and run `cubelab upgrade` again."
                    )  # fmt: skip
                reports.append(done.stdout.strip().splitlines()[-1])
                self.progress(reports[-1])
            launch = backend.hub.launch(hub_venv, proxy_binary(install), self.progress)
            argv = [launch.argv[0], "upgrade-db", *launch.argv[1:]]
            done = subprocess.run(argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True, timeout=600,
                                  check=False)  # fmt: skip
            if done.returncode != 0:
                raise BackupError(f"upgrade stopped: the hub's database (jupyterhub upgrade-db): "
                                  f"{done.stderr.strip()[-1500:]}\nThe team databases are migrated. To put "
                                  f"everything back as it was: cubelab restore {restore} --force")  # fmt: skip
            reports.append("hub database: current (jupyterhub upgrade-db)")
            self.progress(reports[-1])
        backend.up()
        return reports
