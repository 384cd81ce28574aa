"""The three targets are renderings of one plan (cubelab.plan): rendered from a matrix of platform configs (local
and OIDC login, bundled and external Postgres and S3, GPU teams, subdomain mode, one and many teams), the
embedded stack's settings, the compose file and the Helm values agree wherever they must: the same variables
in every team's user environment and tracking environment, the same hub services, roles and groups, and
every secret they refer to has a source. Rendering only; nothing is started."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cubelab import plan, urls
from cubelab.backends import compose, kubernetes
from cubelab.backends.local.stack import LocalBackend
from cubelab.config import PlatformConfig, load

ROOT = Path(__file__).resolve().parents[2]
OIDC = {"type": "oidc", "client_id": "cubelab", "client_secret_file": "oidc-secret",
        "authorize_url": "https://idp.example.org/auth", "token_url": "https://idp.example.org/token",
        "userdata_url": "https://idp.example.org/userinfo"}  # fmt: skip
EXTERNAL = {"postgres": {"host": "db.example.org", "port": 6432}, "s3": {"endpoint": "https://s3.example.org"}}
USERS = [{"name": "alice"}, {"name": "bob"}, {"name": "carol", "admin": True}]
ONE_TEAM = [{"name": "ocean", "members": ["alice", "bob"]}]
MANY_TEAMS = [*ONE_TEAM, {"name": "land", "members": ["bob", "carol"]}, {"name": "sea-ice", "members": ["carol"],
                                                                          "gpu": True}]  # fmt: skip
MATRIX = {
    "local-bundled-one": {"teams": ONE_TEAM},
    "local-bundled-many-gpu": {"teams": MANY_TEAMS},
    "oidc-bundled-many": {"teams": MANY_TEAMS, "hub": {"auth": OIDC}},
    "local-external-many": {"teams": MANY_TEAMS, "containers": EXTERNAL},
    "oidc-external-subdomains": {"teams": MANY_TEAMS, "hub": {"auth": OIDC, "subdomains": True},
                                 "containers": EXTERNAL | {"public_url": "https://hub.example.org"}},
    "local-subdomains-one": {"teams": ONE_TEAM, "hub": {"subdomains": True},
                             "containers": {"public_url": "https://hub.example.org"}},
}  # fmt: skip
REF = re.compile(r"\$\(([A-Z][A-Z0-9_]*)\)")


def make_config(tmp_path: Path, case: dict[str, Any]) -> PlatformConfig:
    data = {"state_dir": str(tmp_path / "state"), "users": USERS, **json.loads(json.dumps(case))}
    if data.get("hub", {}).get("auth", {}).get("type") == "oidc":
        for team in data["teams"]:
            team.pop("members", None)
    (tmp_path / "cubelab.yaml").write_text(yaml.safe_dump(data))
    return load(tmp_path / "cubelab.yaml")


def targets(config: PlatformConfig, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Per target: hub settings (secrets as the target writes them), and each team's tracking environment."""
    backend = LocalBackend(config)
    backend.paths.create()
    venv = tmp_path / "venv"
    local = backend.hub.settings(venv, tmp_path / "proxy")
    local_tracking = {t.name: backend.tracking.launch(t, venv).env for t in config.teams}
    doc = compose.render_compose(config)
    values = kubernetes.render_values(config, "lab")
    helm_settings = json.loads(values["jupyterhub"]["hub"]["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"])
    helm_settings["load_roles"] = [{"name": k, **v} for k, v in values["jupyterhub"]["hub"]["loadRoles"].items()]
    return {
        "local": {"settings": local, "tracking": local_tracking},
        "compose": {
            "settings": json.loads(doc["services"]["hub"]["environment"]["CUBELAB_HUB_SETTINGS_JSON"]),
            "tracking": {t.name: doc["services"][f"tracking-{t.name}"]["environment"] for t in config.teams},
        },
        "helm": {
            "settings": helm_settings,
            "tracking": {t["name"]: {e["name"]: e.get("value", "") for e in t["trackingEnv"]} for t in values["teams"]},
        },
    }


