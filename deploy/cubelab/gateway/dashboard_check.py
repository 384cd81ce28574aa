"""A scheduler preload (`dask scheduler --preload THIS_FILE`) run in the cluster's own environment: the scheduler
serves no HTTP at all unless its dashboard listens on loopback at the port cubelab's gateway backend chose for it.

dask moves a dashboard whose port is taken to a random one on its own; only the chosen ports are closed to
everyone but the platform, so a dashboard anywhere else would be open to every local account. The scheduler
itself goes on (an account that took the port must not stop the member's cluster): without a dashboard.
Standard library only: the cluster's environment has no cubelab."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

PORT_VAR = "CUBELAB_DASHBOARD_PORT"
FD_VAR = "CUBELAB_DASHBOARD_FD"  # the port's listening socket, kept by the embedded stack's socket holder


def adopt(server: Any, fd: int, port: int) -> bool:
    """Serve the dashboard on the inherited listening socket fd (127.0.0.1:port) instead of where dask put it
    (dask could not bind the port, which the holder keeps, and moved it): tornado's own stop, then the socket."""
    sock = socket.socket(fileno=fd)
    if sock.getsockname()[:2] != ("127.0.0.1", port):
        sock.detach()
        return False
    sock.setblocking(False)  # as tornado's own sockets are: its event loop accepts without waiting
    server.stop()
    server._sockets.clear()
    server._stopped = False
    server.add_sockets([sock])
    server.port = port  # what dask-gateway's preload reports as the dashboard's address
    return True


def dask_setup(scheduler: Any) -> None:
    expected = os.environ.get(PORT_VAR, "")
    server = scheduler.http_server
    fd = os.environ.get(FD_VAR, "")
    if fd.isdigit() and expected.isdigit() and adopt(server, int(fd), int(expected)):
        return
    sockets = list(getattr(server, "_sockets", {}).values())
    bound = {sock.getsockname()[:2] for sock in sockets}
    if expected.isdigit() and bound == {("127.0.0.1", int(expected))}:
        return
    server.stop()
    logging.getLogger("distributed.scheduler").warning(
        "the dashboard listens on %s, not on 127.0.0.1:%s as cubelab's gateway chose: the scheduler serves no "
        "dashboard rather than one outside the closed ports", sorted(bound), expected or "?")  # fmt: skip
