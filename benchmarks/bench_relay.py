"""Throughput of the compose deployment's S3 relay (cubelab.relay) against a direct connection, on loopback.

    python benchmarks/bench_relay.py [--megabytes 256] [--repeat 5]

A sink server reads everything sent to it and answers with the byte count; the same payload is sent to it
directly and through the relay, alternately, and the medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from cubelab import relay
from cubelab.procs import free_tcp_port


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    while data := await reader.read(1 << 18):
        total += len(data)
    writer.write(str(total).encode())
    await writer.drain()
    writer.close()


async def _send(port: int, payload: bytes, times: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    for _ in range(times):
        writer.write(payload)
        await writer.drain()
    writer.write_eof()
    answer = int(await reader.read())
    elapsed = time.perf_counter() - t0
    writer.close()
    assert answer == len(payload) * times, answer
    return elapsed


async def run(megabytes: int, repeat: int) -> dict[str, float]:
    sink_port, relay_port = free_tcp_port(), free_tcp_port()
    sink = await asyncio.start_server(_sink, "127.0.0.1", sink_port)
    forward = relay.Relay("127.0.0.1", sink_port)
    front = await asyncio.start_server(forward.handle, "127.0.0.1", relay_port)
    payload = b"x" * (1 << 20)
    direct, relayed = [], []
    for _ in range(repeat):
        direct.append(megabytes / await _send(sink_port, payload, megabytes))
        relayed.append(megabytes / await _send(relay_port, payload, megabytes))
    await asyncio.sleep(0.2)  # the last connection's relay task closes its ends
    sink.close()
    front.close()
    d, r = statistics.median(direct), statistics.median(relayed)
    return {"megabytes": megabytes, "repeat": repeat, "direct_mb_s": round(d), "relay_mb_s": round(r),
            "ratio": round(r / d, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = asyncio.run(run(args.megabytes, args.repeat))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
