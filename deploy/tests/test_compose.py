"""docker compose output of `cubelab render compose`: valid against the compose specification, healthchecks and
start order, no secret in the file, .env complete and kept, teams from the platform config. No Docker here:
the file is checked statically (schema, references), and the hub settings inside it are read by the real
jupyterhub_config.py in the image tests' hub container (test_images.py)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cubelab import plan, storage
from cubelab.backends import compose
from cubelab.cli import main as cli_main
from cubelab.config import ConfigError, load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "cubelab.example.yaml"
SCHEMA = Path(sys.prefix) / "tools" / "compose-spec.json"
REF = re.compile(r"\$\{([A-Z0-9_]+)(?::\?[^}]*)?\}")


@pytest.fixture(scope="module")
def spec() -> jsonschema.Draft7Validator:
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} is missing: `make test` installs it (python deploy/cubelab/prereqs.py --tools)")
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def rendered(tmp_path: Path, config_text: str | None = None) -> tuple[dict[str, Any], str, dict[str, str]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cubelab.yaml").write_text(config_text if config_text is not None else EXAMPLE.read_text())
    path, env, _ = compose.write(load(tmp_path / "cubelab.yaml"), tmp_path)
    text = path.read_text()
    return yaml.safe_load(text), text, compose.read_env(env)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """What compose does with ${NAME} and ${NAME:?message} (and ${NAME:-default})."""
    if isinstance(value, str):
        value = re.sub(r"\$\{([A-Z0-9_]+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), value)
        return REF.sub(lambda m: env[m.group(1)], value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def test_valid_against_the_compose_specification(spec: jsonschema.Draft7Validator, tmp_path: Path) -> None:
    doc, _, env = rendered(tmp_path)
    errors = [f"{list(e.path)}: {e.message}" for e in spec.iter_errors(interpolate(doc, env))]
    assert not errors, errors


def test_the_validation_catches_a_broken_file(spec: jsonschema.Draft7Validator, tmp_path: Path) -> None:
    doc, _, _ = rendered(tmp_path)
    doc["services"]["hub"]["healthcheck"]["intervall"] = "10s"  # a typo'd key
    doc["services"]["postgres"]["depends_on"] = {"s3": {"condition": "service_ready"}}  # no such condition
    messages = " ".join(e.message for e in spec.iter_errors(doc))
    assert "intervall" in messages and "service_ready" in messages


def test_backup_job_runs_by_hand_with_the_teams_own_keys(tmp_path: Path) -> None:
    doc, _, _ = rendered(tmp_path)
    backup = doc["services"]["backup"]
    assert backup["profiles"] == ["maintenance"] and "depends_on" not in backup  # never started by `up`
    assert backup["entrypoint"] + backup["command"] == [*plan.BACKUP_COMMAND, "backup", "--to", "/backups"]
    assert "backups:/backups" in backup["volumes"] and "backups" in doc["volumes"]
    env = backup["environment"]
    assert {"POSTGRES_PASSWORD", "HUB_DB_PASSWORD", "TEAM_OCEAN_S3_ACCESS_KEY", "CUBELAB_PASSWORDS_FILE"} <= set(env)
    assert not any(name.startswith("S3_ADMIN_") for name in env)


def test_healthchecks_and_start_order(tmp_path: Path) -> None:
    doc, _, _ = rendered(tmp_path)
    services = doc["services"]
    one_shots = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shots == {"s3-identities", "provision", "platform-tests", "backup"}
    for name, service in services.items():
        if name not in one_shots:
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
            # compose's counterpart of the embedded stack's supervisor: a server that exits is started again.
            assert service.get("profiles") or service["restart"] == "unless-stopped", name
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency in one_shots else "service_healthy"
            assert condition == {"condition": wanted}, (name, dependency)
    for team in ("ocean", "land"):
        tracking = services[f"tracking-{team}"]
        assert tracking["depends_on"] == {"provision": {"condition": "service_completed_successfully"}}
        assert f"/services/mlflow-{team}/health" in " ".join(tracking["healthcheck"]["test"])
    assert services["provision"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "s3": {"condition": "service_healthy"},
    }
    # Users' containers join `cubelab-users`, where Postgres is not.
    assert "users" not in services["postgres"]["networks"]
    assert doc["networks"]["users"]["name"] == "cubelab-users"


def test_storage_is_reached_only_through_the_one_port_relay(tmp_path: Path) -> None:
    """SeaweedFS is alone on an internal network with the relay; what users' containers reach is the relay,
    which forwards the S3 API port and nothing else (the run test probes every port from a user's container)."""
    doc, _, _ = rendered(tmp_path)
    services = doc["services"]
    on_storage = sorted(name for name, s in services.items() if "storage" in s.get("networks", []))
    assert on_storage == ["s3", "s3-store"]
    assert services["s3-store"]["networks"] == ["storage"]
    assert doc["networks"]["storage"] == {"internal": True}
    assert services["s3-store"]["command"] == storage.container_args()
    assert services["s3"]["command"] == ["python3", "-m", "cubelab.relay", "8333", "s3-store:8333"]
    assert services["s3"]["depends_on"] == {"s3-store": {"condition": "service_healthy"}}
    listed = services["platform-tests"]["environment"]["CUBELAB_STORAGE_INTERNAL"].split()
    assert listed == [f"s3-store:{p}" for p in [8333, *storage.internal_ports(storage.CONTAINER_PORTS)]]
    assert {"s3-store:9333", "s3-store:8888", "s3-store:18333", "s3-store:18888"} <= set(listed)


def test_no_secret_in_the_file_and_env_holds_every_reference(tmp_path: Path) -> None:
    _, text, env = rendered(tmp_path)
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    referenced = set(REF.findall(text))
    assert referenced <= set(env), referenced - set(env)
    for name, value in env.items():
        assert value not in text, f"the value of {name} is written into docker-compose.yml"
    assert len(set(env.values())) == len(env), "two secrets share a value"
    assert {"TEAM_OCEAN_DB_PASSWORD", "TEAM_LAND_S3_SECRET_KEY", "USER_ALICE_PASSWORD"} <= set(env)


def test_hub_settings_register_each_team(tmp_path: Path) -> None:
    doc, _, env = rendered(tmp_path)
    hub = interpolate(doc["services"]["hub"], env)
    settings = json.loads(hub["environment"]["CUBELAB_HUB_SETTINGS_JSON"])
    services = {s["name"]: s for s in settings["services"]}
    assert services["mlflow-ocean"]["url"] == "http://tracking-ocean:5000"
    assert services["mlflow-ocean"]["api_token"] == env["TEAM_OCEAN_HUB_TOKEN"]
    roles = {r["name"]: r for r in settings["load_roles"]}
    assert roles["team-land"]["groups"] == ["land"]
    assert roles["team-land"]["scopes"] == ["access:services!service=mlflow-land"]
    assert settings["groups"] == {"ocean": ["alice", "bob"], "land": ["bob", "carol"]}
    assert settings["team_env"]["ocean"]["AWS_SECRET_ACCESS_KEY"] == env["TEAM_OCEAN_S3_SECRET_KEY"]
    assert settings["spawner_class"] == "dockerspawner.DockerSpawner"
    assert settings["gpu_teams"] == []


def test_adding_a_team_keeps_every_secret_and_adds_its_own(tmp_path: Path) -> None:
    _, _, before = rendered(tmp_path)
    config = yaml.safe_load(EXAMPLE.read_text())
    config["teams"].append({"name": "ice", "members": ["carol"], "gpu": True})
    doc, _, after = rendered(tmp_path, yaml.safe_dump(config))
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {
        "TEAM_ICE_DB_PASSWORD", "TEAM_ICE_S3_ACCESS_KEY", "TEAM_ICE_S3_SECRET_KEY", "TEAM_ICE_HUB_TOKEN"
    }  # fmt: skip
    tracking = doc["services"]["tracking-ice"]
    assert tracking["environment"]["CUBELAB_ARTIFACTS_DESTINATION"] == "s3://cubelab-ice/mlflow"
    assert "mlflow_ice" in tracking["environment"]["CUBELAB_BACKEND_STORE_URI"]
    assert doc["services"]["provision"]["environment"]["CUBELAB_TEAMS"] == "ocean land ice"
    settings = json.loads(doc["services"]["hub"]["environment"]["CUBELAB_HUB_SETTINGS_JSON"])
    assert settings["gpu_teams"] == ["ice"]
    # A team allowed GPUs: the notebook service reserves them.
    devices = doc["services"]["notebook"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_committed_compose_file_is_the_example_rendered(tmp_path: Path) -> None:
    """docker-compose.yml at the root is `cubelab render compose` of cubelab.example.yaml: no drift."""
    shutil.copy(EXAMPLE, tmp_path / "cubelab.example.yaml")
    compose.write(load(tmp_path / "cubelab.example.yaml"), tmp_path)
    committed = (ROOT / "docker-compose.yml").read_text()
    assert committed == (tmp_path / "docker-compose.yml").read_text(), (
        "docker-compose.yml is stale: run `.venv/bin/cubelab -c cubelab.example.yaml render compose`"
    )


def test_cli_render_compose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(EXAMPLE, tmp_path / "cubelab.yaml")
    with pytest.raises(SystemExit) as done:
        cli_main(["-c", str(tmp_path / "cubelab.yaml"), "render", "compose", "-o", str(tmp_path / "out")])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "docker compose up -d" in out and "new secret(s) generated" in out
    assert (tmp_path / "out" / "docker-compose.yml").exists()
    (tmp_path / "bad.yaml").write_text("users: [{name: a}]\nteams: [{name: x, members: [b]}]\n")
    with pytest.raises(SystemExit) as done:
        cli_main(["-c", str(tmp_path / "bad.yaml"), "render", "compose", "-o", str(tmp_path / "bad")])
    assert done.value.code == 2
    assert not (tmp_path / "bad").exists()


def test_subdomain_mode_reaches_the_hub_and_the_tracking_servers(tmp_path: Path) -> None:
    """hub.subdomains: the hub's subdomain_host, each team's service registered with an absolute callback on its
    own host, and the tracking server told that host (cookies, Host and Origin checks); the same URLs as the
    embedded stack's (cubelab.urls)."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["hub"] = {"subdomains": True}
    config["containers"] = {"public_url": "https://hub.example.org"}
    doc, _, _ = rendered(tmp_path, yaml.safe_dump(config))
    settings = json.loads(doc["services"]["hub"]["environment"]["CUBELAB_HUB_SETTINGS_JSON"])
    assert settings["subdomain_host"] == "https://hub.example.org"
    ui = "https://mlflow-ocean--service.hub.example.org/services/mlflow-ocean"
    service = next(s for s in settings["services"] if s["name"] == "mlflow-ocean")
    assert service["oauth_redirect_uri"] == f"{ui}/oauth_callback"
    assert settings["template_vars"]["cubelab_team_urls"]["ocean"] == f"{ui}/"
    assert doc["services"]["tracking-ocean"]["environment"]["CUBELAB_SERVICE_URL"] == ui
    # Off (the default): everything on the hub's origin, links and callbacks as paths.
    (tmp_path / "off").mkdir()
    doc, _, _ = rendered(tmp_path / "off")
    settings = json.loads(doc["services"]["hub"]["environment"]["CUBELAB_HUB_SETTINGS_JSON"])
    assert settings["subdomain_host"] == ""
    service = next(s for s in settings["services"] if s["name"] == "mlflow-ocean")
    assert service["oauth_redirect_uri"] == "/services/mlflow-ocean/oauth_callback"


def test_subdomain_mode_needs_a_host_name(tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["hub"] = {"subdomains": True}
    config["containers"] = {"public_url": "http://10.0.0.5:8000"}
    (tmp_path / "cubelab.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"containers\.public_url.*host name"):
        load(tmp_path / "cubelab.yaml")


def test_oidc_mounts_the_client_secret_where_the_hub_reads_it(spec: jsonschema.Draft7Validator, tmp_path: Path) -> None:
    """Before, the hub settings named /run/secrets/oidc-client-secret and nothing put the file there: the hub
    could not start with OIDC under compose."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["hub"] = {"auth": {"type": "oidc", "client_id": "cubelab", "client_secret_file": "secrets/oidc",
                              "authorize_url": "https://idp/auth", "token_url": "https://idp/token",
                              "userdata_url": "https://idp/me"}}  # fmt: skip
    for team in config["teams"]:
        team.pop("members", None)
        team.pop("admins", None)
    (tmp_path / "cubelab.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    path, env_path, _ = compose.write(load(tmp_path / "cubelab.yaml"), out)
    doc = yaml.safe_load(path.read_text())
    settings = json.loads(doc["services"]["hub"]["environment"]["CUBELAB_HUB_SETTINGS_JSON"])
    mount = doc["services"]["hub"]["secrets"][0]
    assert f"/run/secrets/{mount['target']}" == settings["oidc"]["client_secret_file"]
    assert (out / doc["secrets"][mount["source"]]["file"]).resolve() == (tmp_path / "secrets" / "oidc").resolve()
    assert not [e.message for e in spec.iter_errors(interpolate(doc, compose.read_env(env_path)))]


# --- the Dask gateway (dask_gateway.enabled) ------------------------------------------------------------------


def with_gateway(tmp_path: Path) -> tuple[dict[str, Any], str, dict[str, str]]:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["dask_gateway"] = {"enabled": True}
    return rendered(tmp_path, yaml.safe_dump(config))


def gateway_settings(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads(doc["services"]["dask-gateway"]["environment"]["CUBELAB_GATEWAY_SETTINGS_JSON"])


def hub_settings(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads(doc["services"]["hub"]["environment"]["CUBELAB_HUB_SETTINGS_JSON"])


def test_the_gateway_service_is_rendered_only_when_enabled(spec: jsonschema.Draft7Validator, tmp_path: Path) -> None:
    off, _, off_env = rendered(tmp_path / "off")
    assert "dask-gateway" not in off["services"]
    assert not {plan.GATEWAY_TOKEN, plan.GATEWAY_DB_KEY} & set(off_env)
    assert "dask-gateway" not in {s["name"] for s in hub_settings(off)["services"]}
    assert "CUBELAB_GATEWAY" not in off["services"]["platform-tests"]["environment"]
    doc, text, env = with_gateway(tmp_path / "on")
    errors = [f"{list(e.path)}: {e.message}" for e in spec.iter_errors(interpolate(doc, env))]
    assert not errors, errors
    gateway = doc["services"]["dask-gateway"]
    assert gateway["image"] == "cubelab/gateway:latest"
    # Built on the users' image: its kernel environment runs the clusters.
    assert gateway["build"] == {"context": ".", "dockerfile": "images/gateway/Dockerfile",
                                "args": {"BASE_IMAGE": "cubelab/notebook:latest"}}  # fmt: skip
    assert gateway["command"] == ["/opt/gateway/bin/dask-gateway-server", "-f", "/opt/gateway/dask_gateway_config.py"]
    assert gateway["depends_on"] == {"provision": {"condition": "service_completed_successfully"}}
    assert gateway["restart"] == "unless-stopped"
    assert "/services/dask-gateway/api/health" in " ".join(gateway["healthcheck"]["test"])
    assert "notebook" in text.splitlines()[3]  # the header says to build the users' image first


def test_the_gateways_secrets_are_generated_and_only_referenced(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    doc, text, env = with_gateway(tmp_path)
    for name, value in env.items():
        assert value not in text, f"the value of {name} is written into docker-compose.yml"
    assert set(REF.findall(text)) <= set(env)
    Fernet(env[plan.GATEWAY_DB_KEY])  # a valid key for the gateway's database encryption
    raw = gateway_settings(doc)
    assert raw["api_token"].startswith("${CUBELAB_GATEWAY_TOKEN:?")
    settings = gateway_settings(interpolate(doc, env))
    assert settings["api_token"] == env[plan.GATEWAY_TOKEN]
    assert settings["db_key"] == env[plan.GATEWAY_DB_KEY]
    # Each team's workers get that team's storage keys, no other team's.
    ocean = settings["teams"]["ocean"]["environment"]
    assert ocean["AWS_SECRET_ACCESS_KEY"] == env["TEAM_OCEAN_S3_SECRET_KEY"]
    assert env["TEAM_LAND_S3_SECRET_KEY"] not in json.dumps(ocean)
    assert ocean["AWS_ENDPOINT_URL_S3"] == "http://s3:8333"


def test_the_hub_registers_the_gateway_with_its_token_and_opens_it_to_the_teams(tmp_path: Path) -> None:
    doc, _, env = with_gateway(tmp_path)
    services = {s["name"]: s for s in hub_settings(doc)["services"]}
    assert services["dask-gateway"]["url"] == "http://dask-gateway:8000"
    assert services["dask-gateway"]["api_token"].startswith("${CUBELAB_GATEWAY_TOKEN:?")
    registered = {s["name"]: s for s in hub_settings(interpolate(doc, env))["services"]}
    assert registered["dask-gateway"]["api_token"] == env[plan.GATEWAY_TOKEN]
    roles = [r for r in hub_settings(doc)["load_roles"] if "access:services!service=dask-gateway" in r["scopes"]]
    assert [sorted(r["groups"]) for r in roles] == [["land", "ocean"]]
    # The gateway checks tokens against the hub's API, by its service name (any hub token would do without it).
    settings = gateway_settings(doc)
    assert settings["hub_api_url"] == "http://hub:8081/hub/api"
    assert settings["service_name"] == "dask-gateway" and settings["prefix"] == "/services/dask-gateway"


def test_users_servers_get_the_gateways_addresses(tmp_path: Path) -> None:
    doc, _, _ = with_gateway(tmp_path)
    for team in ("ocean", "land"):
        env = hub_settings(doc)["team_env"][team]
        # The API through the hub's proxy by the hub's name on the users' network; schedulers on the gateway's port.
        assert env["DASK_GATEWAY__ADDRESS"] == "http://hub:8000/services/dask-gateway"
        assert env["DASK_GATEWAY__PUBLIC_ADDRESS"] == "http://localhost:8000/services/dask-gateway"
        assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://dask-gateway:8000"
        assert env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
        assert env["DASK_GATEWAY__CLUSTER__OPTIONS__TEAM"] == team
    described = json.loads(doc["services"]["platform-tests"]["environment"]["CUBELAB_GATEWAY"])
    assert described["address"] == "http://hub:8000/services/dask-gateway"
    assert described["proxy_address"] == "gateway://dask-gateway:8000"
    assert described["cluster_account"] == "cl-{user}"
    assert described["teams"]["ocean"]["max_workers_per_user"] >= 1


def test_the_gateway_is_on_the_users_network_only_with_its_private_api_on_loopback(tmp_path: Path) -> None:
    """Users' containers reach its proxy (HTTP API and schedulers' TLS on one port); it reaches the hub's API and
    its workers S3 on the users' network; nothing puts it beside Postgres or SeaweedFS itself."""
    doc, _, _ = with_gateway(tmp_path)
    services = doc["services"]
    assert services["dask-gateway"]["networks"] == ["users"]
    assert "users" in services["hub"]["networks"] and "users" in services["s3"]["networks"]
    settings = gateway_settings(doc)
    assert settings["http_address"] == settings["tls_address"] == "0.0.0.0:8000"
    assert settings["api_address"] == "127.0.0.1:8001"
    backend = settings["backend"]
    assert backend["class"] == "cubelab.gateway.container.ContainerLocalBackend"
    assert backend["account_prefix"] == "cl-"
    assert backend["scheduler_cmd"] == ["/opt/conda/envs/cubelab-sklearn/bin/dask", "scheduler"]
    assert backend["inherited_environment"] == ["PATH", "LANG"]
    assert settings["db_url"].startswith("sqlite:////var/lib/cubelab-gateway/")


def test_the_gateway_runs_as_root_with_only_the_capabilities_it_needs(tmp_path: Path) -> None:
    doc, _, _ = with_gateway(tmp_path)
    gateway = doc["services"]["dask-gateway"]
    assert gateway["user"] == "root"
    assert gateway["cap_drop"] == ["ALL"]
    assert sorted(gateway["cap_add"]) == ["CHOWN", "DAC_OVERRIDE", "KILL", "SETGID", "SETUID"]
    assert gateway["security_opt"] == ["no-new-privileges:true"]
    assert not gateway.get("privileged") and "volumes" not in gateway  # no Docker socket, no host path
