"""Provisioning shared by every deployment target: a team's database and role, its bucket and S3 identity,
the hub's database, the local users' password file.

The embedded stack calls the functions; containers (the compose `provision` service, the Helm chart's provisioning
Job) run `python -m cubelab.provision`, which reads everything from the environment (names in `TeamSecrets`),
so no secret is ever on a command line or in a file of the deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cubelab.secrets import write_private

HUB_ROLE, HUB_DATABASE = "hub", "jupyterhub"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def env_name(name: str) -> str:
    """A team or user name as part of an environment variable name: ocean-2 -> OCEAN_2."""
    return name.upper().replace("-", "_")


@dataclass(frozen=True)
class TeamSecrets:
    """The environment variables that carry one team's secrets in containers (compose .env, Kubernetes Secret)."""

    team: str

    @property
    def db_password(self) -> str:
        return f"TEAM_{env_name(self.team)}_DB_PASSWORD"

    @property
    def s3_access_key(self) -> str:
        return f"TEAM_{env_name(self.team)}_S3_ACCESS_KEY"

    @property
    def s3_secret_key(self) -> str:
        return f"TEAM_{env_name(self.team)}_S3_SECRET_KEY"

    @property
    def hub_token(self) -> str:
        return f"TEAM_{env_name(self.team)}_HUB_TOKEN"

    @property
    def members(self) -> str:
        return f"TEAM_{env_name(self.team)}_MEMBERS"

    @property
    def tracking_uri(self) -> str:
        """Not a secret: where platform_tests reach the team's server (provision describe)."""
        return f"TEAM_{env_name(self.team)}_TRACKING_URI"


def user_password_var(user: str) -> str:
    return f"USER_{env_name(user)}_PASSWORD"


def identity_document(admin: Credentials, teams: dict[str, tuple[str, Credentials]]) -> dict[str, Any]:
    """SeaweedFS's S3 identities: one admin, and per team (name -> (bucket, credentials)) an identity whose
    every action is scoped to the team's own bucket."""
    identities = [{
        "name": "cubelab-admin",
        "credentials": [{"accessKey": admin.access_key, "secretKey": admin.secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]  # fmt: skip
    for team, (bucket, creds) in teams.items():
        identities.append({
            "name": f"team-{team}",
            "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
            "actions": [f"{a}:{bucket}" for a in ("Read", "Write", "List", "Tagging")],
        })  # fmt: skip
    return {"identities": identities}


def provision_database(conn: Any, role_name: str, database: str, password: str) -> None:
    """Create (or fix) a login role and a database it owns; no other role may connect to it.
    `conn` is a psycopg2 connection as a superuser, in autocommit mode."""
    from psycopg2 import sql

    with conn.cursor() as cur:
        role, db = sql.Identifier(role_name), sql.Identifier(database)
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role_name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        cur.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(role),
            (password,),
        )
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))


def ensure_bucket(s3: Any, bucket: str, timeout: float = 20) -> None:
    """Create the bucket if missing. SeaweedFS creates buckets asynchronously: retry until it is there."""
    import botocore.exceptions

    from cubelab.procs import wait_until

    def made() -> bool:
        try:
            s3.head_bucket(Bucket=bucket)
            return True
        except botocore.exceptions.ClientError:
            pass
        try:
            s3.create_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return False

    wait_until(made, timeout, what=f"bucket {bucket!r}")


# --- containers: everything from the environment ------------------------------------------------------------


def _need(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"cubelab provision: environment variable {name} is not set")
    return value


def _teams() -> list[str]:
    return _need("CUBELAB_TEAMS").split()


def write_identities(path: Path) -> None:
    prefix = os.environ.get("CUBELAB_BUCKET_PREFIX", "cubelab-")
    admin = Credentials(_need("S3_ADMIN_ACCESS_KEY"), _need("S3_ADMIN_SECRET_KEY"))
    teams = {}
    for team in _teams():
        names = TeamSecrets(team)
        teams[team] = (f"{prefix}{team}", Credentials(_need(names.s3_access_key), _need(names.s3_secret_key)))
    write_private(path, json.dumps(identity_document(admin, teams), indent=2))
    print(f"cubelab provision: S3 identities for {len(teams)} team(s) written to {path}", flush=True)


