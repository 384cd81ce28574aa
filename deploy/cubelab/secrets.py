"""Generated secrets, one file each under <state>/secrets (folder 0700, files 0600).

Secrets are made on first use and then kept, so a restart reuses them. They are never printed or logged.
"""

from __future__ import annotations

import base64
import os
import secrets
import string
from collections.abc import Callable
from pathlib import Path

_KEY_ALPHABET = string.ascii_uppercase + string.digits


def new_password() -> str:
    return secrets.token_urlsafe(24)


def new_token() -> str:
    """A hub API token (a service's, the proxy's, the cookie secret): 32 random bytes as hex."""
    return secrets.token_hex(32)


def new_fernet_key() -> str:
    """A key for dask-gateway's database encryption (Fernet: 32 random bytes, URL-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def new_access_key() -> str:
    return "CL" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18))


def write_private(path: Path, text: str) -> None:
    """Write text to path atomically, readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class SecretStore:
    """Named secrets kept as files. Names may contain '/' to group them (teams/ocean/db-password)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def get(self, name: str, generate: Callable[[], str] = new_password) -> str:
        """The secret called name, generated and stored the first time it is asked for."""
        path = self.path(name)
        if path.exists():
            return path.read_text().strip()
        value = generate()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        write_private(path, value + "\n")
        return value

    def exists(self, name: str) -> bool:
        return self.path(name).exists()
