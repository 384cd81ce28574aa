"""The compose file with OIDC login, run (as test_compose_run.py runs it, with podman-compose): an OpenID provider
(oidc-provider, as in test_oidc.py) in a container on the users' network, the client secret from the file the
platform config names (mounted as a compose secret), users logging in at the provider from a container on that
network, their groups claim making the teams, and each member reaching their team's tracking server and no
other. The hub's public URL is http://hub:8000 here, the name browsers on the users' network reach it by, so
the provider can send them back to the hub's callback."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import compose_project  # deploy/tests/compose_project.py
import podman_images as containers  # deploy/tests/podman_images.py
import pytest
import webflows  # deploy/tests/webflows.py

from cubelab.backends import compose

HUB = "http://hub:8000"
NETWORK = "cubelab-users"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    client_secret = secrets.token_hex(24)

    def with_oidc(config: dict[str, Any], project: Path) -> None:
        (project / "oidc-client-secret").write_text(client_secret + "\n")
        config["hub"] = {"auth": webflows.oidc_auth("oidc-client-secret")}
        for team in config["teams"]:  # the provider's groups claim decides membership
            team.pop("members", None)
            team.pop("admins", None)

    with compose_project.up(tmp_path_factory, with_oidc, public_url=HUB) as project:
        # The users' network exists once the stack is up; the hub asks the provider only at a login. The provider
        # goes before the stack does, so that `down` can remove the network.
        provider = webflows.start_provider(NETWORK, "localhost/cubelab/hub:test", project / "oidc", client_secret,
                                           f"{HUB}/hub/oauth_callback")  # fmt: skip
        try:
            webflows.run_script(NETWORK, "localhost/cubelab/tracking:test", webflows.READY, HUB, "ocean", "land")
            yield project
        finally:
            containers.podman("rm", "-f", "-t", "3", provider, check=False)


def test_oidc_login_makes_teams_and_opens_only_their_servers(deployment: Path) -> None:
    admin = compose.read_env(deployment / ".env")["CUBELAB_ADMIN_TOKEN"]
    webflows.check_logins_and_access(NETWORK, "localhost/cubelab/tracking:test", HUB, admin, passwords={})
