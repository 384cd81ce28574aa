"""The hub's settings rendered from the platform config, read by the real jupyterhub_config.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from scratch import ScratchStacks, use_shared_installs  # deploy/tests/scratch.py

from cubelab.backends.local.stack import LocalBackend
from cubelab.config import load
from cubelab.hub import render
from cubelab.install import hub_env

HUB_CONFIG = Path(__file__).resolve().parents[1] / "cubelab" / "hub" / "jupyterhub_config.py"

TRAITS_JSON = """print(json.dumps({
    "authenticator": c.JupyterHub.authenticator_class,
    "groups": c.JupyterHub.load_groups,
    "roles": c.JupyterHub.load_roles,
    "services": [s["name"] for s in c.JupyterHub.services],
    "admins": sorted(c.Authenticator.admin_users),
    "oauth": {k: v for k, v in c.GenericOAuthenticator.items()} if "GenericOAuthenticator" in c else {},
    "cleanup_servers": c.JupyterHub.cleanup_servers,
}, default=str))
"""
READ_TRAITS = f"""
import json, os
from traitlets.config import Config
c = Config()
exec(open({str(HUB_CONFIG)!r}).read(), {{"get_config": lambda: c}})
{TRAITS_JSON}"""
# What zero-to-jupyterhub's jupyterhub_config.py has set when it runs cubelab's hook (hub.extraConfig):
# KubeSpawner's profiles, hub.loadRoles as load_roles, a service of its own; then the hook, as in the hub pod.
Z2JH_HOOK = f"""
import json, os
from traitlets.config import Config
c = Config()
values = json.loads(os.environ["Z2JH_VALUES"])
c.KubeSpawner.profile_list = values["singleuser"]["profileList"]
c.JupyterHub.load_roles = [dict(role, name=name) for name, role in values["hub"]["loadRoles"].items()]
c.JupyterHub.services = [{{"name": "z2jh-own"}}]
c.JupyterHub.authenticator_class = values["hub"]["config"]["JupyterHub"]["authenticator_class"]
from cubelab.hub.kubernetes import configure
configure(c)
{TRAITS_JSON}"""


@pytest.fixture(scope="module")
def hub_python() -> str:
    """The hub environment's Python (installed if missing), where jupyterhub and traitlets are."""
    use_shared_installs()
    return str(hub_env(Path(os.environ["CUBELAB_INSTALL_DIR"]), print) / "bin/python")


def rendered_traits(backend: LocalBackend, hub_python: str, tmp_path: Path) -> dict:
    settings = backend.hub.settings(Path("/venv"), Path("/proxy"))
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    out = subprocess.run([hub_python, "-c", READ_TRAITS], env={"CUBELAB_HUB_SETTINGS": str(path)},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)


def test_local_accounts_teams_and_services(hub_python: str, tmp_path: Path) -> None:
    stacks = ScratchStacks()
    try:
        backend = stacks.backend(stacks.config())
        traits = rendered_traits(backend, hub_python, tmp_path)
    finally:
        stacks.close()
    assert traits["authenticator"] == "cubelab.hub.auth.LocalPasswordAuthenticator"
    assert traits["groups"] == {"ocean": {"users": ["alice", "bob"]}, "land": {"users": ["bob", "carol"]}}
    assert {"mlflow-ocean", "mlflow-land", render.ADMIN_SERVICE, "idle-culler"} <= set(traits["services"])
    team_roles = {r["name"]: r for r in traits["roles"] if r["name"].startswith("team-")}
    assert team_roles["team-ocean"]["scopes"] == ["access:services!service=mlflow-ocean"]
    assert team_roles["team-ocean"]["groups"] == ["ocean"]
    assert traits["cleanup_servers"] is False


def test_zero_to_jupyterhubs_hub_runs_the_same_configuration(hub_python: str, tmp_path: Path) -> None:
    """The Helm values' settings, through cubelab's z2jh hook in the hub's Python, give the hub the same groups,
    roles, team services, authenticator, admins and server lifetime as the embedded hub's configuration."""
    from cubelab.backends import kubernetes

    stacks = ScratchStacks()
    try:
        config = load(stacks.config())
        embedded = rendered_traits(stacks.backend(config), hub_python, tmp_path)
    finally:
        stacks.close()
    values = kubernetes.render_values(config)["jupyterhub"]
    env = {"Z2JH_VALUES": json.dumps(values), "CUBELAB_HUB_SETTINGS_JSON": values["hub"]["extraEnv"].pop(
        "CUBELAB_HUB_SETTINGS_JSON")} | {name: f"secret-of-{name}" for name in values["hub"]["extraEnv"]}  # fmt: skip
    out = subprocess.run([hub_python, "-c", Z2JH_HOOK], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    z2jh = json.loads(out.stdout)
    for key in ("authenticator", "groups", "admins", "cleanup_servers"):
        assert z2jh[key] == embedded[key], key
    assert {r["name"] for r in z2jh["roles"]} == {r["name"] for r in embedded["roles"]} - {"idle-culler"}
    # z2jh's own service is kept; the culler is z2jh's (cull.enabled), not cubelab's.
    assert set(z2jh["services"]) == set(embedded["services"]) - {"idle-culler"} | {"z2jh-own"}


def test_oidc_login_maps_the_groups_claim_to_teams(hub_python: str, tmp_path: Path) -> None:
    stacks = ScratchStacks()
    try:
        path = stacks.config()
        (path.parent / "oidc-secret").write_text("s3cret\n")
        doc = yaml.safe_load(path.read_text())
        doc["hub"] = {"auth": {
            "type": "oidc", "client_id": "cubelab", "client_secret_file": "oidc-secret",
            "authorize_url": "https://idp.example/auth", "token_url": "https://idp.example/token",
            "userdata_url": "https://idp.example/userinfo", "groups_claim": "teams",
        }, "public_url": "https://hub.example"}  # fmt: skip
        for team in doc["teams"]:  # with OIDC the provider's groups claim decides membership
            team.pop("members", None)
            team.pop("admins", None)
        path.write_text(yaml.safe_dump(doc))
        backend = stacks.backend(load(path))
        traits = rendered_traits(backend, hub_python, tmp_path)
    finally:
        stacks.close()
    oauth = traits["oauth"]
    assert traits["authenticator"] == "generic-oauth"
    assert traits["groups"] == {}  # the authenticator manages groups (JupyterHub refuses load_groups then)
    assert oauth["client_id"] == "cubelab" and oauth["client_secret"] == "s3cret"
    assert oauth["oauth_callback_url"] == "https://hub.example/hub/oauth_callback"
    assert oauth["manage_groups"] is True
    assert oauth["auth_state_groups_key"] == "oauth_user.teams"
