"""PostgreSQL from the machine's own server binaries: one cluster, one database and role per team.

It listens on no TCP port, only on its unix socket, in a folder (StatePaths.sockets/postgres) that only its own
account may write to. A port could be taken by any local account while the server restarts; that folder cannot,
so nothing else can ever answer in Postgres's place and ask a client for its password. Clients also insist on
SCRAM (require_auth), so no password crosses the socket in clear."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg2

from cubelab import plan
from cubelab.backends.local.paths import EXTERNAL_ROOT, StatePaths
from cubelab.config import PlatformConfig, Team
from cubelab.prereqs import postgres_bindir, postgres_bindirs
from cubelab.procs import Launch, ProcessTable, StartError
from cubelab.provision import provision_database
from cubelab.secrets import SecretStore

SUPERUSER = "cubelab"
NAME = "postgres"


def server_bindir() -> Path:
    """The folder with initdb and postgres, or a StartError that says how to get them."""
    if found := postgres_bindir():
        return found
    raise StartError(
        NAME,
        "the PostgreSQL server binaries (initdb, postgres) were not found in "
        f"{', '.join(postgres_bindirs()) or 'any known folder'}. Install them with "
        "`apt-get install postgresql` or set CUBELAB_POSTGRES_BINDIR.",
    )


class LocalPostgres:
    def __init__(self, config: PlatformConfig, paths: StatePaths, procs: ProcessTable) -> None:
        self.config = config
        self.paths = paths
        self.procs = procs
        self.secrets = SecretStore(paths.secrets)
        self.port = config.ports.postgres
        # initdb and postgres refuse to run as root; the Debian package's user owns the cluster then.
        self.run_as = "postgres" if os.geteuid() == 0 else None
        # Run as root from a checkout under a private folder (/root is 0700), the postgres user cannot traverse to
        # <state>/postgres: the cluster then lives in /var/lib/cubelab/<id>/postgres.
        self.home = paths.placed("postgres", movable=bool(self.run_as))
        self.data_dir = self.home / "data"
        self.log = paths.logs / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.paths.sockets / NAME

    @property
    def url(self) -> str:
        return f"postgresql:///?host={self.socket_dir}&port={self.port}"

    def make_socket_dir(self) -> None:
        """The socket's folder: Postgres's own (0755, so clients pass through to the socket, which its login
        guards), in a folder root owns."""
        self.paths.sockets.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(self.paths.sockets, 0o755)  # noqa: S103 - traverse and list: socket names are no secret
        self.socket_dir.mkdir(exist_ok=True, mode=0o755)
        os.chmod(self.socket_dir, 0o755)  # noqa: S103 - see above
        self._own(self.socket_dir)

    def password(self) -> str:
        return self.secrets.get("postgres-superuser")

    def _own(self, path: Path) -> None:
        if self.run_as:
            shutil.chown(path, self.run_as, self.run_as)

    def prepare(self, progress: Callable[[str], None]) -> None:
        """Make the cluster on first use (initdb)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        bindir = server_bindir()
        if self.home != self.paths.postgres:
            progress(f"postgres: {self.paths.root} is private to its owner, so the cluster lives in {self.home}")
            EXTERNAL_ROOT.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._own(self.home)
        self.paths.remember_place("postgres", self.home)
        if self.data_dir.exists():  # a half-made cluster from an interrupted first start
            shutil.rmtree(self.data_dir)
        pwfile = self.home / ".initdb-pw"
        pwfile.write_text(self.password() + "\n")
        os.chmod(pwfile, 0o600)
        self._own(pwfile)
        argv = [
            str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
        ]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, text=True, user=self.run_as, group=self.run_as,
                                  extra_groups=[] if self.run_as else None, cwd=self.home, check=False)  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise StartError(NAME, f"initdb failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def launch(self) -> Launch:
        argv = [
            str(server_bindir() / "postgres"), "-D", str(self.data_dir),
            "-c", "listen_addresses=", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}", "-c", "unix_socket_permissions=0777",
            "-c", "password_encryption=scram-sha-256",
            "-c", "max_connections=200",
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
               "CUBELAB_STACK": str(self.paths.root)}  # fmt: skip
        # SIGINT is postgres's "fast" shutdown; SIGTERM would wait for every client to leave.
        return Launch(NAME, argv, env, self.log, self.home, user=self.run_as, stop_signal=signal.SIGINT,
                      before_start=self._before_start)  # fmt: skip

    def _before_start(self) -> None:
        self.make_socket_dir()
        self._clear_stale_lock()

    def _clear_stale_lock(self) -> None:
        """A killed postmaster leaves postmaster.pid and its socket's lock file. Postgres itself ignores them once
        that pid is gone, but not while it is a zombie its parent (a long-running `cubelab` caller) has not yet
        collected: then a restart by the supervisor would fail with "lock file already exists". A zombie holds
        no memory, port or file."""
        for lock in (self.data_dir / "postmaster.pid", self.socket_dir / f".s.PGSQL.{self.port}.lock"):
            try:
                pid = int(lock.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    continue  # a live process: postgres decides
            except psutil.NoSuchProcess:
                pass
            lock.unlink(missing_ok=True)

    def connect(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host=str(self.socket_dir),
            port=self.port,
            require_auth=plan.POSTGRES_AUTH,
            user=SUPERUSER,
            password=self.password(),
            dbname=dbname,
            connect_timeout=2,
        )

    def healthy(self) -> bool:
        try:
            with self.connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                return True
        except psycopg2.OperationalError:
            return False

    def provision_team(self, team: Team, password: str) -> None:
        """Create (or fix) the team's role and database; only the team's role may connect to it."""
        self.provision_database(team.role, team.database, password)

    def provision_database(self, role_name: str, database: str, password: str) -> None:
        """Create (or fix) a login role and a database it owns; no other role may connect to it."""
        conn = self.connect()
        conn.autocommit = True
        try:
            provision_database(conn, role_name, database, password)
        finally:
            conn.close()

    def database_uri(self, role: str, database: str, password: str) -> str:
        addr = plan.Addresses("", "", "", (str(self.socket_dir), self.port), {}, {}, {})
        return plan.postgres_url(role, quote(password, safe=""), database, addr)

    def store_uri(self, team: Team, password: str) -> str:
        return self.database_uri(team.role, team.database, password)
