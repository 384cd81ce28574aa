"""Password hashes for the hub's local accounts (scrypt, standard library only: the hub imports it too)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

_N, _R, _P = 2**14, 8, 1
MIN_LENGTH = 10


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


class PasswordFile:
    """user -> hash, in a JSON file readable by its owner only. Writes are atomic."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        return dict(json.loads(self.path.read_text()))

    def save(self, hashes: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(hashes, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def check(self, user: str, password: str) -> bool:
        stored = self.load().get(user)
        if stored is None:
            verify_password(password, hash_password("timing-equaliser"))  # same work for unknown users
            return False
        return verify_password(password, stored)

    def set(self, user: str, password: str) -> None:
        hashes = self.load()
        hashes[user] = hash_password(password)
        self.save(hashes)
