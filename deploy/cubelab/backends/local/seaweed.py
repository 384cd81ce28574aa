"""S3-compatible storage: SeaweedFS (`weed mini`), one bucket and one S3 identity per team."""

from __future__ import annotations

import json
import os
import signal
import time

import boto3
import botocore.config
import botocore.exceptions

from cubelab.backends.local.firewall import FirewallError, LoopbackGuard
from cubelab.backends.local.paths import StatePaths
from cubelab.config import PlatformConfig, Ports, Team
from cubelab.procs import ProcessTable, StartError, port_owner, wait_healthy
from cubelab.provision import Credentials, ensure_bucket, identity_document
from cubelab.secrets import SecretStore, new_access_key, new_password, write_private

NAME = "s3"
# weed mini's internal servers, placed on the ports right after the S3 port (each also uses +10000 for gRPC).
_INTERNAL = ("master", "volume", "filer", "admin", "s3.port.iceberg", "s3.port.lance")


class LocalS3:
    def __init__(self, config: PlatformConfig, paths: StatePaths, procs: ProcessTable) -> None:
        self.config = config
        self.paths = paths
        self.procs = procs
        self.secrets = SecretStore(paths.secrets)
        self.port = config.ports.s3
        self.log = paths.logs / "s3.log"
        self.identities = paths.s3 / "identities.json"
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
        p = self.port
        argv = [
            weed, "mini", f"-dir={self.paths.s3 / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={p}", f"-s3.config={self.identities}",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
        ]  # fmt: skip
        argv += [f"-{name}{'' if '.' in name else '.port'}={p + i + 1}" for i, name in enumerate(_INTERNAL)]
        return argv

    def ports(self) -> list[int]:
        return [self.port + i for i in range(len(_INTERNAL) + 1)]

    def internal_ports(self) -> list[int]:
        """Every port weed listens on except the S3 API: its internal servers and all gRPC twins."""
        return [p for p in self.ports() if p != self.port] + [p + Ports.GRPC_OFFSET for p in self.ports()]

    def guard_internals(self) -> None:
        """As root, only root (the platform's own processes) may connect to the internal ports."""
        if not LoopbackGuard.needed():
            return
        try:
            self.guard.apply(self.internal_ports(), allowed_uids=[0])
        except FirewallError as exc:
            raise StartError(NAME, str(exc)) from None

    def unguard_internals(self) -> None:
        if LoopbackGuard.needed():
            self.guard.remove()

    def start(self, weed: str) -> None:
        self.guard_internals()  # before weed listens: no moment when its internals are open
        changed = self.write_identities()
        record = self.procs.get(NAME)
        if record and record.process():
            if changed:
                # SeaweedFS reloads its identity file on SIGHUP: new teams get access, nobody restarts.
                os.kill(record.pid, signal.SIGHUP)
                self._wait_identities_loaded()
            return
        for port in self.ports():
            for taken in (port, port + Ports.GRPC_OFFSET):
                if owner := port_owner(taken):
                    raise StartError(NAME, f"port {taken} (ports.s3 and the ports after it) is in use by {owner}")
        (self.paths.s3 / "data").mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.paths.s3),
            "CUBELAB_STACK": str(self.paths.root),
        }
        record = self.procs.start(NAME, self.argv(weed), env=env, log=self.log, cwd=self.paths.s3)
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
