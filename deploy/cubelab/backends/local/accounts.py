"""Unprivileged system accounts for the services the embedded stack runs when cubelab itself runs as root."""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from pathlib import Path

from cubelab import plan
from cubelab.procs import StartError

USER_PREFIX = plan.USER_PREFIX  # a hub user NAME is the account cl-NAME (as root), for their servers and Dask clusters
SERVICE_PREFIX = "clt-"  # services' accounts: the two never collide
MAX_NAME = 32  # useradd's limit


def service_account(name: str) -> str:
    """The account name for a service called name (a long name keeps a hash so it stays unique)."""
    account = f"{SERVICE_PREFIX}{name}"
    if len(account) <= MAX_NAME:
        return account
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{SERVICE_PREFIX}{name[: MAX_NAME - len(SERVICE_PREFIX) - 9]}-{digest}"


def ensure_service_home(account: str, home: Path, comment: str) -> pwd.struct_passwd:
    """ensure_service_account with home in a folder of such homes that every account may pass through to its own
    home (0711) but not list."""
    home.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(home.parent, 0o711)  # noqa: S103 - each account traverses to its own home only
    return ensure_service_account(account, home, comment)


def ensure_service_account(account: str, home: Path, comment: str) -> pwd.struct_passwd:
    """A system account with no login and no password, and home as its private HOME (made, owned, 0700)."""
    try:
        entry = pwd.getpwnam(account)
    except KeyError:
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
             "--user-group", "--comment", comment, account],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            # Another process (a second stack starting at the same moment) may have made it first.
            try:
                entry = pwd.getpwnam(account)
            except KeyError:
                raise StartError(account, f"cannot create the system account {account}: {done.stderr.strip()}") \
                    from None  # fmt: skip
        else:
            entry = pwd.getpwnam(account)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    return entry