@pytest.mark.parametrize("case", list(MATRIX.values()), ids=list(MATRIX))
def test_the_three_targets_agree(tmp_path: Path, case: dict[str, Any]) -> None:
    config = make_config(tmp_path, case)
    rendered = targets(config, tmp_path)
    names = [t.name for t in config.teams]
    for target, out in rendered.items():
        settings = out["settings"]
        # The same teams, each with the plan's user environment (same variables, same non-address values).
        assert sorted(settings["team_env"]) == sorted(names), target
        for team in config.teams:
            env = settings["team_env"][team.name]
            assert sorted(env) == sorted(plan.user_env(config, team, plan.compose_addresses(config))), target
            assert env["S3_USER_STORAGE_BUCKET"] == config.bucket(team)
            assert env["CUBELAB_ARTIFACT_ROOT"] == f"s3://{config.bucket(team)}/{config.storage.artifact_prefix}"
            # Users' kernels and the tracking server use one S3 endpoint and one identity.
            tracking = out["tracking"][team.name]
            assert env["AWS_ENDPOINT_URL_S3"] == tracking["MLFLOW_S3_ENDPOINT_URL"], target
            assert env["AWS_ACCESS_KEY_ID"] == tracking["AWS_ACCESS_KEY_ID"], target
            assert tracking["CUBELAB_ARTIFACTS_DESTINATION"] == env["CUBELAB_ARTIFACT_ROOT"]
            # The hub registers the server at the address users reach it by.
            service = next(s for s in settings["services"] if s["name"] == team.service)
            assert env["MLFLOW_TRACKING_URI"] == service["url"] + f"/services/{team.service}", target
            # Its OAuth callback is where the server says its UI is.
            redirect = urls.oauth_redirect_uri(tracking["CUBELAB_SERVICE_URL"], tracking["CUBELAB_HUB_PUBLIC_URL"])
            assert service["oauth_redirect_uri"] == redirect, target
        # The same groups, roles (the culler's aside: z2jh culls by itself) and services.
        assert settings["groups"] == rendered["local"]["settings"]["groups"], target
        assert ({r["name"] for r in settings["load_roles"]} - {"idle-culler"}
                == {r["name"] for r in rendered["local"]["settings"]["load_roles"]} - {"idle-culler"})  # fmt: skip
        team_services = sorted(s["name"] for s in settings["services"] if s.get("info", {}).get("kind") == "mlflow")
        assert team_services == sorted(t.service for t in config.teams)
        assert settings["authenticator_class"] == rendered["local"]["settings"]["authenticator_class"]
        assert settings["subdomain_host"] == (config.containers.public_url if config.hub.subdomains and
                                              target != "local" else settings["subdomain_host"])  # fmt: skip
    # The same tracking-server variables everywhere (the embedded stack adds only its process environment).
    process_only = {"PATH", "HOME", "LANG", "MALLOC_ARENA_MAX", "PYTHONDONTWRITEBYTECODE", "CUBELAB_STACK"}
    for team in names:
        local = set(rendered["local"]["tracking"][team]) - process_only
        assert local == set(rendered["compose"]["tracking"][team])
        helm = {n for n in rendered["helm"]["tracking"][team] if not n.startswith("TEAM_")} - {"HOME"}
        assert helm == local


