"""Loopback ports that only the platform's own processes may connect to.

SeaweedFS's internal servers (master, volume, filer, admin and their gRPC twins) answer anyone who can
connect, and on one machine every user's kernel can connect to 127.0.0.1. Their own JWT settings cover the
filer's and volume servers' HTTP APIs but not the master's or gRPC, so the embedded stack closes them at the
network layer: as root, an iptables chain of its own rejects connections to those ports on the loopback
interface from every account but the ones the platform runs as (iptables' owner match; the S3 API itself
stays open, its identities decide). Without root there are no separate user accounts to keep out.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from cubelab.procs import StartError


class FirewallError(Exception):
    """The rules could not be put in place."""


class LoopbackGuard:
    """An iptables chain, named after the stack's state directory (and `part`, for a second set of ports with
    other allowed accounts), that only `allowed_uids` get through."""

    def __init__(self, state_dir: Path, part: str = "") -> None:
        ident = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
        self.chain = f"CUBELAB-{ident}" + (f"-{part[:9]}" if part else "")  # iptables allows 28 characters

    @staticmethod
    def needed() -> bool:
        return os.geteuid() == 0

    @staticmethod
    def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, check=False)

    def apply(self, ports: Iterable[int], allowed_uids: Iterable[int] = (0,)) -> None:
        """Reject connections to ports over loopback from any account not in allowed_uids (replaces old rules)."""
        if shutil.which("iptables") is None:
            raise FirewallError("iptables is not installed (Debian package iptables); as root the embedded stack "
                                "needs it to keep users' kernels off SeaweedFS's internal ports")  # fmt: skip
        if self._iptables("-n", "-L", self.chain).returncode != 0:
            self._must("-N", self.chain)
        self._must("-F", self.chain)
        uids = sorted(set(allowed_uids))
        for port in sorted(set(ports)):
            for uid in uids:
                self._must("-A", self.chain, "-p", "tcp", "--dport", str(port),
                           "-m", "owner", "--uid-owner", str(uid), "-j", "RETURN")  # fmt: skip
            self._must("-A", self.chain, "-p", "tcp", "--dport", str(port), "-j", "REJECT",
                       "--reject-with", "tcp-reset")  # fmt: skip
        if self._iptables("-C", "OUTPUT", "-o", "lo", "-j", self.chain).returncode != 0:
            self._must("-I", "OUTPUT", "-o", "lo", "-j", self.chain)

    def close(self, service: str, ports: Iterable[int], accounts: Iterable[str | None] = ()) -> None:
        """As root, only root and the given accounts (None: none) may connect to the ports; a rule that cannot be
        put in place is the service's StartError. Without root: nothing (there are no other accounts)."""
        if not self.needed():
            return
        uids = [0] + [pwd.getpwnam(account).pw_uid for account in accounts if account]
        try:
            self.apply(ports, allowed_uids=uids)
        except FirewallError as exc:
            raise StartError(service, str(exc)) from None

    def remove(self) -> None:
        if not self.needed() or shutil.which("iptables") is None:
            return
        while self._iptables("-D", "OUTPUT", "-o", "lo", "-j", self.chain).returncode == 0:
            pass
        self._iptables("-F", self.chain)
        self._iptables("-X", self.chain)

    def rules(self) -> str:
        return self._iptables("-S", self.chain).stdout

    def _must(self, *args: str) -> None:
        done = self._iptables(*args)
        if done.returncode != 0:
            raise FirewallError(f"iptables {' '.join(args)} failed: {done.stderr.strip()}")
