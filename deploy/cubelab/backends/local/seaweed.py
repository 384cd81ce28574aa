"""S3-compatible storage: SeaweedFS (`weed mini`), one bucket and one S3 identity per team."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

from cubelab import storage
from cubelab.backends.local.accounts import ensure_service_account, service_account
from cubelab.backends.local.firewall import LoopbackGuard
from cubelab.backends.local.paths import EXTERNAL_ROOT, StatePaths, reachable_by_others
from cubelab.config import PlatformConfig, Team
from cubelab.procs import Launch, ProcessTable, wait_until
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
        """As root, only root and SeaweedFS's own account may connect to the internal ports. Where weed runs in a
        network of its own there are none on the machine's: no rules (and old ones go)."""
        if self.isolated:
            self.guard.remove()
        else:
            self.guard.close(NAME, self.internal_ports(), [self.account()])

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

    def prepare(self, progress: Callable[[str], None]) -> bool:
        """Folder, account, firewall and identity file; True when the identities changed."""
        account = self._prepare_home(progress)
        self.guard_internals()  # before weed listens: no moment when its internals are open
        changed = self.write_identities()
        if account:
            shutil.chown(self.identities, account, account)
        return changed

    @property
    def isolated(self) -> bool:
        """Whether weed runs in a network and /tmp of its own (cubelab.netns): as root, with its own account."""
        return self.account() is not None

    @property
    def socket(self) -> Path:
        """weed's S3 API as a unix socket, in a folder only its account may write to (when isolated)."""
        return self.paths.sockets / NAME / "s3.sock"

    def _make_private_dirs(self) -> None:
        account = self.account()
        assert account is not None
        self.paths.sockets.mkdir(parents=True, exist_ok=True, mode=0o755)
        for folder in (self.socket.parent, self.home / "tmp"):
            folder.mkdir(exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)
            shutil.chown(folder, account, account)

    def launch(self, weed: str) -> Launch:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "CUBELAB_STACK": str(self.paths.root)}  # fmt: skip
        if account := self.account():
            # As root: weed in a network and /tmp of its own (cubelab.netns), its S3 API relayed from ports.s3 by
            # the stack's socket holder. No port of weed's is on the machine's network to reach or to take.
            argv = [sys.executable, "-m", "cubelab.netns", account, str(self.home / "tmp"), *self.argv(weed),
                    f"-s3.localSocket={self.socket}"]  # fmt: skip
            return Launch(NAME, argv, env, self.log, self.home, relayed={self.port: ("ports.s3", self.socket)},
                          umask=0o077, before_start=self._make_private_dirs)  # fmt: skip
        busy = "ports.s3 and the ports after it"
        ports = {p: busy for port in self.ports() for p in (port, port + storage.GRPC_OFFSET)}
        # umask 077: the unix sockets weed makes in /tmp (one per internal server) admit its own account only.
        return Launch(NAME, self.argv(weed), env, self.log, self.home, ports=ports, umask=0o077)

    def reload(self) -> None:
        """SeaweedFS reloads its identity file on SIGHUP: new teams get access and nobody restarts."""
        if record := self.procs.get(NAME):
            os.kill(record.pid, signal.SIGHUP)
            wait_until(self._identities_loaded, 15, what=f"{NAME}: the teams' identities")

    def healthy(self) -> bool:
        try:
            self.client(self.admin_credentials()).list_buckets()
            return True
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False

    def _identities_loaded(self) -> bool:
        """Whether every team's key is known (a missing bucket is fine: it is made next)."""
        for team in self.config.teams:
            try:
                self.client(self.team_credentials(team)).list_objects_v2(Bucket=self.config.bucket(team), MaxKeys=1)
            except botocore.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] != "NoSuchBucket":
                    return False
        return True

    def ensure_bucket(self, team: Team, timeout: float = 20) -> None:
        """Create the team's bucket if missing (retried: SeaweedFS creates buckets asynchronously)."""
        ensure_bucket(self.client(self.admin_credentials()), self.config.bucket(team), timeout)
