"""The Helm chart, run: `cubelab render helm` values, rendered by `helm template` with zero-to-jupyterhub 4.4.0 as
the dependency (../shared/reference/charts, nothing fetched), and the rendered pod templates run with podman as
kubelet would (deploy/tests/kubeplay.py): the chart's Postgres and SeaweedFS, the provisioning Job, the tracking
servers, zero-to-jupyterhub's hub running its own jupyterhub_config.py with the chart's values and cubelab's
hook, its proxy, and the chart's `helm test` pod running platform_tests against the release.

Departures, each because of what this machine has: images are cubelab's own, built here, and stand-ins for the
ones no registry can give (Postgres, SeaweedFS; z2jh's proxy image is replaced by the hub image, which has the
same configurable-http-proxy); z2jh's cluster helpers (image pullers, user scheduler, placeholders) are turned
off in the site values, and so is deleting a user's volume claim with the user (KubeSpawner would ask the API
server). Not covered, and kept as static checks in test_helm.py: NetworkPolicy enforcement
(every pod reaches every other here), RBAC, and KubeSpawner spawning users' pods (no API server), so the
platform_tests that need a user's server are not in the selection the test pod runs.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubeplay  # deploy/tests/kubeplay.py
import nested  # deploy/tests/nested.py
import podman_images as containers  # deploy/tests/podman_images.py
import pytest
import reference  # deploy/tests/reference.py
import webflows  # deploy/tests/webflows.py
import yaml
from scratch import use_shared_installs  # deploy/tests/scratch.py

from cubelab.backends import kubernetes
from cubelab.config import load
from cubelab.install import services_env

ROOT = Path(__file__).resolve().parents[2]
HELM = Path(sys.prefix) / "tools" / "helm"
Z2JH_CHART = ROOT.parent / "shared" / "reference" / "charts" / "jupyterhub-4.4.0.tgz"
# The chart's other dependency (off here: helm still wants it present to render).
DASK_GATEWAY_CHART = ROOT.parent / "shared" / "reference" / "charts" / "dask-gateway-2026.3.0.tgz"
RELEASE = "cubelab"
# z2jh's helpers for a real cluster's scheduling and image pulls: nothing to do without one. And deleting a hub
# user makes KubeSpawner delete the user's volume claim through the API server, which is not here.
SITE = {"jupyterhub": {"prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False}},
                       "scheduling": {"userScheduler": {"enabled": False}, "userPlaceholder": {"enabled": False}},
                       "hub": {"config": {"KubeSpawner": {"delete_pvc": False}}}}}  # fmt: skip
CHP_IMAGE = "quay.io/jupyterhub/configurable-http-proxy:5.2.0"


def render(tmp: Path, auth: str) -> kubeplay.Manifests:
    reference.require(Z2JH_CHART, DASK_GATEWAY_CHART)
    config = yaml.safe_load((ROOT / "cubelab.example.yaml").read_text())
    # Users reach the hub at the proxy's Service, from the test pod on the same network.
    config["containers"] = {"registry": "localhost/cubelab", "tag": "test", "public_url": "http://proxy-public"}
    if auth == "oidc":
        config["hub"] = {"auth": webflows.oidc_auth("oidc-client-secret")}
        for team in config["teams"]:  # the provider's groups claim decides membership
            team.pop("members", None)
            team.pop("admins", None)
    (tmp / "cubelab.yaml").write_text(yaml.safe_dump(config))
    values = kubernetes.write(load(tmp / "cubelab.yaml"), tmp / "values.yaml", RELEASE)
    (tmp / "site.yaml").write_text(yaml.safe_dump(SITE))
    chart = tmp / "chart"
    shutil.copytree(ROOT / "helm" / "cubelab", chart)
    (chart / "charts").mkdir(exist_ok=True)
    for packaged in (Z2JH_CHART, DASK_GATEWAY_CHART):
        shutil.copy(packaged, chart / "charts")
    done = subprocess.run([str(HELM), "template", RELEASE, str(chart), "-f", str(values), "-f", str(tmp / "site.yaml")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    if auth == "oidc":
        # What the operator creates before installing (the chart's NOTES): the provider's client secret.
        secret = base64.b64encode(secrets.token_hex(24).encode()).decode()
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{RELEASE}-oidc"},
                     "data": {"client-secret": secret}})  # fmt: skip
    return kubeplay.Manifests(docs)


@dataclass
class Release:
    cluster: kubeplay.Cluster
    auth: str  # local or oidc


@pytest.fixture(scope="module", params=["local", "oidc"])
def release(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    containers.require_containers()
    use_shared_installs()
    tmp = tmp_path_factory.mktemp(f"helm-run-{request.param}")
    manifests = render(tmp, request.param)
    weed = services_env(Path(os.environ["CUBELAB_INSTALL_DIR"]), print) / "bin" / "weed"
    stand_ins = containers.stand_ins(tmp_path_factory.mktemp("seaweedfs"), weed)
    built = {name: containers.build(name) for name in ("tracking", "hub", "platform-tests")}
    postgres_image = manifests.pod_template("StatefulSet", f"{RELEASE}-postgres")["spec"]["containers"][0]["image"]
    s3_image = manifests.pod_template("StatefulSet", f"{RELEASE}-s3")["spec"]["containers"][-1]["image"]
    images = {postgres_image: stand_ins["postgres"], s3_image: stand_ins["seaweedfs"], CHP_IMAGE: built["hub"]}
    workdir = tmp_path_factory.mktemp("pods")
    workdir.chmod(0o755)
    with kubeplay.Cluster(manifests, containers.podman, images, workdir, relay_image=built["tracking"]) as cluster:
        if request.param == "oidc":
            secret = manifests.secret(f"{RELEASE}-oidc")["client-secret"].decode()
            redirect = "http://proxy-public/hub/oauth_callback"
            provider = webflows.start_provider(cluster.network, built["hub"], workdir / "oidc", secret, redirect)
            cluster.started.append(provider)
            cluster.serving(provider, ["oidc"])
        for name in (f"{RELEASE}-postgres", f"{RELEASE}-s3"):
            cluster.wait_ready("StatefulSet", name, cluster.run("StatefulSet", name))
        code, log = cluster.wait_exit(cluster.run("Job", f"{RELEASE}-provision"))
        assert code == 0, log[-4000:]
        deployments = [n for k, n in kubeplay.workloads(manifests, ("Deployment",))]
        runs = {name: cluster.run("Deployment", name) for name in deployments}
        for name, run in runs.items():
            cluster.wait_ready("Deployment", name, run)
        # The pre-upgrade hook, as the next `helm upgrade` runs it (here with the same image: nothing to migrate).
        code, log = cluster.wait_exit(cluster.run("Job", f"{RELEASE}-migrate"))
        assert code == 0 and "team ocean: mlflow" in log and "already current" in log, log[-4000:]
        # What users see as up: the hub and the teams' servers through the proxy's Service.
        webflows.run_script(cluster.network, built["tracking"], webflows.READY, "http://proxy-public", "ocean", "land",
                            hosts=cluster.hosts)  # fmt: skip
        yield Release(cluster, request.param)


def test_the_release_runs_what_the_chart_renders(release: Release) -> None:
    """Every workload cubelab's chart and z2jh render for this release was started (none left out silently)."""
    started = {c.rsplit("-", 1)[0] for c in release.cluster.started}
    rendered = {name for _, name in kubeplay.workloads(release.cluster.m)}
    assert {"hub", "proxy", f"{RELEASE}-tracking-ocean", f"{RELEASE}-tracking-land"} <= rendered
    assert all(any(s.startswith(name) for s in started) for name in rendered), (rendered, started)


