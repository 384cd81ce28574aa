"""A scheduler preload (`dask scheduler --preload THIS_FILE`) run in the cluster's own environment: the scheduler
serves no HTTP at all unless its dashboard listens on loopback at the port cubelab's gateway backend chose for it.

dask moves a dashboard whose port is taken to a random one on its own; only the chosen ports are closed to
everyone but the platform, so a dashboard anywhere else would be open to every local account. The scheduler
itself goes on (an account that took the port must not stop the member's cluster): without a dashboard.
Standard library only: the cluster's environment has no cubelab."""

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
    server.stop()
    logging.getLogger("distributed.scheduler").warning(
        "the dashboard listens on %s, not on 127.0.0.1:%s as cubelab's gateway chose: the scheduler serves no "
        "dashboard rather than one outside the closed ports", sorted(bound), expected or "?")  # fmt: skip
