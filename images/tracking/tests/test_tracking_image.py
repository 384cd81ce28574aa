"""images/tracking, built with podman and run with testcontainers against a real Postgres, S3 and hub: it serves
/health and its team's API, refusing requests without a member's token, and runs the provisioning and backup
jobs (the compose services and Helm Jobs that use this image)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import podman_images as containers  # deploy/tests/podman_images.py
import requests

from cubelab.backends.local.stack import LocalBackend
from cubelab.hub.render import service_prefix
from cubelab.procs import free_tcp_port

ROOT = Path(__file__).resolve().parents[3]


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
    sock = str(stack.postgres.socket_dir)  # Postgres's unix socket, mounted at the same path
    container = DockerContainer(image).with_kwargs(network_mode="host").with_volume_mapping(sock, sock, "rw")
    for key, value in env.items():
        container = container.with_env(key, value)
    with container:
        health = containers.wait_for(f"{base}/health", container)
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
        "POSTGRES_HOST": str(stack.postgres.socket_dir),  # Postgres's unix socket, mounted at the same path
        "POSTGRES_PORT": str(stack.postgres.port),
        "POSTGRES_REQUIRE_AUTH": "scram-sha-256",
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
    sock = str(stack.postgres.socket_dir)
    container = (DockerContainer(image).with_kwargs(network_mode="host")
                 .with_volume_mapping(str(tmp_path), "/out", "rw").with_volume_mapping(sock, sock, "rw")
                 .with_command("python3 -m cubelab.provision all --timeout 60"))  # fmt: skip
    for key, value in env.items():
        container = container.with_env(key, value)
    with container:
        result = container.get_wrapped_container().wait(timeout=180)
        out, err = container.get_logs()
    assert result["StatusCode"] == 0, (out + err).decode()[-3000:]
    assert password not in (out + err).decode()  # secrets never printed
    role = f"team_{team}"
    with psycopg2.connect(host=sock, port=stack.postgres.port, user=role, password=password,
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
    sock = str(stack.postgres.socket_dir)  # Postgres's unix socket, mounted at the same path
    container = (DockerContainer(image).with_kwargs(network_mode="host")
                 .with_volume_mapping(str(tmp_path), "/backups", "rw").with_volume_mapping(sock, sock, "rw")
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
