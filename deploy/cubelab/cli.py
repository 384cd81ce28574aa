"""The `cubelab` command: a thin layer over the library (config, backends)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

from cubelab import __version__, gpus, smoke
from cubelab.backends.local.paths import StateDirError
from cubelab.backends.local.stack import LocalBackend
from cubelab.backup.repository import BackupError
from cubelab.config import ConfigError, load
from cubelab.procs import StartError

DEFAULT_CONFIG = "cubelab.yaml"
EXAMPLE_CONFIG = "cubelab.example.yaml"
RELEASE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


def _default_config() -> str:
    """$CUBELAB_CONFIG, else ./cubelab.yaml, else the documented example in the current folder."""
    if env := os.environ.get("CUBELAB_CONFIG"):
        return env
    if Path(DEFAULT_CONFIG).exists() or not Path(EXAMPLE_CONFIG).exists():
        return DEFAULT_CONFIG
    return EXAMPLE_CONFIG


def _progress(message: str) -> None:
    print(f"[cubelab {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _backend(args: argparse.Namespace) -> LocalBackend:
    config = load(args.config)
    return LocalBackend(config, progress=None if getattr(args, "quiet", False) else _progress)


def cmd_up(args: argparse.Namespace) -> int:
    backend = _backend(args)
    if getattr(args, "with_monitoring", False):
        config = dataclasses.replace(backend.config, monitoring=dataclasses.replace(backend.config.monitoring,
                                                                                     enabled=True))  # fmt: skip
        backend = LocalBackend(config, progress=backend.progress)
    _progress(f"config {backend.config.path}; state in {backend.config.state_dir}")
    try:
        backend.up()
    except StartError:
        print("\nThe start stopped half-way. Running services were kept; `cubelab down` stops them.", file=sys.stderr)
        raise
    print()
    _print_table(backend)
    print(f"\nSecrets are in {backend.paths.secrets} (mode 0700). Logs: `cubelab logs SERVICE`.")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    _backend(args).apply()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    backend = _backend(args)
    backend.down()
    _progress("everything stopped; data kept in " + str(backend.config.state_dir))
    return 0


def _print_table(backend: LocalBackend) -> None:
    rows = backend.status()
    print(f"{'SERVICE':<24} {'KIND':<10} {'TEAM':<14} {'URL':<28} {'PID':>7} {'HEALTH':<9} {'RSS MB':>7} RESTARTS")
    for r in rows:
        health = "healthy" if r.healthy else ("down" if r.pid is None else "unhealthy")
        rss = f"{r.rss_mb:.0f}" if r.rss_mb is not None else "-"
        print(f"{r.name:<24} {r.kind:<10} {r.team or '-':<14} {r.url:<28} {r.pid or '-':>7} {health:<9} {rss:>7} "
              f"{r.restarts:>8}")  # fmt: skip
    for r in rows:
        if r.note:
            print(f"{r.name}: {r.note}")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f}"


def cmd_status(args: argparse.Namespace) -> int:
    backend = _backend(args)
    rows = backend.status()
    usage = backend.usage() if args.usage else None
    found = gpus.detect()
    if args.json:
        out = {"services": [r.as_dict() for r in rows], "gpus": [g.as_dict() for g in found]}
        print(json.dumps(out | ({"usage": usage} if args.usage else {}), indent=2))
    else:
        _print_table(backend)
        print(f"\n{gpus.describe(found)}")
        if usage is not None:
            print(f"\n{'TEAM':<20} {'DATABASE MB':>12} {'BUCKET MB':>10} {'OBJECTS':>8}")
            for u in usage:
                print(f"{u['team']:<20} {_mb(u['database_bytes']):>12} {_mb(u['bucket_bytes']):>10} "
                      f"{u['bucket_objects']:>8}")  # fmt: skip
    return 0 if all(r.healthy for r in rows) else 3


def cmd_logs(args: argparse.Namespace) -> int:
    path = _backend(args).log_path(args.service)
    if not path.exists():
        print(f"{args.service} has not written a log yet ({path})", file=sys.stderr)
        return 1
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines :] if args.lines else lines))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    backend = _backend(args)
    for name in args.team or []:
        if name not in {t.name for t in backend.config.teams}:
            print(f"cubelab gc: no team {name!r} in {backend.config.path}", file=sys.stderr)
            return 2
    if args.older_than < 0:
        print("cubelab gc: --older-than must not be negative", file=sys.stderr)
        return 2
    for report in backend.gc(args.team, args.older_than):
        print(report)
    return 0


def _backups(args: argparse.Namespace, backend: LocalBackend) -> str:
    """Where backups go: --to, else backups/ beside the config."""
    return args.to or str(Path(backend.config.path).parent / "backups")


def cmd_backup(args: argparse.Namespace) -> int:
    backend = _backend(args)
    location = _backups(args, backend)
    repo, manifest = backend.backup(location, args.with_secrets)
    sid = manifest["id"]
    teams = manifest["teams"]
    objects = sum(t["objects"] for t in teams.values())
    copied = sum(t["copied_bytes"] for t in teams.values())
    print(f"backup {sid}: hub and {len(teams)} team(s), {objects} object(s), {_mb(copied)} MB new; "
          f"in {repo.location}/snapshots/{sid}")  # fmt: skip
    print(f"restore with: cubelab restore {repo.location}/snapshots/{sid}")
    if args.with_secrets:
        print("this backup holds the deployment's secrets (files 0600): keep it as safe as the deployment")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    manifest = _backend(args).restore(args.backup, args.team, args.force)
    print(f"restored backup {manifest['id']} (taken {manifest['started']})")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    backend = _backend(args)
    location = None if args.no_backup else _backups(args, backend)
    for line in backend.upgrade(location):
        print(line)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args.config)
    print(f"{config.path}: valid; {len(config.users)} users, {len(config.teams)} teams")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    print(json.dumps(_backend(args).description(), indent=2))
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    backend = _backend(args)
    hub = next((r for r in backend.status() if r.name == "hub"), None)
    if hub is None or not hub.healthy:
        print("cubelab: the hub is not running here: `make up` (or `cubelab up`) first", file=sys.stderr)
        return 1
    try:
        seconds = smoke.run_smoke(backend.description(), progress=_progress)
    except smoke.SmokeError as exc:
        print(f"cubelab smoke FAILED at {exc}", file=sys.stderr)
        return 1
    _progress(f"smoke passed in {seconds:.1f} s: a newcomer's first minutes work")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    config = load(args.config)
    if args.target == "compose":
        from cubelab.backends import compose

        out = Path(args.out) if args.out else config.path.parent
        path, env, added = compose.write(config, out)
        print(f"wrote {path} ({len(config.teams)} teams)")
        print(f"{env}: {len(added)} new secret(s) generated, existing ones kept (mode 0600; never commit it)")
        print(f"next: cd {out} && docker compose up -d --build")
    else:
        from cubelab.backends import kubernetes

        if not RELEASE_NAME.match(args.release):
            print(f"cubelab: release name {args.release!r} is not a valid Helm release name", file=sys.stderr)
            return 2
        path = kubernetes.write(config, Path(args.out or config.path.parent / "cubelab-values.yaml"), args.release)
        print(f"wrote {path} ({len(config.teams)} teams, release {args.release})")
        print(f"next: helm install {args.release} helm/cubelab -f {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cubelab",
        description="Run the cubelab platform: a JupyterHub and one mlflow tracking server per team, "
        "on Earth-system data cubes. The embedded backend starts everything as local processes.",
    )
    p.add_argument("--version", action="version", version=f"cubelab {__version__}")
    p.add_argument(
        "-c", "--config", default=_default_config(),
        help="platform config file (default: $CUBELAB_CONFIG, ./cubelab.yaml, or ./cubelab.example.yaml)",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="install what is missing, start every service, provision every team")
    up.add_argument("--with-monitoring", action="store_true",
                    help="also run Prometheus, scraping the hub and every tracking server (for this `up`; set "
                         "monitoring.enabled in the config to keep it: a later `up` or `apply` without either stops "
                         "it)")  # fmt: skip
    up.set_defaults(func=cmd_up)
    apply = (
        "make the running stack match the config: new teams get their database, bucket and server, membership "
        "changes go through the hub's API (no restart); the hub restarts only when teams, login or hub settings "
        "change (users' servers keep running), a tracking server only when its own settings change"
    )
    sub.add_parser("apply", help=apply, description=apply).set_defaults(func=cmd_apply)
    sub.add_parser("down", help="stop every service (data is kept)").set_defaults(func=cmd_down)
    status = "each service with URL, pid, health, memory and the supervisor's restarts (exit 3 if one is unhealthy)"
    st = sub.add_parser("status", help=status, description=status)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--usage", action="store_true", help="also each team's database size and bucket size")
    st.set_defaults(func=cmd_status)
    lg = sub.add_parser("logs", help="show a service's log (postgres, s3, hub, mlflow-TEAM, supervisor)")
    lg.add_argument("service")
    lg.add_argument("-n", "--lines", type=int, default=200, help="last N lines (0: all; default 200)")
    lg.set_defaults(func=cmd_logs)
    gc = (
        "permanently remove the runs and experiments members deleted (mlflow's deletes only mark them) and their "
        "artefacts, per team with that team's own credentials; runs that are not deleted are never touched"
    )
    gcp = sub.add_parser("gc", help=gc, description=gc)
    gcp.add_argument("--team", action="append", metavar="NAME", help="only this team (repeatable; default: all)")
    gcp.add_argument("--older-than", type=float, default=0, metavar="DAYS",
                     help="only what was deleted more than DAYS ago (default 0: all that is deleted)")  # fmt: skip
    gcp.set_defaults(func=cmd_gc)
    backup = (
        "back up every team's database and bucket, the hub's database and users' password hashes, and the config, "
        "into a folder or s3://BUCKET/PREFIX. Objects are stored once by digest: a second backup into the same "
        "place copies only what changed. Secrets stay out unless --with-secrets"
    )
    bk = sub.add_parser("backup", help=backup, description=backup)
    bk.add_argument("--to", metavar="DIR|s3://BUCKET/PREFIX",
                    help="where to keep backups (default: backups/ beside the config; s3:// reads the AWS_* "
                    "environment, AWS_ENDPOINT_URL for a non-AWS store)")  # fmt: skip
    bk.add_argument("--with-secrets", action="store_true",
                    help="also the generated secrets (passwords, keys, tokens), written 0600")  # fmt: skip
    bk.set_defaults(func=cmd_backup)
    restore = (
        "bring a deployment back from a backup: starts what is stopped, then replaces the databases, buckets and "
        "(without --team) the hub's database and password hashes with the backup's. Refuses to replace a team "
        "that holds runs, models or objects unless --force"
    )
    rs = sub.add_parser("restore", help=restore, description=restore)
    rs.add_argument("backup", metavar="BACKUP", help="a backup folder (its newest snapshot) or one snapshot in it; "
                    "or s3://BUCKET/PREFIX[/snapshots/ID]")  # fmt: skip
    rs.add_argument("--team", action="append", metavar="NAME",
                    help="only this team (repeatable); others and the hub are not touched")  # fmt: skip
    rs.add_argument("--force", action="store_true", help="replace teams that are not empty")
    rs.set_defaults(func=cmd_restore)
    upgrade = (
        "move a deployment to this release: install its environments, back up (unless --no-backup), migrate "
        "every team's mlflow database and the hub's database with the servers stopped, then start everything. "
        "A failed migration names the team and the restore command"
    )
    ug = sub.add_parser("upgrade", help=upgrade, description=upgrade)
    ug.add_argument("--to", metavar="DIR|s3://BUCKET/PREFIX", help="where the backup goes (default: backups/ "
                    "beside the config)")  # fmt: skip
    ug.add_argument("--no-backup", action="store_true", help="migrate without a backup first (not advised)")
    ug.set_defaults(func=cmd_upgrade)
    sub.add_parser("check", help="validate the config and change nothing").set_defaults(func=cmd_check)
    smoke_help = (
        "a newcomer's first minutes against the running stack: the hub answers, the first member of the first "
        "team logs in with the generated password, starts a server, runs the README's snippet in a kernel and "
        "finds the run in the team's mlflow as its author; the team's mlflow UI loads through the hub"
    )
    sub.add_parser("smoke", help=smoke_help, description=smoke_help).set_defaults(func=cmd_smoke)
    rd = sub.add_parser(
        "render",
        help="write what docker compose (docker-compose.yml, .env) or Helm (values) needs from the platform config",
    )
    rd.add_argument("target", choices=["compose", "helm"])
    rd.add_argument(
        "-o", "--out", help="compose: folder for docker-compose.yml and .env (default: the config's folder); "
        "helm: values file (default: cubelab-values.yaml beside the config)",
    )  # fmt: skip
    rd.add_argument("--release", default="cubelab", help="helm: the release name the values are for")
    rd.set_defaults(func=cmd_render)
    sub.add_parser(
        "describe", help="print the deployment description (URLs, team S3 credentials) that platform_tests/ reads"
    ).set_defaults(func=cmd_describe)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except ConfigError as exc:
        print(f"cubelab: invalid config: {exc}", file=sys.stderr)
        code = 2
    except BackupError as exc:
        print(f"cubelab: {exc}", file=sys.stderr)
        code = 1
    except (StartError, StateDirError) as exc:
        print(f"cubelab: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("cubelab: interrupted; `cubelab down` stops whatever was started", file=sys.stderr)
        code = 130
    sys.exit(code)
