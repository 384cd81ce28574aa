"""The embedded stack's listening sockets, held by one root process from `up` to `down` (issue 25).

A port is only as safe as the moment nobody listens on it: while a service restarts, any local account could
bind its port and collect what clients send there (passwords, tokens, form posts). So no service of the stack
binds its own public port. The holder (`python -m cubelab.hold RUN_DIR`, the stack's first process, named
`sockets`) binds each port once and keeps it until `down`, across every restart, failed ones too. Each port is
one of two kinds:

- handed over: a service that can serve an inherited socket (uvicorn: the tracking servers, the gateway's
  front) gets the holder's own listening socket when it starts (socket activation, as systemd does it). While
  the service is down the socket stays bound, and connections wait in its backlog for the next start.
- relayed: a service that cannot (JupyterHub, its proxy, SeaweedFS) listens on a unix socket in a folder of its
  own that no other account may write to, or (dask-gateway's Go proxy, run as root) on a port below
  ip_unprivileged_port_start that only root may bind (`tcp:HOST:PORT`), and the holder relays each connection
  of the port there.

Starting processes ask for a socket over the holder's control socket, `RUN_DIR/sockets.sock` (mode 0600, in the
0700 run folder: root's alone), which answers with the descriptor (SCM_RIGHTS). What it holds is written to
`RUN_DIR/sockets.held`, so a holder that is started again binds the same ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from cubelab.relay import pipe

NAME = "sockets"
CONTROL = "sockets.sock"
TABLE = "sockets.held"  # JSON; not *.json, which are the process records
BACKLOG = 1024  # connections that wait while a handed-over service restarts


class HoldError(Exception):
    """The holder could not bind or relay a port, or could not be reached."""


@dataclass(frozen=True)
class Held:
    host: str
    port: int
    relay_to: str = ""  # a unix socket path or tcp:HOST:PORT: relayed; empty: handed over
    owner: str = ""  # the service it is held for


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HoldError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(BACKLOG)
    return sock


class Holder:
    """The holding process: its control thread binds and hands out; its event loop relays."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.sockets: dict[int, socket.socket] = {}
        self.held: dict[int, Held] = {}
        self.relays: dict[int, asyncio.AbstractServer] = {}
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()

    # -- holding ------------------------------------------------------------------------------------
    def hold(self, want: Held) -> socket.socket:
        with self.lock:
            if (have := self.held.get(want.port)) is not None and have.host != want.host:
                raise HoldError(f"port {want.port} is held for {have.host}, not {want.host}")
            if want.port not in self.sockets:
                self.sockets[want.port] = bind(want.host, want.port)
            before = self.held.get(want.port)
            self.held[want.port] = want
            if before != want:
                self._save()
            sock = self.sockets[want.port]
        if want.relay_to and (before is None or before.relay_to != want.relay_to or want.port not in self.relays):
            asyncio.run_coroutine_threadsafe(self._relay(want), self.loop).result(10)
        return sock

    def release(self, port: int) -> None:
        with self.lock:
            self.held.pop(port, None)
            if (server := self.relays.pop(port, None)) is not None:
                self.loop.call_soon_threadsafe(server.close)
            if (sock := self.sockets.pop(port, None)) is not None:
                sock.close()
            self._save()

    def _save(self) -> None:
        tmp = self.run_dir / f"{TABLE}.tmp"
        tmp.write_text(json.dumps([asdict(h) for h in self.held.values()], indent=1))
        os.replace(tmp, self.run_dir / TABLE)

    def restore(self) -> None:
        """Bind what an earlier holder held (this one was started again): ports bound by a service still
        running from then stay with it."""
        try:
            table = [Held(**h) for h in json.loads((self.run_dir / TABLE).read_text())]
        except (OSError, ValueError, TypeError):
            return
        for held in table:
            try:
                self.hold(held)
            except HoldError as exc:
                print(f"sockets: {exc}", flush=True)

    # -- relaying -----------------------------------------------------------------------------------
    async def _relay(self, held: Held) -> None:
        if (old := self.relays.pop(held.port, None)) is not None:
            old.close()
        target = held.relay_to
        tcp = target.startswith("tcp:")
        host, _, port = target.removeprefix("tcp:").rpartition(":")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                connecting = asyncio.open_connection(host, int(port)) if tcp else asyncio.open_unix_connection(target)
                up_reader, up_writer = await asyncio.wait_for(connecting, 10)
            except (OSError, TimeoutError):
                writer.transport.abort()  # the service is down: the client sees a reset, nothing else
                return
            to_service = asyncio.create_task(pipe(reader, up_writer))  # a client's half-close is passed on
            try:
                # Once the service has finished (or died), so has the connection: the client sees it closed at
                # once, as if it had been connected to the service itself, whatever it is still sending.
                await pipe(up_reader, writer)
            finally:
                to_service.cancel()
                for w in (up_writer, writer):
                    w.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await w.wait_closed()

        # A duplicate: the relay server may close its copy without giving the port up.
        self.relays[held.port] = await asyncio.start_server(handle, sock=self.sockets[held.port].dup(), backlog=BACKLOG)

    # -- the control socket -------------------------------------------------------------------------
    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = json.loads(conn.makefile("r").readline())
                if request.get("op") == "ping":
                    conn.sendall(b'{"ok": true}\n')
                    return
                if request.get("op") == "release":
                    self.release(int(request["port"]))
                    conn.sendall(b'{"ok": true}\n')
                    return
                want = Held(str(request["host"]), int(request["port"]), str(request.get("relay_to", "")),
                            str(request.get("owner", "")))  # fmt: skip
                sock = self.hold(want)
                socket.send_fds(conn, [b'{"ok": true}\n'], [sock.fileno()])
            except (HoldError, ValueError, KeyError, TypeError, TimeoutError) as exc:
                conn.sendall(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")

    def _control(self, server: socket.socket) -> None:
        while True:
            conn, _ = server.accept()
            self._answer(conn)

    def run(self) -> None:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        path = self.run_dir / CONTROL
        path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        server.listen(64)
        self.restore()
        print(f"sockets: holding {len(self.held)} port(s); control socket {path}", flush=True)
        self._control(server)


# -- the client side: `up` and the supervisor, as they start a service ----------------------------------
def _ask(run_dir: Path, request: dict[str, object], timeout: float = 15.0) -> int | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(run_dir / CONTROL))
            conn.sendall(json.dumps(request).encode() + b"\n")
            data, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        except OSError as exc:
            raise HoldError(f"the stack's socket holder does not answer ({exc}); `cubelab up` starts it") from None
    answer = json.loads(data.decode() or "{}")
    if not answer.get("ok"):
        for fd in fds:
            os.close(fd)
        raise HoldError(str(answer.get("error", "no answer")))
    return fds[0] if fds else None


