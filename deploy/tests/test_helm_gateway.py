"""dask-gateway in the Helm chart (dask_gateway.enabled): the whole release rendered with the packaged
zero-to-jupyterhub and dask-gateway charts from ../shared/reference, every manifest validated (custom resources
against the CRDs the chart ships), and the gateway's config as rendered executed with traitlets' Config: what
the hub registers, where the gateway's token comes from, what each team's clusters get, and who may reach whom.
No cluster runs here; platform_tests would check a live release."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from test_helm import EXAMPLE, KUBERNETES, helm, with_dependencies
from traitlets.config import Config

from cubelab import plan
from cubelab.backends import kubernetes
from cubelab.config import load
from cubelab.gateway import kubernetes as gateway_kube
from cubelab.gateway.options import GIB

TEAMS = [{"name": "ocean", "members": ["alice", "bob"]}, {"name": "land", "members": ["bob", "carol"]}]


def render(chart: Path, tmp_path: Path, gateway: bool) -> tuple[Path, list[dict[str, Any]]]:
    config = yaml.safe_load(EXAMPLE.read_text()) | {"teams": TEAMS, "containers": {}}
    config["dask_gateway"] = {"enabled": gateway}
    (tmp_path / "cubelab.yaml").write_text(yaml.safe_dump(config))
    values = kubernetes.write(load(tmp_path / "cubelab.yaml"), tmp_path / "values.yaml")
    done = helm("template", "cubelab", str(chart), "-f", str(values), "--kube-version", KUBERNETES, "--include-crds")
    assert done.returncode == 0, done.stderr
    return values, [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_dependencies(tmp_path_factory)


@pytest.fixture(scope="module")
def release(chart: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("gateway")
    values, docs = render(chart, tmp, gateway=True)
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    hub_values = yaml.safe_load(base64.b64decode(named["Secret", "hub"]["data"]["values.yaml"]))
    settings = json.loads(hub_values["hub"]["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"])
    return SimpleNamespace(values=values, docs=docs, named=named, hub_values=hub_values, settings=settings,
                           text=yaml.safe_dump_all(docs))  # fmt: skip


def gateway_config(release: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The gateway's dask_gateway_config.py as the chart renders it, run as dask-gateway-server would."""
    script = release.named["ConfigMap", "api-cubelab-dask-gateway"]["data"]["dask_gateway_config.py"]
    pod = release.named["Deployment", "api-cubelab-dask-gateway"]["spec"]["template"]["spec"]
    for var in pod["containers"][0]["env"]:
        if "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
    c = Config()
    exec(compile(script, "dask_gateway_config.py", "exec"), {"c": c, "__file__": "/etc/dask-gateway/x.py"})  # noqa: S102
    return c


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions with In) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def cluster_pod_labels(team: str, component: str = "dask-worker") -> dict[str, str]:
    """The labels dask-gateway's controller gives a cluster's pod (its get_labels) with cubelab's team label."""
    return {"app.kubernetes.io/name": "dask-gateway", "app.kubernetes.io/component": component,
            "gateway.dask.org/instance": plan.helm_gateway_name("cubelab"), "gateway.dask.org/cluster": "c0ffee",
            gateway_kube.TEAM_LABEL: team}  # fmt: skip


def pod_labels(release: SimpleNamespace, kind: str, name: str) -> dict[str, str]:
    return release.named[kind, name]["spec"]["template"]["metadata"]["labels"]


