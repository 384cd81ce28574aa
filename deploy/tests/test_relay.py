"""The compose deployment's one-port relay (cubelab.relay) with real sockets on the loopback interface. The
name's lookup is the one thing replaced: a table the test changes, standing for aardvark-dns when the store
restarts with a new address, or a lookup that hangs, as aardvark-dns's do while it reloads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cubelab import relay


class TableRelay(relay.Relay):
    """A relay whose lookup of the target's name reads `table` (and waits `delay` seconds first)."""

    def __init__(self, table: list[relay.Address]) -> None:
        super().__init__("s3-store", 8333)
        self.table, self.delay = table, 0.0

    async def _lookup(self) -> list[relay.Address]:
        self.lookups += 1
        await asyncio.sleep(self.delay)
        return list(self.table)


async def _echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers with what it was sent, upper-cased, after the client's half-close."""
    data = await reader.read()
    writer.write(data.upper())
    await writer.drain()
    writer.close()


async def _server(handler: Callable[..., Awaitable[None]]) -> tuple[asyncio.Server, relay.Address]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, ("127.0.0.1", server.sockets[0].getsockname()[1])


async def _through(front: relay.Address, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*front)
    writer.write(payload)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def _run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(test())


def test_bytes_pass_both_ways_and_the_address_is_looked_up_once() -> None:
    async def test() -> None:
        store, address = await _server(_echo_upper)
        relayed = TableRelay([address])
        front, front_address = await _server(relayed.handle)
        async with store, front:
            answers = [await _through(front_address, b"x" * 300_000 + bytes([i])) for i in range(3)]
        assert answers == [b"X" * 300_000 + bytes([i]).upper() for i in range(3)]
        assert relayed.connections == 3
        assert relayed.lookups == 1  # the address that answered is remembered

    _run(test)


def test_a_slow_lookup_does_not_delay_connections_to_the_remembered_address() -> None:
    async def test() -> None:
        store, address = await _server(_echo_upper)
        relayed = TableRelay([address])
        front, front_address = await _server(relayed.handle)
        async with store, front:
            assert await _through(front_address, b"first") == b"FIRST"
            relayed.delay = 30.0  # every lookup from now on hangs (aardvark-dns reloading)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await _through(front_address, b"second") == b"SECOND"
            assert loop.time() - started < 1.0

    _run(test)


def test_a_store_that_moved_is_found_at_its_new_address() -> None:
    async def test() -> None:
        old, old_address = await _server(_echo_upper)
        table = [old_address]
        relayed = TableRelay(table)
        front, front_address = await _server(relayed.handle)
        async with front:
            assert await _through(front_address, b"before") == b"BEFORE"
            old.close()
            await old.wait_closed()
            new, new_address = await _server(_echo_upper)
            table[:] = [new_address]  # the restarted store's name resolves to its new address
            async with new:
                assert await _through(front_address, b"after") == b"AFTER"
        assert relayed.known == [new_address]
        assert relayed.lookups == 2

    _run(test)


def test_an_unreachable_store_gives_up_after_the_timeout_and_hangs_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(relay, "CONNECT_TIMEOUT", 1.0)

    async def test() -> None:
        gone, gone_address = await _server(_echo_upper)
        gone.close()
        await gone.wait_closed()
        relayed = TableRelay([gone_address])
        front, front_address = await _server(relayed.handle)
        async with front:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await _through(front_address, b"anyone?") == b""
            assert 0.9 < loop.time() - started < 5.0
        assert relayed.lookups > 1  # looked up again, round after round, until the deadline
        assert relayed.connections == 0

    _run(test)
    assert "cannot reach s3-store:8333: ConnectionRefusedError" in capsys.readouterr().err


def test_endpoints_are_checked() -> None:
    assert relay._endpoint("s3-store:8333") == ("s3-store", 8333)
    for bad in ("s3-store", ":8333", "s3-store:0", "s3-store:http"):
        with pytest.raises(Exception, match="is not HOST:PORT"):
            relay._endpoint(bad)