def hand(run_dir: Path, host: str, port: int, owner: str) -> int:
    """A descriptor of the listening socket the holder keeps on host:port for the service owner (bound on first
    use)."""
    fd = _ask(run_dir, {"op": "hold", "host": host, "port": port, "owner": owner})
    if fd is None:
        raise HoldError(f"the socket holder sent no socket for {host}:{port}")
    return fd


def relay(run_dir: Path, host: str, port: int, to: Path | str, owner: str) -> None:
    """Have the holder keep host:port for the service owner and relay each of its connections to `to`: a unix
    socket, or tcp:HOST:PORT."""
    request = {"op": "hold", "host": host, "port": port, "relay_to": str(to), "owner": owner}
    if (fd := _ask(run_dir, request)) is not None:
        os.close(fd)


def answers(run_dir: Path) -> bool:
    """Whether the holder is up and answers on its control socket."""
    try:
        _ask(run_dir, {"op": "ping"}, timeout=2)
    except (HoldError, ValueError):
        return False
    return True


def release(run_dir: Path, port: int) -> None:
    _ask(run_dir, {"op": "release", "port": port})


def release_all_but(run_dir: Path, keep: set[tuple[str, int]]) -> list[Held]:
    """Give up every held port but those in keep (owner, port): a service's old ports, and ports of services that
    are gone. Returns what was given up."""
    gone = [h for h in held(run_dir) if (h.owner, h.port) not in keep]
    for h in gone:
        release(run_dir, h.port)
    return gone


def held(run_dir: Path) -> list[Held]:
    try:
        return [Held(**h) for h in json.loads((run_dir / TABLE).read_text())]
    except (OSError, ValueError, TypeError):
        return []
