"""The Helm chart, run: `cubelab render helm` values, rendered by `helm template` with zero-to-jupyterhub 4.4.0 as
the dependency (../shared/reference/charts, nothing fetched), and the rendered pod templates run with podman as
kubelet would (deploy/tests/kubeplay.py): the chart's Postgres and SeaweedFS, the provisioning Job, the tracking
servers, zero-to-jupyterhub's hub running its own jupyterhub_config.py with the chart's values and cubelab's
hook, its proxy, and the chart's `helm test` pod running platform_tests against the release.

Departures, each because of what this machine has: images are cubelab's own, built here, and stand-ins for the
ones no registry can give (Postgres, SeaweedFS; z2jh's proxy image is replaced by the hub image, which has the
same configurable-http-proxy); z2jh's cluster helpers (image pullers, user scheduler, placeholders) are turned
off in the site values. Not covered, and kept as static checks in test_helm.py: NetworkPolicy enforcement
(every pod reaches every other here), RBAC, and KubeSpawner spawning users' pods (no API server), so the
platform_tests that need a user's server are not in the selection the test pod runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubeplay  # deploy/tests/kubeplay.py
import podman_images as containers  # deploy/tests/podman_images.py
import pytest
import yaml

from cubelab.backends import kubernetes
from cubelab.config import load
from cubelab.install import services_env
from cubelab.scratch import use_shared_installs

ROOT = Path(__file__).resolve().parents[2]
HELM = Path(sys.prefix) / "tools" / "helm"
Z2JH_CHART = ROOT.parent / "shared" / "reference" / "charts" / "jupyterhub-4.4.0.tgz"
RELEASE = "cubelab"
# What the release's test pod runs here: platform_tests that need no user server (see the module docstring).
SUITE = [f"platform_tests/test_{name}.py" for name in ("tracking", "storage", "access", "artifacts")]
# z2jh's helpers for a real cluster's scheduling and image pulls: nothing to do without one.
SITE = {
    "jupyterhub": {
        "prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False}},
        "scheduling": {"userScheduler": {"enabled": False}, "userPlaceholder": {"enabled": False}},
    }
}
CHP_IMAGE = "quay.io/jupyterhub/configurable-http-proxy:5.2.0"


def render(tmp: Path) -> kubeplay.Manifests:
    if not Z2JH_CHART.exists():
        pytest.skip(f"{Z2JH_CHART} is not here (a user's clone has no ../shared): the packaged z2jh chart")
    config = yaml.safe_load((ROOT / "cubelab.example.yaml").read_text())
    # Users reach the hub at the proxy's Service, from the test pod on the same network.
    config["containers"] = {"registry": "localhost/cubelab", "tag": "test", "public_url": "http://proxy-public"}
    (tmp / "cubelab.yaml").write_text(yaml.safe_dump(config))
    values = kubernetes.write(load(tmp / "cubelab.yaml"), tmp / "values.yaml", RELEASE)
    (tmp / "site.yaml").write_text(yaml.safe_dump(SITE))
    chart = tmp / "chart"
    shutil.copytree(ROOT / "helm" / "cubelab", chart)
    (chart / "charts").mkdir(exist_ok=True)
    shutil.copy(Z2JH_CHART, chart / "charts")
    done = subprocess.run([str(HELM), "template", RELEASE, str(chart), "-f", str(values), "-f", str(tmp / "site.yaml")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return kubeplay.Manifests([d for d in yaml.safe_load_all(done.stdout) if d])


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kubeplay.Cluster]:
    containers.require_containers()
    use_shared_installs()
    tmp = tmp_path_factory.mktemp("helm-run")
    manifests = render(tmp)
    weed = services_env(Path(os.environ["CUBELAB_INSTALL_DIR"]), print) / "bin" / "weed"
    stand_ins = containers.stand_ins(tmp_path_factory.mktemp("seaweedfs"), weed)
    built = {name: containers.build(name) for name in ("tracking", "hub", "platform-tests")}
    postgres_image = manifests.pod_template("StatefulSet", f"{RELEASE}-postgres")["spec"]["containers"][0]["image"]
    s3_image = manifests.pod_template("StatefulSet", f"{RELEASE}-s3")["spec"]["containers"][-1]["image"]
    images = {postgres_image: stand_ins["postgres"], s3_image: stand_ins["seaweedfs"], CHP_IMAGE: built["hub"]}
    workdir = tmp_path_factory.mktemp("pods")
    workdir.chmod(0o755)
    with kubeplay.Cluster(manifests, containers.podman, images, workdir, relay_image=built["tracking"]) as cluster:
        for name in (f"{RELEASE}-postgres", f"{RELEASE}-s3"):
            cluster.wait_ready("StatefulSet", name, cluster.run("StatefulSet", name))
        code, log = cluster.wait_exit(cluster.run("Job", f"{RELEASE}-provision"))
        assert code == 0, log[-4000:]
        deployments = [n for k, n in kubeplay.workloads(manifests, ("Deployment",))]
        runs = {name: cluster.run("Deployment", name) for name in deployments}
        for name, run in runs.items():
            cluster.wait_ready("Deployment", name, run)
        yield cluster


def test_the_release_runs_what_the_chart_renders(release: kubeplay.Cluster) -> None:
    """Every workload cubelab's chart and z2jh render for this release was started (none left out silently)."""
    started = {c.rsplit("-", 1)[0] for c in release.started}
    rendered = {name for _, name in kubeplay.workloads(release.m)}
    assert {"hub", "proxy", f"{RELEASE}-tracking-ocean", f"{RELEASE}-tracking-land"} <= rendered
    assert all(any(s.startswith(name) for s in started) for name in rendered), (rendered, started)