def test_the_release_with_the_gateway_validates(release: SimpleNamespace) -> None:
    """Every manifest is valid for Kubernetes; traefik's and dask-gateway's custom resources for the CRDs the
    chart ships; and the gateway's objects are there, named by the plan."""
    crds = {(d["spec"]["group"], d["spec"]["names"]["kind"]): d for d in release.docs
            if d["kind"] == "CustomResourceDefinition"}  # fmt: skip
    custom = 0
    for doc in release.docs:
        group, version = doc["apiVersion"].rsplit("/", 1) if "/" in doc["apiVersion"] else ("", doc["apiVersion"])
        if (group, doc["kind"]) in crds:
            versions = {v["name"]: v for v in crds[group, doc["kind"]]["spec"]["versions"]}
            jsonschema.validate(doc, versions[version]["schema"]["openAPIV3Schema"])
            custom += 1
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    assert custom >= 3  # the IngressRoute and the Middlewares
    name = plan.helm_gateway_name("cubelab")
    for kind, object_name in (("Deployment", f"api-{name}"), ("Deployment", f"traefik-{name}"),
                              ("Deployment", f"controller-{name}"), ("Service", f"api-{name}"),
                              ("Service", f"traefik-{name}"), ("NetworkPolicy", "cubelab-dask-ocean")):  # fmt: skip
        assert (kind, object_name) in release.named
    # The addresses the hub and users' kernels are given name Services of the release, on ports they have.
    services = {n: d for (k, n), d in release.named.items() if k == "Service"}
    env = release.settings["team_env"]["ocean"]
    service_url = next(s["url"] for s in release.settings["services"] if s["name"] == "dask-gateway")
    for url in (service_url, env["DASK_GATEWAY__PROXY_ADDRESS"], env["DASK_GATEWAY__ADDRESS"]):
        parts = urlsplit(url)
        assert (parts.port or 80) in [p["port"] for p in services[parts.hostname]["spec"]["ports"]], url
    assert services[f"traefik-{name}"]["spec"]["type"] == "ClusterIP"


