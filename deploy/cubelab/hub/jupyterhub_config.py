"""JupyterHub config of cubelab's own hubs (embedded, compose): the rendered settings (cubelab.plan) mapped to
traits by cubelab.hub.configure, the same code zero-to-jupyterhub's hub runs (cubelab.hub.kubernetes)."""

# ruff: noqa: F821 - `get_config` is provided by JupyterHub when it loads this file
import json
import os
from pathlib import Path

from cubelab.hub.configure import apply

# A file (embedded stack) or the JSON itself (the compose file passes it in the environment).
if "CUBELAB_HUB_SETTINGS_JSON" in os.environ:
    settings = json.loads(os.environ["CUBELAB_HUB_SETTINGS_JSON"])
else:
    settings = json.loads(Path(os.environ["CUBELAB_HUB_SETTINGS"]).read_text())
apply(get_config(), settings)
