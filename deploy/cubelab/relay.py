"""A one-port TCP relay: `python -m cubelab.relay LISTEN_PORT HOST:PORT`.

The compose deployment's `s3` service. SeaweedFS runs on a network that users' containers are not on, and this
relay, which is on both, forwards one port, the S3 API, to it. Whatever else SeaweedFS listens on (its master,
volume, filer and admin servers, every gRPC port, servers a later release adds) is unreachable from users'
containers by construction, not by a list of ports to close.

The relay remembers the address it last reached and resolves the name again only when that address fails (the
store restarted with a new one). Not resolving per connection is deliberate: podman 4.3's aardvark-dns 1.4 drops
queries while it reloads, which it does whenever any container starts or stops, so a lookup then takes 5 s (the
resolver's retry) and, twice in a row, more than a connection may wait (docs/compose.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys

CHUNK = 1 << 18
CONNECT_TIMEOUT = 10.0  # for a connection to the target, lookups included
TRY_TIMEOUT = 2.0  # for one address (a store that moved leaves its old address unanswered on the bridge)
RETRY_PAUSE = 0.2  # between rounds of lookup and tries, while the target is down


def _log(message: str) -> None:
    print(f"cubelab relay: {message}", file=sys.stderr, flush=True)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on (HTTP clients may shut their side after a request)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


Address = tuple[str, int]


class Relay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.connections = 0
        self.known: list[Address] = []  # the address last reached: tried first, before any lookup
        self.lookups = 0

    async def _lookup(self) -> list[Address]:
        self.lookups += 1
        infos = await asyncio.get_running_loop().getaddrinfo(*self.target, type=socket.SOCK_STREAM)
        return list(dict.fromkeys((str(info[4][0]), int(info[4][1])) for info in infos))

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams to the target: the remembered address first, then the name's addresses, looked up again each
        round until one answers or CONNECT_TIMEOUT has passed (then the last error is raised)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT
        candidates, last = list(self.known), OSError(f"no answer from {self.target[0]}:{self.target[1]}")
        while (left := deadline - loop.time()) > 0:
            if not candidates:
                try:
                    candidates = await asyncio.wait_for(self._lookup(), left)
                except (TimeoutError, OSError) as exc:  # the name is gone while the store restarts
                    last = exc
            for address in candidates:
                try:
                    streams = await asyncio.wait_for(
                        asyncio.open_connection(*address), max(min(TRY_TIMEOUT, deadline - loop.time()), 0.01)
                    )
                except (TimeoutError, OSError) as exc:
                    last = exc
                    continue
                self.known = [address]
                return streams
            candidates = []
            await asyncio.sleep(min(RETRY_PAUSE, max(deadline - loop.time(), 0)))
        raise last

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self.connect()
        except (TimeoutError, OSError) as exc:
            _log(f"cannot reach {self.target[0]}:{self.target[1]}: {type(exc).__name__} {exc}".rstrip())
            client_writer.transport.abort()
            return
        self.connections += 1
        try:
            await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))
        finally:
            for writer in (up_writer, client_writer):
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()


async def serve(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    relay = Relay(target_host, target_port)
    server = await asyncio.start_server(relay.handle, listen_host, listen_port, reuse_address=True)
    _log(f"{listen_host}:{listen_port} -> {target_host}:{target_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cubelab.relay", description=__doc__.splitlines()[0])
    parser.add_argument("listen", type=int, help="port to listen on")
    parser.add_argument("target", type=_endpoint, help="HOST:PORT to forward every connection to")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")  # noqa: S104
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.listen, *args.target))


if __name__ == "__main__":
    main()
