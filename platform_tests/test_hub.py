"""The hub: login, users' servers and kernels, zero-credential logging with trusted authorship, isolation."""

from __future__ import annotations

import json
import uuid
from typing import Any

import mlflow
import pytest
import requests

from platform_tests import probes
from platform_tests.conftest import issue_token, s3_client
from platform_tests.hubclient import UserServer, login, xsrf_of

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def user_entry(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(u for u in deployment["users"] if u["name"] == name)


def password_of(deployment: dict[str, Any], name: str) -> str:
    entry = user_entry(deployment, name)
    if "initial_password" not in entry:
        pytest.skip("the deployment description carries no passwords (not local accounts)")
    return str(entry["initial_password"])


@pytest.fixture(scope="module")
def ocean(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["teams"][0]


@pytest.fixture(scope="module")
def land(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["teams"][1]


@pytest.fixture(scope="module")
def outsider(deployment: dict[str, Any], ocean: dict[str, Any]) -> str:
    """A user who is not in the first team."""
    return next(u["name"] for u in deployment["users"] if u["name"] not in ocean["members"])


def test_login_form_accepts_the_password_and_refuses_a_wrong_one(deployment: dict[str, Any]) -> None:
    hub = deployment["hub_url"]
    user = deployment["users"][0]["name"]
    _, bad = login(hub, user, "not-the-password")
    assert bad.status_code == 403 and "jupyterhub-session-id" not in bad.cookies
    session, good = login(hub, user, password_of(deployment, user))
    assert good.status_code == 302, good.text[:300]
    home = session.get(f"{hub}/hub/home", timeout=10)
    assert home.status_code == 200 and user in home.text
    # No xsrf token, no login: the form is protected.
    bare = requests.post(f"{hub}/hub/login", data={"username": user, "password": password_of(deployment, user)},
                         allow_redirects=False, timeout=10)  # fmt: skip
    assert bare.status_code == 403


def test_home_page_lists_the_users_teams_with_links(deployment: dict[str, Any]) -> None:
    hub = deployment["hub_url"]
    for entry in deployment["users"]:
        name = entry["name"]
        session, resp = login(hub, name, password_of(deployment, name))
        assert resp.status_code == 302
        page = session.get(f"{hub}/hub/home", timeout=10).text
        for team in deployment["teams"]:
            link = f'href="/services/mlflow-{team["name"]}/"'
            assert (link in page) == (name in team["members"]), (name, team["name"])
        if not any(name in t["members"] for t in deployment["teams"]):
            assert "You are in no team yet" in page


def test_user_changes_password_in_the_hub(deployment: dict[str, Any]) -> None:
    hub = deployment["hub_url"]
    name = deployment["users"][-1]["name"]
    old = password_of(deployment, name)
    new = "a-new-and-long-password"
    session, _ = login(hub, name, old)
    form = {"current_password": old, "new_password": new, "confirm_password": new, "_xsrf": xsrf_of(session)}
    wrong = session.post(f"{hub}/hub/change-password", data={**form, "current_password": "nope"}, timeout=30)
    assert wrong.status_code == 403
    short = session.post(f"{hub}/hub/change-password", data={**form, "new_password": "x", "confirm_password": "x"},
                         timeout=30)  # fmt: skip
    assert short.status_code == 400
    done = session.post(f"{hub}/hub/change-password", data=form, timeout=30)
    assert done.status_code == 200 and "Password changed" in done.text
    try:
        assert login(hub, name, old)[1].status_code == 403
        assert login(hub, name, new)[1].status_code == 302
    finally:
        session, _ = login(hub, name, new)
        back = {"current_password": new, "new_password": old, "confirm_password": old, "_xsrf": xsrf_of(session)}
        assert session.post(f"{hub}/hub/change-password", data=back, timeout=30).status_code == 200


@pytest.fixture(scope="module")
def alice_server(deployment: dict[str, Any], ocean: dict[str, Any]) -> Any:
    user = ocean["members"][0]
    server = UserServer(deployment["hub_url"], user, issue_token(deployment, user))
    server.start(team=ocean["name"])
    yield server
    server.stop()


LOG_A_RUN = """
import os, mlflow
mlflow.set_experiment("from-a-notebook")
with mlflow.start_run(tags={"mlflow.user": "mallory"}) as run:
    mlflow.log_metric("rmse", 0.5)
print(run.info.run_id)
"""


def test_kernel_logs_to_the_team_server_with_no_credentials_and_the_right_author(
    deployment: dict[str, Any], ocean: dict[str, Any], alice_server: UserServer
) -> None:
    env = json.loads(alice_server.run(
        "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.isupper()}))"
    ))  # fmt: skip
    assert env["MLFLOW_TRACKING_URI"] == ocean["tracking_uri"]
    assert env["S3_USER_STORAGE_BUCKET"] == ocean["bucket"]
    assert env["S3_USER_STORAGE_KEY"] == env["AWS_ACCESS_KEY_ID"] == ocean["s3"]["access_key"]
    assert env["MLFLOW_TRACKING_TOKEN"] and env["TENSORBOARD_LOGDIR"] and env["HUB_USER"] == alice_server.user

    run_id = alice_server.run(LOG_A_RUN).strip().splitlines()[-1]
    teammate = next(m for m in ocean["members"] if m != alice_server.user)
    client = mlflow.MlflowClient(ocean["tracking_uri"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", issue_token(deployment, teammate))
        run = client.get_run(run_id)
        assert run.info.user_id == alice_server.user
        assert run.data.tags["mlflow.user"] == alice_server.user
        # The teammate compares runs side by side, each with its real author.
        mlflow.set_tracking_uri(ocean["tracking_uri"])
        mlflow.set_experiment("from-a-notebook")
        with mlflow.start_run(tags={"mlflow.user": alice_server.user}):
            mlflow.log_metric("rmse", 0.4)
        runs = mlflow.search_runs(experiment_names=["from-a-notebook"], output_format="list")
        authors = {r.info.user_id for r in runs}
        assert {alice_server.user, teammate} <= authors


def test_kernel_cannot_reach_other_users_secrets_or_other_teams_bucket(
    deployment: dict[str, Any], land: dict[str, Any], alice_server: UserServer
) -> None:
    # Container deployments list no homes or private paths: users' servers are separate containers or pods.
    others = [u["home"] for u in deployment["users"] if u["name"] != alice_server.user and u.get("home")]
    probe = f"""
import os, boto3, botocore
results = {{}}
for path in {others!r} + {deployment["private_paths"]!r}:
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
        results[path] = "READ"
    except (PermissionError, FileNotFoundError) as exc:
        results[path] = type(exc).__name__
s3 = boto3.client("s3")
try:
    s3.list_objects_v2(Bucket={land["bucket"]!r})
    results["bucket"] = "READ"
except botocore.exceptions.ClientError as exc:
    results["bucket"] = exc.response["Error"]["Code"]
import json; print(json.dumps(results))
"""
    results = json.loads(alice_server.run(probe).strip().splitlines()[-1])
    assert results.pop("bucket") == "AccessDenied"
    if not results:
        return
    if not deployment.get("users_isolated"):
        pytest.skip("users are not separate Unix accounts on this deployment (cubelab not run as root)")
    assert results and all(v == "PermissionError" for v in results.values()), results


def test_kernel_reaches_the_s3_api_but_no_internal_storage_server(
    deployment: dict[str, Any], alice_server: UserServer
) -> None:
    """SeaweedFS's master, volume, filer and admin servers and every gRPC port (S3's own `Configure` call
    replaces the identities) would bypass the teams' S3 identities: from a user's kernel none of them may
    answer, by TCP or through the unix sockets weed makes in /tmp."""
    endpoints = deployment.get("storage_internal")
    if not endpoints:
        pytest.skip("the deployment description lists no internal storage endpoints")
    s3 = deployment["s3_endpoint"].split("://", 1)[1].split("/")[0]
    probe = probes.reach([s3, *endpoints], sockets="/tmp/seaweedfs-*.sock")
    results = json.loads(alice_server.run(probe).strip().splitlines()[-1])
    assert results.pop(s3) == "answered", results  # the S3 API itself, where the identities decide
    if not deployment.get("users_isolated"):
        pytest.skip("users are not separate Unix accounts on this deployment (cubelab not run as root)")
    assert results and all(v not in probes.REACHED for v in results.values()), results


WRITE_TENSORBOARD_RUN = """
import os, time
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
folder = os.path.join(os.environ["TENSORBOARD_LOGDIR"], "RUN")
writer = EventFileWriter(folder)
for step in range(3):
    value = summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (step + 1))
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value])))
writer.close()
print(os.environ["TENSORBOARD_LOGDIR"])
"""


def test_tensorboard_in_jupyterlab_shows_the_teams_runs_copied_from_the_log_folder(
    deployment: dict[str, Any], ocean: dict[str, Any], alice_server: UserServer
) -> None:
    """$TENSORBOARD_LOGDIR is a folder in the home that any writer can write; what is written there reaches the
    team's bucket under tensorboard/USER/, which the session's TensorBoard reads (teammates' runs included)."""
    run = f"run-{uuid.uuid4().hex[:8]}"
    logdir = alice_server.run(WRITE_TENSORBOARD_RUN.replace("RUN", run)).strip()
    assert logdir.startswith("/") and logdir.endswith(f"tensorboard/{ocean['name']}"), logdir
    alice_server.wait_for_tensorboard_run(f"{alice_server.user}/{run}")
    s3 = s3_client(deployment, ocean["s3"]["access_key"], ocean["s3"]["secret_key"])
    listed = s3.list_objects_v2(Bucket=ocean["bucket"], Prefix=f"tensorboard/{alice_server.user}/{run}/")
    assert listed.get("KeyCount", 0) >= 1


def test_user_in_several_teams_chooses_the_team_at_spawn(deployment: dict[str, Any]) -> None:
    multi = [u["name"] for u in deployment["users"] if sum(u["name"] in t["members"] for t in deployment["teams"]) > 1]
    if not multi:
        pytest.skip("no user is in two teams in this deployment")
    user = multi[0]
    teams = [t for t in deployment["teams"] if user in t["members"]]
    session, _ = login(deployment["hub_url"], user, password_of(deployment, user))
    form = session.get(f"{deployment['hub_url']}/hub/spawn", timeout=30).text
    assert '<select class="form-control" name="team"' in form
    assert all(f'<option value="{t["name"]}">' in form for t in teams)

    server = UserServer(deployment["hub_url"], user, issue_token(deployment, user))
    server.start(team=teams[1]["name"])
    try:
        env = server.run("import os; print(os.environ['MLFLOW_TRACKING_URI'], os.environ['S3_USER_STORAGE_BUCKET'])")
        assert env.split() == [teams[1]["tracking_uri"], teams[1]["bucket"]]
    finally:
        server.stop()
    # A team the user is not in cannot be chosen.
    other = next((t for t in deployment["teams"] if user not in t["members"]), None)
    if other is not None:
        with pytest.raises((TimeoutError, requests.HTTPError)):
            server.start(team=other["name"], timeout=20)
        server.stop()


def test_user_in_no_team_logs_in_but_gets_no_team_access(deployment: dict[str, Any]) -> None:
    loners = [u["name"] for u in deployment["users"] if not any(u["name"] in t["members"] for t in deployment["teams"])]
    if not loners:
        pytest.skip("every user is in a team in this deployment")
    server = UserServer(deployment["hub_url"], loners[0], issue_token(deployment, loners[0]))
    server.start()
    try:
        keys = server.run(
            "import os; print(sorted(k for k in os.environ if k.startswith(('MLFLOW_TRACKING', 'S3_', 'AWS_'))))"
        )
        assert keys.strip() == "[]"
    finally:
        server.stop()