def require_auth() -> dict[str, str]:
    """libpq's require_auth from the plan's POSTGRES_REQUIRE_AUTH (empty: an external server, methods unknown)."""
    method = os.environ.get("POSTGRES_REQUIRE_AUTH", "")
    return {"require_auth": method} if method else {}


def _connect(timeout: float) -> Any:
    import psycopg2

    from cubelab.procs import StartError, wait_until

    conn: list[Any] = []

    def connected() -> bool:
        conn.append(psycopg2.connect(
            host=_need("POSTGRES_HOST"),
            port=int(os.environ.get("POSTGRES_PORT", "5432")),
            user=os.environ.get("POSTGRES_USER", "postgres"),
            password=_need("POSTGRES_PASSWORD"),
            dbname="postgres",
            connect_timeout=3,
            **require_auth(),
        ))  # fmt: skip
        return True

    try:
        wait_until(connected, timeout, what="Postgres", interval=1)
    except StartError as exc:
        raise SystemExit(f"cubelab provision: {exc}") from None
    conn[0].autocommit = True
    return conn[0]


def provision_all(timeout: float) -> None:
    """Databases and roles (teams, hub), buckets, and the local users' password file when asked for."""
    import boto3
    import botocore.config

    from cubelab.config import Team

    conn = _connect(timeout)
    try:
        for name in _teams():
            team = Team(name=name, members=())
            provision_database(conn, team.role, team.database, _need(TeamSecrets(name).db_password))
            print(f"cubelab provision: database {team.database} (role {team.role}) ready", flush=True)
        if os.environ.get("HUB_DB_PASSWORD"):
            provision_database(conn, HUB_ROLE, HUB_DATABASE, _need("HUB_DB_PASSWORD"))
            print(f"cubelab provision: hub database {HUB_DATABASE} ready", flush=True)
    finally:
        conn.close()
    s3 = boto3.client(
        "s3",
        endpoint_url=_need("S3_ENDPOINT"),
        aws_access_key_id=_need("S3_ADMIN_ACCESS_KEY"),
        aws_secret_access_key=_need("S3_ADMIN_SECRET_KEY"),
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 5}, connect_timeout=3, read_timeout=30),
    )
    prefix = os.environ.get("CUBELAB_BUCKET_PREFIX", "cubelab-")
    for name in _teams():
        ensure_bucket(s3, f"{prefix}{name}", timeout=timeout)
        print(f"cubelab provision: bucket {prefix}{name} ready", flush=True)
    if passwords := os.environ.get("CUBELAB_PASSWORDS_FILE"):
        write_passwords(Path(passwords), os.environ.get("CUBELAB_USERS", "").split())


def write_passwords(path: Path, users: list[str]) -> None:
    """Hashes of the users' first passwords; a password a user has changed since is kept."""
    from cubelab.passwords import PasswordFile

    store = PasswordFile(path)
    hashes = store.load() if path.exists() else {}
    added = [u for u in users if u not in hashes]
    for user in added:
        store.set(user, _need(user_password_var(user)))
    print(f"cubelab provision: passwords of {len(added)} new user(s) set in {path}", flush=True)


def _hub_members(team: str) -> list[str]:
    """The team's members as the hub knows them: with OIDC the config lists none, and the provider's groups claim
    puts users in teams as they log in."""
    import urllib.request

    url, token = f"{_need('CUBELAB_HUB_API_URL')}/groups/{team}", _need("CUBELAB_ADMIN_TOKEN")
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})  # noqa: S310 - the hub's API
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return sorted(json.loads(resp.read())["users"])


