"""images/platform-tests, built with podman: it runs platform_tests/ unchanged against a deployment (here the
embedded stack), as under compose and `helm test`."""

from __future__ import annotations

import re
from pathlib import Path

import podman_images as containers  # deploy/tests/podman_images.py

from cubelab.backends.local.stack import LocalBackend

ROOT = Path(__file__).resolve().parents[3]


def test_platform_tests_image_runs_the_suite_against_a_deployment(podman_api: str, stack: LocalBackend) -> None:
    """The platform-tests image writes the deployment description from its environment (as under compose and
    `helm test`) and runs platform_tests/ unchanged; here against the embedded stack, through the hub."""
    from testcontainers.core.container import DockerContainer

    from cubelab.provision import TeamSecrets, user_password_var

    image = containers.build("platform-tests")
    description = stack.description()
    env = {
        "CUBELAB_BACKEND": "local-from-container",
        "CUBELAB_TEAMS": " ".join(t["name"] for t in description["teams"]),
        "CUBELAB_BUCKET_PREFIX": stack.config.storage.bucket_prefix,
        "S3_ENDPOINT": description["s3_endpoint"],
        "CUBELAB_HUB_URL": description["hub_url"],
        "CUBELAB_HUB_API_URL": description["hub_api_url"],
        "CUBELAB_ADMIN_TOKEN": description["hub_admin_token"],
        "CUBELAB_ADMINS": " ".join(stack.config.admins),
        "CUBELAB_USERS": " ".join(u.name for u in stack.config.users),
    }
    for team in description["teams"]:
        names = TeamSecrets(team["name"])
        env |= {names.s3_access_key: team["s3"]["access_key"], names.s3_secret_key: team["s3"]["secret_key"],
                names.members: " ".join(team["members"]),
                names.tracking_uri: f"{description['hub_url']}/services/mlflow-{team['name']}"}  # fmt: skip
    for user in description["users"]:
        if "initial_password" in user:
            env[user_password_var(user["name"])] = user["initial_password"]
    suite = "platform_tests/test_tracking.py platform_tests/test_storage.py platform_tests/test_access.py"
    command = (f"bash -c 'python3 -m cubelab.provision describe /tmp/d.json && "
               f"CUBELAB_DEPLOYMENT=/tmp/d.json pytest -p no:cacheprovider -q {suite}'")  # fmt: skip
    container = DockerContainer(image).with_kwargs(network_mode="host").with_command(command)
    for key, value in env.items():
        container = container.with_env(key, value)
    with container:
        result = container.get_wrapped_container().wait(timeout=600)
        out, err = container.get_logs()
        log = (out + err).decode()
    assert result["StatusCode"] == 0, log[-4000:]
    assert re.search(r"\d+ passed", log) and " failed" not in log, log[-2000:]
