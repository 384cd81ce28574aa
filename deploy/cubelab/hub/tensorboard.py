"""TensorBoard as a jupyter-server-proxy server: /user/NAME/tensorboard/ in the user's own server.

In a team session it reads the team's s3://BUCKET/tensorboard/ ($CUBELAB_TENSORBOARD_SHARED), where every
member's runs are copied from their $TENSORBOARD_LOGDIR (cubelab.hub.tbsync), as USER/RUN; TensorBoard reads S3
with boto3 and the session's team-scoped keys, S3_ENDPOINT naming the endpoint. Outside a team session it reads
$TENSORBOARD_LOGDIR, a folder in the home.
"""

from __future__ import annotations

import os
from typing import Any

from cubelab.hub.tbsync import SHARED, local_logdir


def server_proxy() -> dict[str, Any]:
    logdir = os.environ.get(SHARED) or str(local_logdir(os.environ))
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
