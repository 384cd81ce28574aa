"""dask-gateway in a container (docker compose): its clusters run inside the gateway's own container.

The image is the notebook image (the kernels' dask, xarray, zarr, s3fs and toolkit) with dask-gateway-server
added (images/gateway). The gateway runs as root there with only the capabilities it needs to start, stop and
clean up processes as other accounts (the compose file drops the rest), and runs each member's schedulers and
workers as an account of that member's own, `cl-NAME` as on the embedded stack. The container starts with no
such account: one is made when the member's first cluster starts. An account's processes cannot read another
account's environment (its team's S3 keys) or files; the gateway's settings are root's alone.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from traitlets import Unicode

from cubelab.gateway.backend import TeamLocalBackend

ACCOUNTS_HOME = "/home/clusters"


def ensure_account(name: str, home: Path) -> pwd.struct_passwd:
    """A system account with its own group, no login and no password, and home as its private HOME (0700)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        done = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
             "--shell", "/usr/sbin/nologin", "--comment", "cubelab Dask clusters", name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        try:  # a second cluster of the same member may have made it meanwhile
            entry = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(f"cannot create the account {name}: {done.stderr.strip()}") from None
    home.mkdir(mode=0o700, exist_ok=True)
    if home.stat().st_uid != entry.pw_uid:
        os.chmod(home, 0o700)  # before the chown: root may change the mode of others' files only with CAP_FOWNER
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return entry


class ContainerLocalBackend(TeamLocalBackend):
    """TeamLocalBackend whose members' accounts are made on first use (a container starts with none)."""

    accounts_home = Unicode(
        ACCOUNTS_HOME, help="The folder of the members' accounts' homes (each its own, 0700).", config=True
    )

    def account(self, username: str) -> pwd.struct_passwd:
        if not self.account_prefix:
            return super().account(username)
        name = self.account_prefix + username
        home = Path(self.accounts_home)
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o711)  # noqa: S103 - each account passes through to its own home, lists none
        return ensure_account(name, home / name)
