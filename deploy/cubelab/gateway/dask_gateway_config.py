"""dask-gateway-server's config in every target: the rendered settings mapped to traits by cubelab.gateway.configure."""

# ruff: noqa: F821 - `c` is provided by dask-gateway-server when it loads this file
import json
import os
from pathlib import Path

from cubelab.gateway.configure import apply

# A file (the embedded stack), or the settings themselves in a variable (docker compose, which fills the secrets in).
text = os.environ.get("CUBELAB_GATEWAY_SETTINGS_JSON") or Path(os.environ["CUBELAB_GATEWAY_SETTINGS"]).read_text()
apply(get_config(), json.loads(text))