def test_platform_tests_pass_in_the_releases_test_pod(release: kubeplay.Cluster) -> None:
    """`helm test`: the chart's test pod, as rendered (its environment from the plan), runs platform_tests."""
    command = ("python3 -m cubelab.provision describe /tmp/d.json && "
               f"CUBELAB_DEPLOYMENT=/tmp/d.json exec pytest -p no:cacheprovider -q -rs {' '.join(SUITE)}")  # fmt: skip
    run = release.run("Pod", f"{RELEASE}-platform-tests", args=["bash", "-c", command])
    code, out = release.wait_exit(run, timeout=900)
    print("\n".join(line for line in out.splitlines() if "SKIPPED" in line or " passed" in line))
    assert code == 0, out[-6000:]
    summary = [line for line in out.splitlines() if " passed" in line]
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], out[-3000:]


def _from_inside(release: kubeplay.Cluster, script: str) -> str:
    """Run a Python script in a container on the release's network (a user's browser or kernel would be there)."""
    done = release.podman("run", "--rm", "--network", release.network, release.relay_image, "python3", "-c", script,
                          check=False, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_users_log_in_to_zero_to_jupyterhubs_hub_and_reach_their_team(release: kubeplay.Cluster) -> None:
    """A member logs in with the first password from the chart's Secret (hashed by cubelab's hook in z2jh's
    hub) and reaches the team's tracking server through z2jh's proxy with a token; another team's is refused."""
    secret = release.m.secret(f"{RELEASE}-users")
    admin = release.m.secret(f"{RELEASE}-hub")["admin-token"].decode()
    script = f"""
import requests
hub = "http://proxy-public"
s = requests.Session()
page = s.get(hub + "/hub/login", timeout=10)
xsrf = s.cookies.get("_xsrf")
r = s.post(hub + "/hub/login?next=", data={{"username": "alice", "password": {secret["alice"].decode()!r},
           "_xsrf": xsrf}}, allow_redirects=False, timeout=10)
print("login", r.status_code)
admin = {{"Authorization": "token {admin}"}}
groups = requests.get(hub + "/hub/api/groups", headers=admin, timeout=10).json()
print("groups", sorted((g["name"], sorted(g["users"])) for g in groups))
token = requests.post(hub + "/hub/api/users/alice/tokens", headers=admin, json={{"expires_in": 300}}, timeout=10)
bearer = {{"Authorization": "Bearer " + token.json()["token"]}}
for team in ("ocean", "land"):
    r = requests.post(hub + f"/services/mlflow-{{team}}/api/2.0/mlflow/experiments/search", headers=bearer,
                      json={{"max_results": 1}}, timeout=10)
    print(team, r.status_code)
"""
    out = dict(line.split(" ", 1) for line in _from_inside(release, script).splitlines())
    assert out["login"] == "302", out
    assert out["groups"] == str([("land", ["bob", "carol"]), ("ocean", ["alice", "bob"])])
    assert out["ocean"] == "200" and out["land"] == "403", out
