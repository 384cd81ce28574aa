"""The embedded stack: Postgres, SeaweedFS and one tracking server per team, as local processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cubelab import gpus, plan
from cubelab import procs as procs_module
from cubelab.backends.base import Progress, ServiceStatus
from cubelab.backends.local import gateway, hub, monitoring, seaweed, sockets, supervisor
from cubelab.backends.local import postgres as pg
from cubelab.backends.local.gateway import LocalGateway
from cubelab.backends.local.hub import LocalHub
from cubelab.backends.local.maintenance import Maintenance
from cubelab.backends.local.monitoring import LocalPrometheus
from cubelab.backends.local.paths import StatePaths
from cubelab.backends.local.postgres import LocalPostgres
from cubelab.backends.local.seaweed import LocalS3
from cubelab.backends.local.tracking import LocalTracking
from cubelab.config import PlatformConfig, Team
from cubelab.install import install_all, installed, proxy_binary, services_env
from cubelab.procs import (
    Launch,
    ProcessRecord,
    ProcessTable,
    StartError,
    kill_leftovers,
    kill_marked,
    tree_memory_mb,
    wait_until,
)
from cubelab.secrets import write_private

START_TIMEOUT = 90.0


@dataclass(frozen=True)
class Programs:
    """What `up` installed that the services run."""

    services: Path  # the services venv: mlflow, SeaweedFS's weed
    hub: Path  # the hub venv
    proxy: Path  # configurable-http-proxy


class LocalBackend:
    """The embedded stack: starts, provisions, reports on and stops the plan as local processes."""

    def __init__(self, config: PlatformConfig, progress: Progress | None = None) -> None:
        self.config = config
        self.progress: Progress = progress or (lambda _msg: None)
        self._launched: list[Launch] = []  # what `up` brought up (the socket holder keeps these ports, no others)
        self.paths = StatePaths(config.state_dir)
        self.procs = ProcessTable(self.paths.run)
        self.postgres = LocalPostgres(config, self.paths, self.procs)
        self.s3 = LocalS3(config, self.paths, self.procs)
        self.tracking = LocalTracking(config, self.paths, self.procs, self.postgres, self.s3)
        self.gateway = LocalGateway(config, self.paths, self.tracking)
        self.hub = LocalHub(config, self.paths, self.procs, self.postgres, self.s3, self.tracking, self.gateway.token)
        self.prometheus = LocalPrometheus(config, self.paths, self.tracking.metrics_token, self.tracking.addresses)

    # -- bringing things up -------------------------------------------------------------------
    def up(self) -> None:
        started = time.monotonic()
        self.paths.create()
        found = gpus.detect()
        cuda = gpus.use_cuda(self.config.kernels.cuda, found)
        if found or cuda:
            self.progress(f"{gpus.describe(found)}; PyTorch and TensorFlow kernels: "
                          f"{'CUDA builds' if cuda else 'CPU builds (kernels.cuda: false)'}")  # fmt: skip
        venv, hub_venv, _kernels, proxy = install_all(self.paths.install, self.progress, cuda)
        programs = Programs(venv, hub_venv, proxy)
        self._launched = []
        with self.procs.lock():  # the supervisor waits until everything is as `up` leaves it
            self._start_all(programs)
            self._stop_removed_teams()
            self._monitor(programs)
            self._supervise()
            for held in sockets.release_all_but(self.paths.run, self._held_ports()):
                self.progress(f"port {held.port} given up ({held.owner} no longer has it)")
        self._write_description()
        self.progress(f"platform up in {time.monotonic() - started:.1f} s; hub at {self.hub.url}")

    def start_storage(self) -> None:
        """Only Postgres and SeaweedFS, from what `up` installs: for maintenance that must not start the servers
        (`cubelab upgrade` migrates the databases before any tracking server of the new release starts)."""
        self.paths.create()
        _services, hub_venv = installed(self.paths.install)
        programs = Programs(services_env(self.paths.install, self.progress), hub_venv, proxy_binary(self.paths.install))
        with self.procs.lock():
            self._start_storage(programs)

    def _holder(self) -> tuple[Launch, Callable[[], bool]]:
        """The socket holder (cubelab.backends.local.sockets), from this Python: the standard library only. Its
        code is not part of its fingerprint: a restart would free every port it relays, so new holder code
        takes effect at the next `down` and `up`."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG")} | {"CUBELAB_STACK": str(self.paths.root)}
        launch = Launch(sockets.NAME, [sys.executable, "-m", "cubelab.hold", str(self.paths.run)], env,
                        self.paths.logs / f"{sockets.NAME}.log", self.paths.root)  # fmt: skip
        return launch, partial(sockets.answers, self.paths.run)

    def _held_ports(self) -> set[tuple[str, int]]:
        """(service, port) of every port the holder should keep: those of the services this `up` brought up."""
        return {(launch.name, port) for launch in self._launched for port in [*launch.handed, *launch.relayed]}

    def _start_storage(self, programs: Programs) -> None:
        self._bring_up([self._holder()])
        self.postgres.prepare(self.progress)
        self._bring_up([self._service(pg.NAME, programs)])
        identities_changed = self.s3.prepare(self.progress)
        if not self._bring_up([self._service(seaweed.NAME, programs)]) and identities_changed:
            self.s3.reload()

    def _start_all(self, programs: Programs) -> None:
        self._start_storage(programs)
        for team in self.config.teams:
            self.postgres.provision_team(team, self.tracking.db_password(team))
            self.s3.ensure_bucket(team)
        self.progress(f"provisioned {len(self.config.teams)} team(s): databases, roles, buckets, S3 identities")
        self.hub.provision(self.progress)
        # The hub, every tracking server and the gateway start together and are waited for together: their
        # start-ups overlap.
        names = [t.service for t in self.config.teams] + [hub.NAME]
        if self.config.dask_gateway.enabled:
            names += [gateway.NAME, gateway.FRONT_NAME]
        else:
            self.procs.stop(gateway.FRONT_NAME)
            if self.procs.stop(gateway.NAME):
                self.progress("dask-gateway stopped (dask_gateway.enabled is false), with its clusters")
            self.gateway.guard.remove()
        self._bring_up([self._service(name, programs) for name in names])
        self.hub.sync(self.progress)

    def _service(self, name: str, programs: Programs) -> tuple[Launch, Callable[[], bool]]:
        """How the named service runs, and its health check."""
        if name == sockets.NAME:
            return self._holder()
        if name == pg.NAME:
            return self.postgres.launch(), self.postgres.healthy
        if name == seaweed.NAME:
            return self.s3.launch(str(programs.services / "bin/weed")), self.s3.healthy
        if name == hub.NAME:
            return self.hub.launch(programs.hub, programs.proxy, self.progress), self.hub.healthy
        if name == gateway.NAME:
            return self.gateway.launch(programs.services, self.paths.install), self.gateway.healthy
        if name == gateway.FRONT_NAME:
            return self.gateway.front_launch(programs.services), self.gateway.front_healthy
        if name == monitoring.NAME:
            program = monitoring.binary()
            if program is None:
                raise StartError(name, "the prometheus program is gone; `cubelab up` installs it again")
            return self.prometheus.launch(program), self.prometheus.healthy
        for team in self.config.teams:
            if team.service == name:
                return self.tracking.launch(team, programs.services), partial(self.tracking.healthy, team)
        raise KeyError(f"{name} is not a service of this config")

    def revive(self, name: str) -> tuple[ProcessRecord, Callable[[], bool]] | tuple[None, None]:
        """Start a service whose process died, as `up` starts it, from what `up` installed (the supervisor's
        restart; the caller holds the lock). Returns its new record and health check."""
        if record := self.procs.get(name):
            kill_leftovers(record, str(self.paths.root))  # children of a killed leader hold ports and files
        install = self.paths.install
        programs = Programs(*installed(install), proxy_binary(install))
        launch, healthy = self._service(name, programs)
        started = self.procs.ensure(launch, self.progress)
        return (started, healthy) if started else (None, None)

    def _supervise(self) -> None:
        if not self.config.supervision.enabled:
            if self.procs.stop(supervisor.NAME):
                self.progress("supervisor stopped (supervision.enabled is false)")
            return
        code = [*sorted(Path(__file__).parent.glob("*.py")), Path(procs_module.__file__),
                Path(procs_module.__file__).with_name("supervise.py")]  # new code: restart  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k.startswith("CUBELAB_") or k in ("PATH", "LANG")}
        env["CUBELAB_STACK"] = str(self.paths.root)
        launch = Launch(supervisor.NAME, [sys.executable, "-m", "cubelab.supervise", str(self.config.path)], env,
                        self.paths.logs / "supervisor.log", self.paths.root, code=tuple(code))  # fmt: skip
        self._bring_up([(launch, lambda: True)])

    def _monitor(self, programs: Programs) -> None:
        """Prometheus beside the services when monitoring.enabled; stopped (its samples kept) when not."""
        if not self.config.monitoring.enabled:
            if self.procs.stop(monitoring.NAME):
                self.progress("prometheus stopped (monitoring.enabled is false; its samples are kept)")
            self.prometheus.guard.remove()
            return
        monitoring.ensure_installed(self.progress)
        self._bring_up([self._service(monitoring.NAME, programs)])

    def apply(self) -> None:
        # Every step of `up` leaves running, unchanged services alone, so applying is bringing up again.
        self.up()

    def _bring_up(self, services: list[tuple[Launch, Callable[[], bool]]]) -> list[str]:
        """The one lifecycle of every local service: start what is not running or was launched differently
        (stopping the old process first), then wait until each started one is healthy. Returns their names."""
        t0 = time.monotonic()
        started = []
        self._launched += [launch for launch, _healthy in services]
        for launch, healthy in services:
            if record := self.procs.ensure(launch, self.progress):
                started.append((record, healthy))
            else:
                self.progress(f"{launch.name} already running")
        for record, healthy in started:
            wait_until(healthy, START_TIMEOUT, what=record.name, record=record)
            self.progress(f"{record.name} ready ({time.monotonic() - t0:.1f} s)")
        return [record.name for record, _ in started]

    def _stop_removed_teams(self) -> None:
        wanted = {t.service for t in self.config.teams}
        for record in self.procs.all():
            if record.name.startswith("mlflow-") and record.name not in wanted:
                self.procs.stop(record.name)
                self.progress(f"{record.name}: team no longer in the config; server stopped, data kept")

    # -- taking things down -------------------------------------------------------------------
    def down(self) -> None:
        with self.procs.lock():
            records = self.procs.all()
            # The supervisor first (it would bring back what follows), then the tracking servers, storage last:
            # nothing writes to a store that is gone.
            order = {supervisor.NAME: -1, hub.NAME: 1, seaweed.NAME: 2, pg.NAME: 3, sockets.NAME: 4}
            for record in sorted(records, key=lambda r: order.get(r.name, 0)):
                if self.procs.stop(record.name):
                    self.progress(f"stopped {record.name} (pid {record.pid})")
                if record.name == hub.NAME:
                    # The hub stops users' servers and its proxy itself; this catches any it could not.
                    if leftovers := kill_marked(str(self.paths.root)):
                        self.progress(f"stopped {len(leftovers)} leftover process(es) of this stack")
            kill_marked(str(self.paths.root))
            (self.paths.run / sockets.TABLE).unlink(missing_ok=True)
            self.s3.guard.remove()
            self.prometheus.guard.remove()
            self.gateway.guard.remove()

    # -- looking at things ----------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        rows = [
            self._row(sockets.NAME, "sockets", None, "", partial(sockets.answers, self.paths.run)),
            self._row(pg.NAME, "postgres", None, self.postgres.url, self.postgres.healthy),
            self._row(seaweed.NAME, "s3", None, self.s3.url, self.s3.healthy),
        ]
        rows.append(self._row(hub.NAME, "hub", None, self.hub.url, self.hub.healthy))
        known = {sockets.NAME, pg.NAME, seaweed.NAME, hub.NAME}
        for team in self.config.teams:
            rows.append(
                self._row(
                    team.service,
                    "tracking",
                    team.name,
                    self.tracking.url(team),
                    lambda t=team: self.tracking.healthy(t),
                )
            )
            known.add(team.service)
        if self.config.dask_gateway.enabled or self.procs.get(gateway.NAME):
            rows.append(self._row(gateway.NAME, "dask-gateway", None, self.gateway.url, self.gateway.healthy))
            rows.append(self._row(gateway.FRONT_NAME, "dask-gateway", None, self.gateway.url,
                                  self.gateway.front_healthy))  # fmt: skip
            known |= {gateway.NAME, gateway.FRONT_NAME}
        if self.config.monitoring.enabled or self.procs.get(monitoring.NAME):
            rows.append(self._row(monitoring.NAME, "monitoring", None, self.prometheus.url, self.prometheus.healthy))
            known.add(monitoring.NAME)
        if self.config.supervision.enabled:
            rows.append(self._row(supervisor.NAME, "supervisor", None, "", lambda: True))
            known.add(supervisor.NAME)
        for record in self.procs.all():  # servers of teams since removed from the config
            if record.name not in known:
                rows.append(self._row(record.name, "tracking", record.name.removeprefix("mlflow-"), "", lambda: False))
        return rows

    def _row(self, name: str, kind: str, team: str | None, url: str, check: Any) -> ServiceStatus:
        record = self.procs.get(name)
        proc = record.process() if record else None
        return ServiceStatus(
            name=name,
            kind=kind,
            team=team,
            url=url,
            pid=proc.pid if proc else None,
            healthy=bool(proc) and bool(check()),
            # The supervisor's own memory only: the services it restarted are its children, counted on their rows.
            rss_mb=round(tree_memory_mb(proc, tree=name != supervisor.NAME), 1) if proc else None,
            restarts=record.restarts if record else 0,
            note=record.given_up if record else "",
        )

    def usage(self) -> list[dict[str, Any]]:
        """Each team's storage: its database's size and its bucket's objects and bytes (`status --usage`)."""
        out = []
        s3 = self.s3.client(self.s3.admin_credentials())
        with self.postgres.connect() as conn, conn.cursor() as cur:
            for team in self.config.teams:
                cur.execute("SELECT pg_database_size(%s)", (team.database,))
                database = int(cur.fetchone()[0])
                objects = size = 0
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.config.bucket(team)):
                    objects += len(page.get("Contents", []))
                    size += sum(o["Size"] for o in page.get("Contents", []))
                bucket = self.config.bucket(team)
                out.append({"team": team.name, "database": team.database, "database_bytes": database,
                            "bucket": bucket, "bucket_objects": objects, "bucket_bytes": size})  # fmt: skip
        return out

    def gc(self, teams: list[str] | None = None, older_than_days: float = 0) -> list[str]:
        """Permanently remove the runs and experiments members deleted, and their artefacts: per team, in its
        tracking server's environment and account (its database role and S3 keys only). Returns the reports."""
        chosen = [self.config.team(name) for name in teams] if teams else list(self.config.teams)
        venv, _hub = installed(self.paths.install)
        reports = []
        with self.procs.lock("maintenance"):  # never while a backup copies what the dump refers to
            for team in chosen:
                reports.append(self._gc_team(team, venv, older_than_days))
        return reports

    def _gc_team(self, team: Team, venv: Path, older_than_days: float) -> str:
        launch = self.tracking.launch(team, venv)
        argv = [str(venv / "bin/python"), *plan.GC_COMMAND[1:], "--older-than", str(older_than_days)]
        self.progress(f"gc: team {team.name}")
        done = subprocess.run(argv, env=launch.env, user=launch.user, group=launch.user,
                              extra_groups=[] if launch.user else None, cwd=launch.cwd, capture_output=True,
                              text=True, timeout=3600, check=False)  # fmt: skip
        if done.returncode != 0:
            raise StartError(f"gc of team {team.name}", done.stderr.strip()[-2000:] or f"exit {done.returncode}")
        return done.stdout.strip().splitlines()[-1]

    def backup(self, location: str, with_secrets: bool = False) -> tuple[Any, dict[str, Any]]:
        """A snapshot of every database and bucket, the config and (if asked) the secrets: see maintenance.py."""
        return Maintenance(self).backup(location, with_secrets)

    def restore(self, location: str, teams: list[str] | None = None, force: bool = False) -> dict[str, Any]:
        return Maintenance(self).restore(location, teams, force)

    def upgrade(self, location: str | None) -> list[str]:
        """Back up (into location; None: no backup), migrate every database to the installed release, start."""
        return Maintenance(self).upgrade(location)

    def log_path(self, service: str) -> Path:
        names = {pg.NAME, seaweed.NAME, hub.NAME, monitoring.NAME, gateway.NAME, gateway.FRONT_NAME}
        names |= {t.service for t in self.config.teams}
        names |= {r.name for r in self.procs.all()}
        path = self.paths.logs / f"{service}.log"
        if service not in names and not path.exists():
            raise StartError(service, f"no such service; known services: {', '.join(sorted(names))}")
        return path

    def description(self) -> dict[str, Any]:
        teams = []
        for team in self.config.teams:
            creds = self.s3.team_credentials(team)
            teams.append({
                "name": team.name,
                "members": list(team.members),
                "tracking_uri": self.tracking.url(team),
                "bucket": self.config.bucket(team),
                "artifact_prefix": self.config.storage.artifact_prefix,
                "s3": {"access_key": creds.access_key, "secret_key": creds.secret_key},
            })  # fmt: skip
        return {
            "backend": "local",
            "s3_endpoint": self.s3.url,
            # SeaweedFS's internal servers: users must not reach them (checked from a kernel by platform_tests).
            "storage_internal": [f"127.0.0.1:{port}" for port in self.s3.internal_ports()],
            "hub_url": self.hub.url,
            "hub_api_url": self.hub.api_url,
            # The control plane's hub token (admin:users, tokens): tests use it to issue users' tokens.
            "hub_admin_token": self.hub.admin_token(),
            "users": [self._user_entry(u.name) for u in self.config.users],
            # What code in a user's kernel must not reach (checked from inside kernels by platform_tests).
            "private_paths": [str(self.paths.secrets), str(self.paths.hub / "settings.json")],
            "users_isolated": self.hub.system_users,
            "teams": teams,
            # Every metrics endpoint and the token that reads them (platform_tests/test_metrics.py).
            "metrics": {"token": self.tracking.metrics_token()}
            | plan.metrics_description(self.config, self.tracking.addresses()),
        } | ({"dask_gateway": self.gateway.description()} if self.config.dask_gateway.enabled else {})

    def _user_entry(self, name: str) -> dict[str, Any]:
        admin = name in self.config.admins
        entry: dict[str, Any] = {"name": name, "admin": admin, "operator": name in self.config.operators,
                                 "home": self.hub.home_of(name)}  # fmt: skip
        secret = self.paths.secrets / "users" / name
        if secret.exists():  # the first password; a user who changed it has another one now
            entry["initial_password"] = secret.read_text().strip()
        return entry

    def _write_description(self) -> None:
        write_private(self.paths.description, json.dumps(self.description(), indent=2) + "\n")