def test_the_gateways_token_comes_from_the_generated_secret_only(release: SimpleNamespace) -> None:
    ref = {"name": "cubelab-hub", "key": "gateway-token"}
    token = base64.b64decode(release.named["Secret", "cubelab-hub"]["data"]["gateway-token"]).decode()
    assert len(token) == 64
    gateway = release.named["Deployment", "api-cubelab-dask-gateway"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == ref
    assert release.hub_values["hub"]["extraEnv"][plan.GATEWAY_TOKEN]["valueFrom"]["secretKeyRef"] == ref
    # The dask-gateway chart's own token Secret is not made: the value would sit in the values.
    assert ("Secret", "api-cubelab-dask-gateway") not in release.named
    assert token not in release.text and token not in release.values.read_text()
    assert token not in json.dumps(release.hub_values)


def test_the_hub_registers_the_gateway_and_the_gateway_admits_its_scope_only(
    release: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = next(s for s in release.settings["services"] if s["name"] == "dask-gateway")
    assert service == {"name": "dask-gateway", "display": False, "url": "http://traefik-cubelab-dask-gateway:80",
                       "api_token": plan.ref(plan.GATEWAY_TOKEN)}  # fmt: skip
    role = release.hub_values["hub"]["loadRoles"]["dask-gateway-users"]
    assert role["scopes"] == ["access:services!service=dask-gateway"] and role["groups"] == ["ocean", "land"]
    c = gateway_config(release, monkeypatch)
    assert c.DaskGateway.authenticator_class == "dask_gateway_server.auth.JupyterHubAuthenticator"
    assert c.JupyterHubAuthenticator.jupyterhub_api_url == "http://hub:8081/hub/api"
    assert c.JupyterHubAuthenticator.jupyterhub_service_name == "dask-gateway"
    assert isinstance(c.KubeBackend.cluster_options, gateway_kube.KubeTeamOptions)
    env = release.settings["team_env"]["land"]
    assert env["DASK_GATEWAY__ADDRESS"] == "http://proxy-public/services/dask-gateway"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://traefik-cubelab-dask-gateway:80"
    assert env["DASK_GATEWAY__PUBLIC_ADDRESS"] == "http://localhost:8000/services/dask-gateway"


def test_each_teams_clusters_get_that_teams_secret_only(
    release: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options handler, as the rendered config installs it: bob (ocean and land) gets, for each team he
    picks, that team's image, label and storage variables from that team's Secret; no other Secret appears."""
    options = gateway_config(release, monkeypatch).KubeBackend.cluster_options
    bob = SimpleNamespace(name="bob", groups={"ocean", "land"}, admin=False)
    for team, other in (("ocean", "land"), ("land", "ocean")):
        config = options(bob).get_configuration({"team": team, "worker_cores": 1, "worker_memory": 2.0}, bob)
        assert set(config) <= set(gateway_kube.TeamKubeClusterConfig.class_trait_names()), set(config)
        assert config["image"] == "cubelab/notebook:latest" and config["environment"] == {}
        for part in ("scheduler", "worker"):
            assert config[f"{part}_extra_pod_labels"] == {"cubelab.io/team": team}
            env = config[f"{part}_extra_container_config"]["env"]
            secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
            assert secrets == {f"cubelab-team-{team}"}
            assert {"name": "S3_USER_STORAGE_BUCKET", "value": f"cubelab-{team}"} in env
        assert f"cubelab-team-{other}" not in json.dumps(config) and f"cubelab-{other}" not in json.dumps(config)
    carol = SimpleNamespace(name="carol", groups={"land"}, admin=False)
    with pytest.raises(ValueError, match="not a valid option"):
        options(carol).parse_options({"team": "ocean"})
    # Clusters run the dask of the notebook image's kernel environment.
    assert release.named["Deployment", "api-cubelab-dask-gateway"]  # rendered
    settings = json.loads(next(e["value"] for e in release.named["Deployment", "api-cubelab-dask-gateway"]["spec"][
        "template"]["spec"]["containers"][0]["env"] if e["name"] == plan.GATEWAY_SETTINGS_VAR))  # fmt: skip
    assert settings["worker_cmd"] == ["/opt/conda/envs/cubelab-sklearn/bin/dask", "worker"]


def test_network_policies_admit_users_to_the_proxy_and_keep_teams_apart(release: SimpleNamespace) -> None:
    policies = {n: d["spec"] for (k, n), d in release.named.items() if k == "NetworkPolicy"}
    traefik = pod_labels(release, "Deployment", "traefik-cubelab-dask-gateway")
    user_pod = {"component": "singleuser-server", "release": "cubelab", "app": "jupyterhub",
                **release.hub_values["singleuser"]["extraLabels"]}  # fmt: skip
    # users' pods may send to the proxy (their own egress policy, z2jh's) ...
    egress = [r for r in policies["singleuser"]["egress"] if r.get("to") and r["to"][0].get("podSelector")]
    assert any(selects(r["to"][0]["podSelector"], traefik) and {"port": 8000, "protocol": "TCP"} in r["ports"]
               for r in egress)  # fmt: skip
    # ... and the proxy admits them, and the hub's proxy, and nobody else.
    proxy = policies["cubelab-dask-proxy"]
    assert selects(proxy["podSelector"], traefik)
    sources = proxy["ingress"][0]["from"]
    assert any(selects(s["podSelector"], user_pod) for s in sources)
    assert not any(selects(s["podSelector"], cluster_pod_labels("ocean")) for s in sources)
    # The gateway reaches the hub's API (z2jh's hub policy admits pods labelled for it).
    gateway = pod_labels(release, "Deployment", "api-cubelab-dask-gateway")
    hub_sources = [s for rule in policies["hub"]["ingress"] for s in rule.get("from", [])]
    assert any(selects(s["podSelector"], gateway) for s in hub_sources if "podSelector" in s)
    # A team's schedulers and workers: their policy selects them, not the other team's, and lets in and out
    # only their own team's pods, the gateway, S3 and DNS.
    for team, other in (("ocean", "land"), ("land", "ocean")):
        spec = policies[f"cubelab-dask-{team}"]
        assert selects(spec["podSelector"], cluster_pod_labels(team, "dask-scheduler"))
        assert not selects(spec["podSelector"], cluster_pod_labels(other))
        assert not selects(spec["podSelector"], traefik)
        rules = spec["ingress"] + spec["egress"]
        peers = [p["podSelector"] for r in rules for p in r.get("to", r.get("from", [])) if "podSelector" in p]
        assert any(selects(p, cluster_pod_labels(team)) for p in peers)
        assert not any(selects(p, cluster_pod_labels(other)) for p in peers)
        assert not any(selects(p, user_pod) for p in peers)
        s3 = pod_labels(release, "StatefulSet", "cubelab-s3")
        assert any(selects(p, s3) for rule in spec["egress"] for p in rule.get("to", []) if "podSelector" in p)


def test_off_by_default_nothing_of_the_gateway_is_rendered(chart: Path, tmp_path: Path) -> None:
    values, docs = render(chart, tmp_path, gateway=False)
    assert yaml.safe_load(values.read_text())["daskGateway"] == {"enabled": False}
    names = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
    assert not [n for n in names if "dask" in n.lower() or "traefik" in n.lower()], names
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert "gateway-token" not in named["Secret", "cubelab-hub"]["data"]
    hub_values = yaml.safe_load(base64.b64decode(named["Secret", "hub"]["data"]["values.yaml"]))
    assert "DASK_GATEWAY" not in hub_values["hub"]["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"]
    assert plan.GATEWAY_TOKEN not in hub_values["hub"]["extraEnv"]


def test_a_team_choice_maps_to_its_pods_configuration() -> None:
    """cubelab.gateway.kubernetes alone: the chosen team's image, labels and env, and its per-user limits."""
    env = [{"name": "TEAM_LAND_S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": "lab-team-land", "key": "k"}}},
           {"name": "AWS_SECRET_ACCESS_KEY", "value": "$(TEAM_LAND_S3_SECRET_KEY)"}]  # fmt: skip
    limits = {"worker_cores_min": 1, "worker_cores_max": 4, "worker_cores": 2, "worker_memory_gib_min": 1,
              "worker_memory_gib_max": 8, "worker_memory_gib": 2, "max_workers_per_cluster": 6,
              "max_workers_per_user": 8, "max_clusters_per_user": 2, "idle_timeout_seconds": 60}  # fmt: skip
    teams = {"land": {"limits": limits, "image": "reg/notebook:1", "env": env},
             "ocean": {"limits": limits, "image": "reg/notebook:1", "env": []}}  # fmt: skip
    options = gateway_kube.KubeTeamOptions(teams)
    dana = SimpleNamespace(name="dana", groups={"land", "ocean"}, admin=False)
    config = options(dana).get_configuration({"team": "land", "worker_cores": 3, "worker_memory": 4.0}, dana)
    assert config["worker_cores"] == 3 and config["worker_memory"] == 4 * GIB and config["cluster_max_workers"] == 6
    assert config["worker_extra_container_config"] == config["scheduler_extra_container_config"] == {"env": env}
    assert config["worker_extra_pod_labels"] == {"cubelab.io/team": "land"} and config["image"] == "reg/notebook:1"
    assert (config["team"], config["max_workers_per_user"], config["max_clusters_per_user"]) == ("land", 8, 2)
    assert gateway_kube.TeamKubeClusterConfig(**config).max_workers_per_user == 8  # every key is a trait
    config["worker_extra_container_config"]["env"].append({"name": "X", "value": "y"})
    assert len(teams["land"]["env"]) == 2  # each cluster gets its own copy
    with pytest.raises(ValueError, match="team land: worker_cores must be between 1 and 4, not 5"):
        options(dana).get_configuration({"team": "land", "worker_cores": 5, "worker_memory": 4.0}, dana)
    c = Config()
    settings = {"teams": teams, "scheduler_cmd": ["d", "scheduler"], "worker_cmd": ["d", "worker"]}
    gateway_kube.configure(c, {plan.GATEWAY_SETTINGS_VAR: json.dumps(settings)})
    assert c.KubeClusterConfig.worker_cmd == ["d", "worker"] and c.KubeBackend.cluster_options.teams == teams
    assert c.DaskGateway.backend_class == "cubelab.gateway.kubernetes.TeamKubeBackend"


class _Objects:
    """The Kubernetes API's custom objects, as far as KubeBackend's heartbeat and start use them: what was
    written (a unit test of TeamKubeBackend's limits; no cluster here)."""

    def __init__(self) -> None:
        self.patches: dict[str, int] = {}
        self.created: list[dict[str, Any]] = []

    async def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                             name: str, body: list[dict[str, Any]]) -> None:  # fmt: skip
        assert body[0]["path"] == "/spec/replicas"
        self.patches[f"{namespace}.{name}"] = body[0]["value"]

    async def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                              obj: dict[str, Any]) -> None:  # fmt: skip
        self.created.append(obj)


