"""A scheduler preload (`dask scheduler --preload THIS_FILE`) run in the cluster's own environment: the scheduler
stops unless its dashboard listens on loopback at the port cubelab's gateway backend chose for it.

dask moves a dashboard whose port is taken to a random one on its own; only the chosen ports are closed to
everyone but the platform, so a dashboard anywhere else would be open to every local account. Standard library
only: the cluster's environment has no cubelab."""

from __future__ import annotations

import logging
import os
from typing import Any

PORT_VAR = "CUBELAB_DASHBOARD_PORT"


def dask_setup(scheduler: Any) -> None:
    expected = os.environ.get(PORT_VAR, "")
    server = scheduler.http_server
    sockets = list(getattr(server, "_sockets", {}).values())
    bound = {sock.getsockname()[:2] for sock in sockets}
    if expected.isdigit() and bound == {("127.0.0.1", int(expected))}:
        return
    # dask only logs an exception raised here and serves on: stop serving, and stop the process.
    server.stop()
    logging.getLogger("distributed.scheduler").error(
        "the dashboard listens on %s, not on 127.0.0.1:%s as cubelab's gateway chose: the scheduler stops rather "
        "than serve a dashboard outside the closed ports", sorted(bound), expected or "?")  # fmt: skip
    logging.shutdown()
    os._exit(3)
