"""S3-compatible storage: SeaweedFS (`weed mini`), one bucket and one S3 identity per team."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import time
from collections.abc import Callable

import boto3
import botocore.config
import botocore.exceptions

from cubelab import storage
from cubelab.backends.local.accounts import ensure_service_account, service_account
from cubelab.backends.local.firewall import FirewallError, LoopbackGuard
from cubelab.backends.local.paths import EXTERNAL_ROOT, StatePaths, reachable_by_others
from cubelab.config import PlatformConfig, Team
from cubelab.procs import ProcessTable, StartError, port_owner, wait_healthy
from cubelab.provision import Credentials, ensure_bucket, identity_document
from cubelab.secrets import SecretStore, new_access_key, new_password, write_private

NAME = "s3"


class LocalS3:
    def __init__(self, config: PlatformConfig, paths: StatePaths, procs: ProcessTable) -> None:
        self.config = config
        self.paths = paths
        self.procs = procs
        self.secrets = SecretStore(paths.secrets)
        self.port = config.ports.s3
        self.log = paths.logs / "s3.log"
        # SeaweedFS's folder (data and identities). Data an earlier version left where SeaweedFS's account cannot
        # reach stays there (account() then says None).
        fresh = not (paths.s3 / "data").exists()
        self.home = paths.placed("s3", movable=os.geteuid() == 0 and fresh)
        self.identities = self.home / "identities.json"
        self.guard = LoopbackGuard(paths.root)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _credentials(self, prefix: str) -> Credentials:
        return Credentials(
            self.secrets.get(f"{prefix}-access-key", new_access_key),
            self.secrets.get(f"{prefix}-secret-key", new_password),
        )

    def admin_credentials(self) -> Credentials:
        return self._credentials("s3-admin")

    def team_credentials(self, team: Team) -> Credentials:
        return self._credentials(f"teams/{team.name}/s3")

    def client(self, creds: Credentials):
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            region_name="us-east-1",
            config=botocore.config.Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=30),
        )

    def _identity_document(self) -> str:
        teams = {t.name: (self.config.bucket(t), self.team_credentials(t)) for t in self.config.teams}
        return json.dumps(identity_document(self.admin_credentials(), teams), indent=2)

    def write_identities(self) -> bool:
        """Write the identity file; True if it changed."""
        text = self._identity_document()
        if self.identities.exists() and self.identities.read_text() == text:
            return False
        write_private(self.identities, text)
        return True

    def argv(self, weed: str) -> list[str]:
        ports = storage.consecutive_ports(self.port)
        return [
            weed,
            *storage.mini_args(self.home / "data", self.identities, ports, bind="127.0.0.1", advertise="127.0.0.1"),
        ]

    def ports(self) -> list[int]:
        return sorted(storage.consecutive_ports(self.port).values())

    def internal_ports(self) -> list[int]:
        """Every port weed listens on except the S3 API: its internal servers and all gRPC twins."""
        return storage.internal_ports(storage.consecutive_ports(self.port))

    def account(self) -> str | None:
        """The system account SeaweedFS runs as when cubelab runs as root. None when not root, and for data an
        earlier version left in a folder that account cannot reach (`start` says so)."""
        if os.geteuid() != 0 or not reachable_by_others(self.home):
            return None
        return service_account("s3")

    def guard_internals(self) -> None:
        """As root, only root and SeaweedFS's own account may connect to the internal ports."""
        if not LoopbackGuard.needed():
            return
        account = self.account()
        uids = [0] + ([pwd.getpwnam(account).pw_uid] if account else [])
        try:
            self.guard.apply(self.internal_ports(), allowed_uids=uids)
        except FirewallError as exc:
            raise StartError(NAME, str(exc)) from None

    def unguard_internals(self) -> None:
        if LoopbackGuard.needed():
            self.guard.remove()

    def _prepare_home(self, progress: Callable[[str], None]) -> str | None:
        """Make SeaweedFS's folder and account, and hand the folder to the account (files made by root before
        included). Returns the account, or None when SeaweedFS runs as the caller."""
        if self.home != self.paths.s3:
            EXTERNAL_ROOT.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.paths.remember_place("s3", self.home)
        account = self.account()
        if account is None:
            if os.geteuid() == 0:
                progress(
                    f"WARNING: S3 runs as root: its data in {self.home} is in a folder other accounts cannot "
                    "pass through; move the state dir somewhere they can (see README, Threat model)"
                )
            (self.home / "data").mkdir(exist_ok=True)
            return None
        entry = ensure_service_account(account, self.home, "cubelab S3 storage (SeaweedFS)")
        (self.home / "data").mkdir(exist_ok=True)
        for folder, _, files in os.walk(self.home):
            for path in [folder, *(os.path.join(folder, f) for f in files)]:
                if os.lstat(path).st_uid != entry.pw_uid:
                    os.lchown(path, entry.pw_uid, entry.pw_gid)
        return account

    def start(self, weed: str, progress: Callable[[str], None] = print) -> None:
        account = self._prepare_home(progress)
        self.guard_internals()  # before weed listens: no moment when its internals are open
        changed = self.write_identities()
        if account:
            shutil.chown(self.identities, account, account)
        argv = self.argv(weed)
        fingerprint = hashlib.sha256(json.dumps([argv, account]).encode()).hexdigest()[:16]
        record = self.procs.get(NAME)
        if record and record.process() and record.fingerprint != fingerprint:
            progress("s3: restarting SeaweedFS with new settings")  # e.g. an older stack's, run as root
            self.procs.stop(NAME)
        elif record and record.process():
            if changed:
                # SeaweedFS reloads its identity file on SIGHUP: new teams get access, nobody restarts.
                os.kill(record.pid, signal.SIGHUP)
                self._wait_identities_loaded()
            return
        for port in self.ports():
            for taken in (port, port + storage.GRPC_OFFSET):
                if owner := port_owner(taken):
                    raise StartError(NAME, f"port {taken} (ports.s3 and the ports after it) is in use by {owner}")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "CUBELAB_STACK": str(self.paths.root),
        }
        # umask 077: the unix sockets weed makes in /tmp (one per internal server) admit its own account only.
        record = self.procs.start(NAME, argv, env=env, log=self.log, cwd=self.home, user=account,
                                  umask=0o077, fingerprint=fingerprint)  # fmt: skip
        wait_healthy(record, self.healthy, timeout=30)

    def healthy(self) -> bool:
        try:
            self.client(self.admin_credentials()).list_buckets()
            return True
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False

    def _wait_identities_loaded(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.config.teams)
        while pending:
            team = pending[0]
            try:
                self.client(self.team_credentials(team)).list_objects_v2(Bucket=self.config.bucket(team), MaxKeys=1)
                pending.pop(0)
                continue
            except botocore.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] == "NoSuchBucket":
                    pending.pop(0)  # the key is known; the bucket is made next
                    continue
            if time.monotonic() > deadline:
                raise StartError(NAME, f"S3 identity of team {team.name!r} not active after {timeout:.0f} s", self.log)
            time.sleep(0.2)

    def ensure_bucket(self, team: Team, timeout: float = 20) -> None:
        """Create the team's bucket if missing (retried: SeaweedFS creates buckets asynchronously)."""
        try:
            ensure_bucket(self.client(self.admin_credentials()), self.config.bucket(team), timeout)
        except RuntimeError as exc:
            raise StartError(NAME, str(exc), self.log) from None
