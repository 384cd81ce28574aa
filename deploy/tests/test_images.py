"""images/: every Dockerfile passes hadolint and follows the conventions (ARG BASE_IMAGE, pinned requirements, a
reason for system packages, healthchecks); the tracking and hub images are built with podman and run with
testcontainers: the tracking image serves /health and the team's API against a real Postgres, S3 and hub,
refusing requests without a member's token; the hub image starts from the settings `cubelab render compose`
makes and answers /hub/api/ with the teams registered. The notebook images (conda kernels, CUDA) are too heavy
for CI and are not built here."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import podman_images as containers  # deploy/tests/podman_images.py
import pytest
import requests
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab.backends import compose
from cubelab.backends.local import LocalBackend
from cubelab.config import load
from cubelab.hub.render import service_prefix
from cubelab.procs import free_tcp_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("images/**/Dockerfile"))
HADOLINT = Path(sys.prefix) / "bin" / "hadolint"


def test_every_image_has_a_dockerfile_readme_and_requirements() -> None:
    names = sorted(p.parent.relative_to(ROOT / "images").as_posix() for p in DOCKERFILES)
    assert names == ["hub", "notebook", "notebook/cuda", "platform-tests", "tracking"]
    for name in ("hub", "notebook", "platform-tests", "tracking"):
        assert (ROOT / "images" / name / "requirements.txt").exists(), name
    assert (ROOT / "images" / "README.md").exists()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.relative_to(ROOT / "images").as_posix())
def test_hadolint(dockerfile: Path) -> None:
    done = subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nRUN cd /tmp && echo hi\n")
    done = subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(bad)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode != 0 and "DL3006" in done.stdout  # untagged base image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.relative_to(ROOT / "images").as_posix())
def test_conventions(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+:\S+)$", text, re.M)
    assert base, "ARG BASE_IMAGE with a tagged default"
    assert "FROM ${BASE_IMAGE}" in text
    # A healthcheck (HEALTHCHECK NONE for one-shot images); variants of a cubelab image inherit theirs.
    assert "HEALTHCHECK" in text or base.group(1).startswith("cubelab/"), "no healthcheck"
    lines = text.splitlines()
    for i, line in enumerate(lines):  # every apt-get install has a comment saying why, just above its RUN
        if "apt-get install" in line:
            run = max(j for j in range(i + 1) if lines[j].startswith("RUN"))
            assert lines[run - 1].startswith("#"), f"{dockerfile}: no reason given above line {run + 1}"


@pytest.mark.parametrize("requirements", sorted(ROOT.glob("images/*/requirements.txt")), ids=lambda p: p.parent.name)
def test_requirements_are_pinned(requirements: Path) -> None:
    """Every package has its version here, or in deploy/requirements/constraints.txt (mlflow's one home), which
    every image build reads (test_pins.py)."""
    constraints = ROOT / "deploy" / "requirements" / "constraints.txt"
    pinned_there = {ln.split("==")[0] for ln in constraints.read_text().splitlines() if "==" in ln}
    entries = [ln.strip() for ln in requirements.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert entries
    loose = [e for e in entries if not re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[A-Za-z0-9_.+]+", e)]
    assert not [e for e in loose if e not in pinned_there], loose


# --- built and run (podman + testcontainers) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman_api() -> Iterator[str]:
    containers.require_containers()
    with containers.docker_api() as url:
        yield url


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalBackend]:
    """Real Postgres, S3 and hub for the tracking image to use."""
    stacks = ScratchStacks()
    try:
        backend = stacks.backend(stacks.config())
        backend.up()
        yield backend
    finally:
        stacks.close()


def wait_for(url: str, container: Any, timeout: float = 120, **kwargs: Any) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=3, **kwargs)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                out, err = container.get_logs()
                raise AssertionError(f"{url} not answering; container log:\n{(out + err).decode()[-3000:]}") from None
            time.sleep(0.5)


def test_tracking_image_serves_the_team_against_real_services(podman_api: str, stack: LocalBackend) -> None:
    from testcontainers.core.container import DockerContainer

    image = containers.build("tracking")
    team = stack.config.teams[0]
    creds = stack.s3.team_credentials(team)
    port = free_tcp_port()
    env = {
        "CUBELAB_HOST": "127.0.0.1",
        "CUBELAB_PORT": str(port),
        "CUBELAB_BACKEND_STORE_URI": stack.postgres.store_uri(team, stack.tracking.db_password(team)),
        "CUBELAB_ARTIFACTS_DESTINATION": f"s3://{stack.config.bucket(team)}/mlflow",
        "CUBELAB_SERVICE_PREFIX": service_prefix(team),
        "CUBELAB_SERVICE_NAME": team.service,
        "CUBELAB_TEAM_NAME": team.name,
        "CUBELAB_SERVICE_TOKEN": stack.tracking.service_token(team),
        "CUBELAB_HUB_API_URL": stack.hub.api_url,
        "CUBELAB_HUB_PUBLIC_URL": stack.hub.url,
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": stack.s3.url,
    }
    base = f"http://127.0.0.1:{port}{service_prefix(team)}"
    container = DockerContainer(image).with_kwargs(network_mode="host")
    for key, value in env.items():
        container = container.with_env(key, value)
    with container:
        health = wait_for(f"{base}/health", container)
        assert health.status_code == 200 and health.text == "OK"
        # The image's own HEALTHCHECK passes (run by hand: podman's timers need systemd).
        name = container.get_wrapped_container().name
        assert containers.podman("healthcheck", "run", name, check=False).returncode == 0
        search = f"{base}/api/2.0/mlflow/experiments/search"
        assert requests.post(search, json={"max_results": 5}, timeout=10).status_code == 401
        member = stack.hub.issue_token(team.members[0])
        outsider = stack.hub.issue_token(next(u.name for u in stack.config.users if u.name not in team.members))
        assert requests.post(search, json={"max_results": 5}, timeout=10,
                             headers={"Authorization": f"Bearer {outsider}"}).status_code == 403  # fmt: skip
        headers = {"Authorization": f"Bearer {member}"}
        created = requests.post(f"{base}/api/2.0/mlflow/experiments/create", headers=headers, timeout=10,
                                json={"name": f"image-test-{secrets.token_hex(4)}"})  # fmt: skip
        assert created.status_code == 200, created.text
        run = requests.post(f"{base}/api/2.0/mlflow/runs/create", headers=headers, timeout=10,
                            json={"experiment_id": created.json()["experiment_id"]})  # fmt: skip
        assert run.json()["run"]["info"]["user_id"] == team.members[0]  # authorship from the hub token
        # The user in the container is not root.
        assert container.exec(["id", "-u"]).output.decode().strip() == "1001"


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
        info = wait_for(f"{api}/", container)
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
        # client zero-to-jupyterhub's config switches to, the OIDC authenticator, cubelab's z2jh hook.
        imports = "import dockerspawner, kubespawner, pycurl, oauthenticator.generic, cubelab.hub.kubernetes"
        done = container.exec(["python3", "-c", imports])
        assert done.exit_code == 0, done.output.decode()


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


def test_tracking_image_provisions_a_new_team(podman_api: str, stack: LocalBackend, tmp_path: Path) -> None:
    """The compose `provision` service and the Helm provisioning Job: `python -m cubelab.provision all` in the tracking
    image creates a team's role, database and bucket and the first passwords, against real Postgres and S3."""
    import boto3
    import psycopg2
    from testcontainers.core.container import DockerContainer

    from cubelab.backends.local.postgres import SUPERUSER
    from cubelab.passwords import PasswordFile
    from cubelab.provision import TeamSecrets, user_password_var

    image = containers.build("tracking")
    admin = stack.s3.admin_credentials()
    team, password = f"extra{secrets.token_hex(3)}", secrets.token_urlsafe(24)
    prefix = stack.config.storage.bucket_prefix
    tmp_path.chmod(0o777)  # the container's user (uid 1001) writes the password file here
    env = {
        "CUBELAB_TEAMS": team,
        "CUBELAB_BUCKET_PREFIX": prefix,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(stack.postgres.port),
        "POSTGRES_USER": SUPERUSER,
        "POSTGRES_PASSWORD": stack.postgres.password(),
        "S3_ENDPOINT": stack.s3.url,
        "S3_ADMIN_ACCESS_KEY": admin.access_key,
        "S3_ADMIN_SECRET_KEY": admin.secret_key,
        TeamSecrets(team).db_password: password,
        "CUBELAB_USERS": "erin",
        user_password_var("erin"): "first-password",
        "CUBELAB_PASSWORDS_FILE": "/out/passwords.json",
    }
    container = (DockerContainer(image).with_kwargs(network_mode="host")
                 .with_volume_mapping(str(tmp_path), "/out", "rw")
                 .with_command("python3 -m cubelab.provision all --timeout 60"))  # fmt: skip
    for key, value in env.items():
        container = container.with_env(key, value)
    with container:
        result = container.get_wrapped_container().wait(timeout=180)
        out, err = container.get_logs()
    assert result["StatusCode"] == 0, (out + err).decode()[-3000:]
    assert password not in (out + err).decode()  # secrets never printed
    role = f"team_{team}"
    with psycopg2.connect(host="127.0.0.1", port=stack.postgres.port, user=role, password=password,
                          dbname=f"mlflow_{team}", connect_timeout=5) as conn, conn.cursor() as cur:  # fmt: skip
        cur.execute("SELECT current_user")
        assert cur.fetchone() == (role,)
    s3 = boto3.client("s3", endpoint_url=stack.s3.url, aws_access_key_id=admin.access_key,
                      aws_secret_access_key=admin.secret_key, region_name="us-east-1")  # fmt: skip
    s3.head_bucket(Bucket=f"{prefix}{team}")
    assert PasswordFile(tmp_path / "passwords.json").check("erin", "first-password")


def test_tracking_image_runs_the_backup_job(podman_api: str, stack: LocalBackend, tmp_path: Path) -> None:
    """compose's `backup` service and the chart's CronJob: cubelab.backup.job in the tracking image (its pg_dump)
    with the plan's environment, against real Postgres and S3, as the image's unprivileged user."""
    from testcontainers.core.container import DockerContainer

    from cubelab import plan
    from cubelab.backends.local.postgres import SUPERUSER

    image = containers.build("tracking")
    service = plan.backup_service(stack.config, stack.tracking.addresses(), to="/backups", passwords_file=None)
    values = stack.hub.secret_values() | {"POSTGRES_PASSWORD": stack.postgres.password()}
    env = plan.resolve(service.env, values.__getitem__) | {"POSTGRES_USER": SUPERUSER}
    tmp_path.chmod(0o777)  # the container's user (uid 1001) writes the backup here
    container = (DockerContainer(image).with_kwargs(network_mode="host")
                 .with_volume_mapping(str(tmp_path), "/backups", "rw")
                 .with_command(" ".join(service.command)))  # fmt: skip
    for key, value in env.items():
        container = container.with_env(key, value)
    with container:
        result = container.get_wrapped_container().wait(timeout=300)
        out, err = container.get_logs()
    log = (out + err).decode()
    assert result["StatusCode"] == 0, log[-3000:]
    assert values["POSTGRES_PASSWORD"] not in log and "complete" in log
    (snapshot,) = (tmp_path / "snapshots").iterdir()
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert set(manifest["teams"]) == {t.name for t in stack.config.teams}
    for team in manifest["teams"].values():
        assert (tmp_path / team["database"]["file"]).stat().st_size == team["database"]["bytes"] > 0