@pytest.mark.parametrize("case", list(MATRIX.values()), ids=list(MATRIX))
def test_every_secret_reference_has_a_source(tmp_path: Path, case: dict[str, Any]) -> None:
    """The embedded stack resolves every reference (none is left), compose's .env (or the operator, for an
    external service) holds every variable the file names, and Helm takes each from a Secret."""
    config = make_config(tmp_path, case)
    rendered = targets(config, tmp_path)
    assert not REF.findall(json.dumps(rendered["local"]))
    doc = compose.render_compose(config)
    named = set(re.findall(r"\$\{([A-Z0-9_]+)", json.dumps(doc))) - {"CUBELAB_HTTP_PORT"}
    external = {n for s in compose._external(config) for n in compose.EXTERNAL_VARS[s]}
    assert named == set(compose.secret_names(config)) | external
    values = kubernetes.render_values(config, "lab")
    sources = kubernetes.secret_sources(config, "lab")
    for env in [t["trackingEnv"] for t in values["teams"]] + list(values["env"].values()):
        defined = set()
        for entry in env:  # kubelet expands only variables defined earlier in the list
            assert set(REF.findall(entry.get("value", ""))) <= defined, entry
            defined.add(entry["name"])
            if "valueFrom" in entry:
                ref = entry["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == sources[entry["name"]]
    hub = values["jupyterhub"]["hub"]
    assert set(REF.findall(hub["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"])) <= set(hub["extraEnv"])


def test_external_services_replace_the_bundled_ones(tmp_path: Path) -> None:
    """An external Postgres and S3: no bundled service in compose, every address (tracking, users, provisioning)
    is the external one, and the operator is asked for the admin credentials instead of getting generated ones."""
    config = make_config(tmp_path, MATRIX["local-external-many"])
    doc = compose.render_compose(config)
    assert not {"postgres", "s3", "s3-store", "s3-identities"} & set(doc["services"])
    init = doc["services"]["provision"]["environment"]
    assert (init["POSTGRES_HOST"], init["POSTGRES_PORT"], init["S3_ENDPOINT"]) == (
        "db.example.org", "6432", "https://s3.example.org")  # fmt: skip
    assert "set POSTGRES_PASSWORD in .env" in init["POSTGRES_PASSWORD"]
    assert "POSTGRES_PASSWORD" not in compose.secret_names(config)
    tracking = doc["services"]["tracking-land"]["environment"]
    assert "@db.example.org:6432/mlflow_land" in tracking["CUBELAB_BACKEND_STORE_URI"]
    values = kubernetes.render_values(config, "lab")
    assert values["postgres"]["bundled"] is False and values["s3"]["bundled"] is False
    settings = json.loads(values["jupyterhub"]["hub"]["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"])
    assert {env["S3_ENDPOINT"] for env in settings["team_env"].values()} == {"https://s3.example.org"}


@pytest.mark.parametrize("case", list(MATRIX.values()), ids=list(MATRIX))
def test_every_target_runs_the_plans_services(tmp_path: Path, case: dict[str, Any]) -> None:
    """Each service of the plan runs with the plan's command, port, health check and order in every target."""
    config = make_config(tmp_path, case)
    backend = LocalBackend(config)
    backend.paths.create()
    venv = tmp_path / "venv"
    doc = compose.render_compose(config)["services"]
    values = kubernetes.render_values(config, "lab")
    helm_teams = {t["name"]: t for t in values["teams"]}
    addr = plan.compose_addresses(config)
    bundled_s3 = config.containers.s3 is None
    jobs = [plan.provision_service(config, addr, passwords_file=None)]
    jobs += [plan.s3_identities_service(config, addr)] if bundled_s3 else []
    for job in jobs:
        assert doc[job.name]["command"] == list(job.command) and doc[job.name]["restart"] == "no"
        assert values["commands"][{"provision": "provision", "s3-identities": "s3Identities"}[job.name]] == list(
            job.command
        )
    assert ("s3-identities" in doc) == bundled_s3
    for team in config.teams:
        server = plan.tracking_service(config, team, addr)
        # compose: the plan's command, its health path on its port, after the provisioning job.
        ran = doc[server.name]
        assert ran["command"] == list(server.command)
        assert f"http://127.0.0.1:{server.port}{server.health}" in " ".join(ran["healthcheck"]["test"])
        assert ran["depends_on"] == {"provision": {"condition": "service_completed_successfully"}}
        # Helm: the same command and probe path, on the chart's tracking port.
        assert helm_teams[team.name]["command"] == list(server.command)
        assert helm_teams[team.name]["healthPath"] == server.health and values["trackingPort"] == server.port
        # embedded: the same program on the services venv's Python, its health path on the team's own port.
        launch = backend.tracking.launch(team, venv)
        local = plan.tracking_service(config, team, backend.tracking.addresses())
        assert launch.argv == [str(venv / "bin/python"), *server.command[1:]]
        assert local.health == server.health and list(launch.handed) == [local.port]
        assert launch.env["CUBELAB_PORT"] == str(local.port)
