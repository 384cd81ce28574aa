"""Reachability probes, run where an attacker would stand (a user's kernel, a container on the users' network)."""

from __future__ import annotations

import json

_REACH = """
import glob, json, socket
results = {}
for endpoint in ENDPOINTS:
    host, port = endpoint.rsplit(":", 1)
    try:
        conn = socket.create_connection((host, int(port)), timeout=3)
    except OSError as exc:
        results[endpoint] = type(exc).__name__
        continue
    with conn:  # connected: reached, whether or not an answer comes in time on a loaded machine
        results[endpoint] = "open"
        try:
            # The filer lists every bucket to anyone who asks; any HTTP answer at all counts as reached.
            conn.sendall(b"GET /buckets/?pretty=y HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            conn.settimeout(15)
            results[endpoint] = "answered" if conn.recv(64) else "hung up"
        except TimeoutError:
            pass
        except OSError:
            results[endpoint] = "hung up"
for path in glob.glob(SOCKETS) if SOCKETS else []:
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(path)
            results[path] = "open"
    except OSError as exc:
        results[path] = type(exc).__name__
print(json.dumps(results))
"""
REACHED = ("open", "answered", "hung up")  # what a probe result says when the target let the prober in


def reach(endpoints: list[str], sockets: str = "") -> str:
    """Python code that connects to each "host:port" (and each unix socket matching the glob sockets) and prints
    JSON {target: "answered" | "open" (no answer in 15 s) | "hung up" (closed
    without answering) | the error's name}."""
    return f"ENDPOINTS = {json.dumps(endpoints)}\nSOCKETS = {sockets!r}\n{_REACH}"
