"""No client of the platform sends Postgres a password in clear (issue 25).

Whatever answers on Postgres's address may ask a client for its password in clear (authentication method 3), as a
local account that took the port during a restart did. A stand-in server here does exactly that, on a unix
socket, and records what comes back. Every database URL the plan renders, and the control plane's own
connection, must refuse before sending anything (libpq's require_auth=scram-sha-256)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy
import yaml

from cubelab import plan
from cubelab.config import PlatformConfig, load

EXTERNAL = {"postgres": {"host": "db.example.org", "port": 6432}, "s3": {"endpoint": "https://s3.example.org"}}


def make_config(folder: Path, **more: Any) -> PlatformConfig:
    data = {"state_dir": str(folder / "state"), "users": [{"name": "alice"}],
            "teams": [{"name": "ocean", "members": ["alice"]}], **more}  # fmt: skip
    (folder / "cubelab.yaml").write_text(yaml.safe_dump(data))
    return load(folder / "cubelab.yaml")


class CleartextAsker:
    """A unix socket server that answers every startup with "send your password in clear"."""

    def __init__(self, folder: Path, port: int) -> None:
        self.path = folder / f".s.PGSQL.{port}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen()
        self.received: list[bytes] = []  # what each client sent after being asked
        self.asked = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(3)
                try:
                    conn.recv(65536)  # the startup message
                    conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
                    self.asked += 1
                    self.received.append(conn.recv(65536))
                except OSError:
                    self.received.append(b"")

    def answers(self, count: int) -> list[bytes]:
        """What the first count clients sent back (waiting for the server's thread to record it)."""
        deadline = time.monotonic() + 5
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.received


@pytest.fixture
def asker(tmp_path: Path) -> Iterator[CleartextAsker]:
    server = CleartextAsker(tmp_path, 15432)
    yield server
    server.sock.close()


def _urls(folder: Path) -> dict[str, str]:
    config = make_config(folder)
    addr = plan.local_addresses(config, {"ocean": 15100}, str(folder))
    secrets = {name: "the-secret-password" for name in plan.references(plan.hub_state(addr))}
    secrets |= {name: "the-secret-password" for name in plan.references(plan.tracking_env(config, config.teams[0],
                                                                                             addr))}  # fmt: skip
    tracking = plan.resolve(plan.tracking_env(config, config.teams[0], addr), secrets.__getitem__)
    hub = plan.resolve(plan.hub_state(addr), secrets.__getitem__)
    return {"tracking": tracking["CUBELAB_BACKEND_STORE_URI"], "hub": hub["db_url"]}


def _connect(url: str) -> Any:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def test_the_plans_database_urls_never_send_a_password_in_clear(asker: CleartextAsker) -> None:
    urls = _urls(asker.path.parent)
    for name, url in urls.items():
        assert "require_auth=scram-sha-256" in url and f"host={asker.path.parent}" in url, (name, url)
        with pytest.raises(sqlalchemy.exc.OperationalError, match=r"cleartext|password"):
            _connect(url)
    got = asker.answers(len(urls))
    assert len(got) == len(urls) and all(b"the-secret-password" not in answer for answer in got), got


def test_without_require_auth_a_client_would_send_it(asker: CleartextAsker) -> None:
    """The stand-in works: the same URL without require_auth hands the password over."""
    url = _urls(asker.path.parent)["hub"].replace("&require_auth=scram-sha-256", "")
    with pytest.raises(sqlalchemy.exc.OperationalError):
        _connect(url)
    assert b"the-secret-password" in b"".join(asker.answers(1)), asker.received


def test_an_external_server_is_not_held_to_scram(tmp_path: Path) -> None:
    """An operator's own Postgres may use other methods: no require_auth is imposed on it. The bundled one is."""
    addr = plan.compose_addresses(make_config(tmp_path, containers=EXTERNAL))
    assert addr.postgres_auth == ""
    assert "require_auth" not in plan.hub_state(addr)["db_url"]
    bundled = plan.hub_state(plan.compose_addresses(make_config(tmp_path)))["db_url"]
    assert bundled.endswith("@postgres:5432/jupyterhub?require_auth=scram-sha-256"), bundled


def test_the_control_planes_connection_insists_on_scram(asker: CleartextAsker) -> None:
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host=str(asker.path.parent), port=15432, user="cubelab", password="the-secret-password",
                         dbname="postgres", require_auth=plan.POSTGRES_AUTH, connect_timeout=3)  # fmt: skip
    got = asker.answers(1)
    assert len(got) == 1 and b"the-secret-password" not in got[0], got