def _kube_backend(clusters: dict[str, dict[str, Any]], teams: dict[str, Any]) -> gateway_kube.TeamKubeBackend:
    """A TeamKubeBackend with the state KubeBackend.setup would have made, for clusters name -> {owner, replicas}."""
    from dask_gateway_server import models

    backend = gateway_kube.TeamKubeBackend(cluster_options=gateway_kube.KubeTeamOptions(teams))
    backend.custom_client = _Objects()
    backend.clusters, backend.username_to_clusters = {}, {}
    specs = {}
    for name, spec in clusters.items():
        config = {"cluster_max_workers": 4, "max_workers_per_user": 5, "max_clusters_per_user": 2, "team": "land"}
        cluster = models.Cluster(name=name, username=spec["owner"], token="", options={}, config=config,
                                 status=models.ClusterStatus.RUNNING)  # fmt: skip
        backend.clusters[name] = cluster
        backend.username_to_clusters.setdefault(spec["owner"], {})[name] = cluster
        specs[name] = {"spec": {"replicas": spec["replicas"]}}
    backend.informer = SimpleNamespace(get=specs.get)
    return backend


def test_the_kubernetes_backend_holds_the_per_user_limits() -> None:
    """dana's two clusters share her 5 workers (max_workers_per_user), each at most 4 (cluster_max_workers);
    carol's cluster does not count against dana's; a third cluster is refused (max_clusters_per_user 2)."""
    import asyncio

    from dask_gateway_server.backends.base import PublicException

    limits = {"worker_cores_min": 1, "worker_cores_max": 4, "worker_cores": 1, "worker_memory_gib_min": 1,
              "worker_memory_gib_max": 8, "worker_memory_gib": 2, "max_workers_per_cluster": 4,
              "max_workers_per_user": 5, "max_clusters_per_user": 2, "idle_timeout_seconds": 60}  # fmt: skip
    teams = {"land": {"limits": limits, "image": "reg/notebook:1", "env": []}}
    backend = _kube_backend({"ns.a": {"owner": "dana", "replicas": 3}, "ns.b": {"owner": "dana", "replicas": 0},
                             "ns.c": {"owner": "carol", "replicas": 4}}, teams)  # fmt: skip
    beat = {"active_workers": [], "closing_workers": [], "closed_workers": []}

    async def scenario() -> dict[str, int]:
        await backend.on_cluster_heartbeat("ns.b", beat | {"count": 4})  # a has 3 (its object): b may have 2
        first = dict(backend.custom_client.patches)
        await backend.on_cluster_heartbeat("ns.a", beat | {"count": 1})  # a shrinks: b may grow to 4
        await backend.on_cluster_heartbeat("ns.b", beat | {"count": 4})
        await backend.on_cluster_heartbeat("ns.c", beat | {"count": 9})  # carol: her cluster's own cap only
        return first

    first = asyncio.run(scenario())
    assert first == {"ns.b": 2}
    assert backend.custom_client.patches == {"ns.a": 1, "ns.b": 4, "ns.c": 4}
    dana = SimpleNamespace(name="dana", groups={"land"}, admin=False)
    options = {"team": "land", "worker_cores": 1, "worker_memory": 2.0}
    with pytest.raises(PublicException, match="dana already runs 2 cluster"):
        asyncio.run(backend.start_cluster(dana, options))
    assert backend.custom_client.created == []
