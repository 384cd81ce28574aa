"""images/hub, built with podman and run with testcontainers: it starts from the settings `cubelab render compose`
makes and answers /hub/api/ with the teams registered, and has what the other targets load from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import podman_images as containers  # deploy/tests/podman_images.py
import requests

from cubelab.backends import compose
from cubelab.config import load
from cubelab.procs import free_tcp_port

ROOT = Path(__file__).resolve().parents[3]


def test_hub_image_starts_from_the_compose_settings(podman_api: str, tmp_path: Path) -> None:
    from testcontainers.core.container import DockerContainer

    image = containers.build("hub")
    config = load(ROOT / "cubelab.example.yaml")
    values = {name: make() for name, make in compose.secret_names(config).items()}
    text = re.sub(r"\$\{([A-Z0-9_]+)(?::\?[^}]*)?\}", lambda m: values[m.group(1)],
                  json.dumps(compose.hub_settings(config)))  # fmt: skip
    settings = json.loads(text)
    hub, proxy_api, hub_api = free_tcp_port(), free_tcp_port(), free_tcp_port()
    # Loopback ports and sqlite instead of the compose network's names and Postgres.
    settings |= {"bind_url": f"http://127.0.0.1:{hub}", "proxy_api_url": f"http://127.0.0.1:{proxy_api}",
                 "hub_bind_url": f"http://127.0.0.1:{hub_api}", "hub_connect_url": f"http://127.0.0.1:{hub_api}",
                 "db_url": "sqlite:////tmp/jupyterhub.sqlite", "passwords_file": "/tmp/passwords.json"}  # fmt: skip
    container = DockerContainer(image).with_kwargs(network_mode="host")
    container = container.with_env("CUBELAB_HUB_SETTINGS_JSON", json.dumps(settings))
    with container:
        api = f"http://127.0.0.1:{hub_api}/hub/api"
        info = containers.wait_for(f"{api}/", container)
        assert info.json()["version"] == "6.1.1"
        admin = {"Authorization": f"token {values['CUBELAB_ADMIN_TOKEN']}"}
        groups = requests.get(f"{api}/groups", headers=admin, timeout=10).json()
        assert {g["name"]: sorted(g["users"]) for g in groups} == {"ocean": ["alice", "bob"], "land": ["bob", "carol"]}
        # dave, the platform admin, sees the teams' tracking servers registered as services.
        token = requests.post(f"{api}/users/dave/tokens", headers=admin, json={"expires_in": 300}, timeout=10)
        dave = {"Authorization": f"token {token.json()['token']}"}
        services = requests.get(f"{api}/services", headers=dave, timeout=10).json()
        assert services["mlflow-ocean"]["info"] == {"team": "ocean", "kind": "mlflow"}
        assert {"mlflow-ocean", "mlflow-land"} <= set(services)
        assert requests.get(f"{api}/users", timeout=10).status_code == 403  # nothing without a token
        # What the other deployment targets load from this image: DockerSpawner, KubeSpawner and the curl
        # client zero-to-jupyterhub's config switches to, the OIDC authenticator, cubelab's z2jh hook, and the
        # dask-gateway chart's backend with the teams' per-user limits.
        imports = ("import dockerspawner, kubespawner, pycurl, oauthenticator.generic, cubelab.hub.kubernetes, "
                   "cubelab.gateway.kubernetes")  # fmt: skip
        done = container.exec(["python3", "-c", imports])
        assert done.exit_code == 0, done.output.decode()
