"""TensorBoard as a jupyter-server-proxy server: /user/NAME/tensorboard/ in the user's own server.

It reads $TENSORBOARD_LOGDIR: the team's s3://BUCKET/tensorboard/ in a team session (TensorBoard reads S3
with boto3 and the session's team-scoped keys, S3_ENDPOINT naming the endpoint), else ~/tensorboard.
"""

from __future__ import annotations

import os
from typing import Any


def server_proxy() -> dict[str, Any]:
    logdir = os.environ.get("TENSORBOARD_LOGDIR") or os.path.expanduser("~/tensorboard")
    command = [
        "tensorboard", "--logdir", logdir, "--port", "{port}", "--host", "127.0.0.1",
        "--path_prefix", "{base_url}tensorboard", "--reload_interval", "5",
    ]  # fmt: skip
    return {
        "command": command,
        "timeout": 60,
        "absolute_url": True,
        "launcher_entry": {"title": "TensorBoard", "enabled": True},
    }