def test_users_log_in_to_zero_to_jupyterhubs_hub_and_reach_their_team(release: Release) -> None:
    """Local accounts: a member logs in with the first password from the chart's Secret (hashed by cubelab's hook
    in z2jh's hub). OIDC: the provider's login form, its groups claim making the teams. Either way the member
    reaches the team's tracking server through z2jh's proxy with a token, and another team's server refuses."""
    cluster = release.cluster
    passwords = {} if release.auth == "oidc" else {
        user: value.decode() for user, value in cluster.m.secret(f"{RELEASE}-users").items()}  # fmt: skip
    admin = cluster.m.secret(f"{RELEASE}-hub")["admin-token"].decode()
    try:
        webflows.check_logins_and_access(cluster.network, cluster.relay_image, "http://proxy-public", admin, passwords,
                                         hosts=cluster.hosts)  # fmt: skip
    except AssertionError as exc:
        logs = {name: cluster.podman("logs", name, check=False) for name in ("hub-hub", "proxy-chp")}
        raise AssertionError(f"{exc}\n" + "\n".join(f"--- {n}:\n{(d.stdout + d.stderr)[-2500:]}"
                                                     for n, d in logs.items())) from None  # fmt: skip


def test_platform_tests_pass_in_the_releases_test_pod(release: Release) -> None:
    """`helm test`: the chart's test pod, as rendered (its environment from the plan), runs platform_tests. After
    the logins above: with OIDC the teams' members are whoever the provider's claim put in them then."""
    suite = " ".join(nested.HELM_SUITE if release.auth == "local" else nested.HELM_OIDC_SUITE)
    command = ("python3 -m cubelab.provision describe /tmp/d.json && "
               f"CUBELAB_DEPLOYMENT=/tmp/d.json exec pytest -p no:cacheprovider --color=no -q -rs {suite}")  # fmt: skip
    # limits: the description tells platform_tests what a run without a cluster cannot do (delete hub users).
    cluster = release.cluster
    run = cluster.run("Pod", f"{RELEASE}-platform-tests", args=["bash", "-c", command],
                      env={"CUBELAB_LIMITS": "no-api-server"})  # fmt: skip
    code, out = cluster.wait_exit(run, timeout=900)
    print("\n".join(line for line in out.splitlines() if "SKIPPED" in line or " passed" in line))
    hub = cluster.podman("logs", "hub-hub", check=False)
    nested.check_run(out + "\nhub log:\n" + (hub.stdout + hub.stderr)[-3000:], code, f"helm-{release.auth}")