def describe(path: Path) -> None:
    """The deployment description platform_tests reads (see platform_tests/README.md), from the environment
    of a container inside the deployment (the compose platform-tests service, the Helm test pod)."""
    prefix = os.environ.get("CUBELAB_BUCKET_PREFIX", "cubelab-")
    admins = set(os.environ.get("CUBELAB_ADMINS", "").split())
    teams = []
    for team in _teams():
        names = TeamSecrets(team)
        teams.append({
            "name": team,
            "members": os.environ.get(names.members, "").split() or _hub_members(team),
            "tracking_uri": _need(names.tracking_uri),
            "bucket": f"{prefix}{team}",
            "artifact_prefix": os.environ.get("CUBELAB_ARTIFACT_PREFIX", "mlflow"),
            "s3": {"access_key": _need(names.s3_access_key), "secret_key": _need(names.s3_secret_key)},
        })  # fmt: skip
    users = []
    for user in os.environ.get("CUBELAB_USERS", "").split():
        entry: dict[str, Any] = {"name": user, "admin": user in admins}
        if password := os.environ.get(user_password_var(user)):
            entry["initial_password"] = password
        users.append(entry)
    description = {
        "backend": os.environ.get("CUBELAB_BACKEND", "containers"),
        "s3_endpoint": _need("S3_ENDPOINT"),
        "storage_internal": os.environ.get("CUBELAB_STORAGE_INTERNAL", "").split(),
        "hub_url": _need("CUBELAB_HUB_URL"),
        "hub_api_url": _need("CUBELAB_HUB_API_URL"),
        "hub_admin_token": _need("CUBELAB_ADMIN_TOKEN"),
        "users": users,
        # Users' servers are separate containers or pods: the control plane's files are not in them.
        "private_paths": [],
        "users_isolated": True,
        "teams": teams,
        # What the environment running this deployment cannot do, named by the harness that runs it (e.g.
        # no-api-server: Kubernetes pods run without a cluster); platform_tests skip what needs it, saying so.
        "limits": os.environ.get("CUBELAB_LIMITS", "").split(),
    }
    if (token := os.environ.get("CUBELAB_METRICS_TOKEN")) and (targets := os.environ.get("CUBELAB_METRICS_TARGETS")):
        description["metrics"] = {"token": token, "targets": json.loads(targets)}
    if gateway := os.environ.get("CUBELAB_GATEWAY"):
        description["dask_gateway"] = json.loads(gateway)  # addresses and limits (cubelab.plan.gateway_description)
    docker = Path(os.environ.get("CUBELAB_DOCKER_SOCKET", "/var/run/docker.sock"))
    usable = docker.is_socket() and os.access(docker, os.R_OK | os.W_OK)
    if usable and (services := os.environ.get("CUBELAB_FAULT_SERVICES")):
        # The operator mounted the Docker socket into this container: the fault tests may kill services.
        description["faults"] = {"kind": "docker", "socket": str(docker), "services": json.loads(services)}
    account = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    if account.exists() and (selectors := os.environ.get("CUBELAB_FAULT_SELECTORS")):
        # The chart's tests.faults: this pod may delete the release's pods.
        description["faults"] = {"kind": "kubernetes", "selectors": json.loads(selectors)}
    write_private(path, json.dumps(description, indent=2))
    print(f"cubelab provision: deployment description of {len(teams)} team(s) written to {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cubelab.provision",
        description="Provision cubelab's teams in containers (the compose `provision` service, the Helm provisioning "
        "Job). "
        "Reads names and secrets from the environment: CUBELAB_TEAMS, CUBELAB_BUCKET_PREFIX, POSTGRES_*, "
        "S3_ENDPOINT, S3_ADMIN_*, TEAM_<NAME>_{DB_PASSWORD,S3_ACCESS_KEY,S3_SECRET_KEY}, HUB_DB_PASSWORD, "
        "CUBELAB_USERS, USER_<NAME>_PASSWORD, CUBELAB_PASSWORDS_FILE; for describe also CUBELAB_HUB_URL, "
        "CUBELAB_HUB_API_URL, CUBELAB_ADMIN_TOKEN, CUBELAB_ADMINS, TEAM_<NAME>_{MEMBERS,TRACKING_URI}, "
        "CUBELAB_STORAGE_INTERNAL, CUBELAB_METRICS_TOKEN, CUBELAB_METRICS_TARGETS, CUBELAB_GATEWAY.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ids = sub.add_parser("s3-identities", help="write SeaweedFS's identity file (before the S3 server starts)")
    ids.add_argument("path", type=Path)
    everything = sub.add_parser("all", help="databases, roles, buckets and passwords (after Postgres and S3 are up)")
    everything.add_argument("--timeout", type=float, default=120, help="seconds to wait for Postgres and S3")
    desc = sub.add_parser("describe", help="write the deployment description that platform_tests reads")
    desc.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "s3-identities":
        write_identities(args.path)
    elif args.command == "describe":
        describe(args.path)
    else:
        from cubelab.procs import StartError

        try:
            provision_all(args.timeout)
        except StartError as exc:  # a service that never became ready: say which, without a traceback
            raise SystemExit(f"cubelab provision: {exc}") from None
    sys.stdout.flush()


if __name__ == "__main__":
    main()
