"""Migrates each team's mlflow database to the schema of the installed mlflow (what `mlflow db upgrade` does),
before the new tracking servers start: `cubelab upgrade` on the embedded stack, the chart's pre-upgrade hook Job
under Helm. Both run it with the plan's environment (cubelab.plan.migrate_service): Postgres's superuser, which
switches to each team's role (SET ROLE), so whatever a migration creates belongs to the team as before.

    python -m cubelab.tracking.migrate [TEAM ...]      (default: every team in CUBELAB_TEAMS)

The password comes from the environment, never argv (`mlflow db upgrade URI` would show it to `ps`). A team
whose database does not exist yet (new in this upgrade: provisioned after it) or holds no mlflow tables yet is
left alone. One line per team; on a failure, the failing team's line goes to stderr and the exit status is 1.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _need(name: str) -> str:
    if not (value := os.environ.get(name, "")):
        sys.exit(f"cubelab migrate: environment variable {name} is not set (the plan's environment)")
    return value


def _server() -> dict[str, Any]:
    return {"host": _need("POSTGRES_HOST"), "port": int(os.environ.get("POSTGRES_PORT", "5432")),
            "user": os.environ.get("POSTGRES_USER", "postgres"), "password": _need("POSTGRES_PASSWORD")}  # fmt: skip


def _auth() -> dict[str, str]:
    method = os.environ.get("POSTGRES_REQUIRE_AUTH", "")
    return {"require_auth": method} if method else {}


def _exists(database: str) -> bool:
    import psycopg2

    with psycopg2.connect(dbname="postgres", connect_timeout=10, **_server(), **_auth()) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        return cur.fetchone() is not None


def migrate(name: str) -> str:
    import mlflow
    import sqlalchemy
    from mlflow.store.db.utils import _get_schema_version, _is_empty_database, _upgrade_db

    from cubelab.config import Team

    team = Team(name=name, members=())
    if not _exists(team.database):
        return f"team {name}: no database yet (made when the team is provisioned)"
    server = _server()
    url = sqlalchemy.URL.create("postgresql+psycopg2", username=server["user"], password=server["password"],
                                host=server["host"], port=server["port"], database=team.database,
                                query=_auth())  # fmt: skip
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    @sqlalchemy.event.listens_for(engine, "connect")
    def as_team(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute(f'SET ROLE "{team.role}"')  # a fixed name made from a validated team name

    try:
        if _is_empty_database(engine):
            return f"team {name}: no mlflow tables yet (its server makes them)"
        before = _get_schema_version(engine)
        _upgrade_db(engine)
        after = _get_schema_version(engine)
    finally:
        engine.dispose()
    what = "already current" if before == after else f"migrated from {before}"
    return f"team {name}: mlflow {mlflow.__version__} schema {after} ({what})"


def main(argv: list[str] | None = None) -> None:
    teams = (sys.argv[1:] if argv is None else argv) or _need("CUBELAB_TEAMS").split()
    for name in teams:
        try:
            print(migrate(name), flush=True)
        except Exception as exc:  # noqa: BLE001 - reported with the team's name, then the job fails
            print(f"team {name}: migration failed: {type(exc).__name__}: {str(exc).strip()[-1500:]}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
