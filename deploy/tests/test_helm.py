"""helm/cubelab with the values `cubelab render helm` makes: helm lint and helm template with several values files,
every manifest valid for a current Kubernetes (kubernetes-validate --strict), team resources matching the
platform config, the values passed to zero-to-jupyterhub valid against that chart's schema, and the hub hook
(cubelab.hub.kubernetes) doing what the values promise.

The zero-to-jupyterhub chart cannot be downloaded here, so the chart is linted and rendered from a copy without
its dependency entry: everything cubelab owns renders; the hub's part is checked against z2jh's values schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import reference  # deploy/tests/reference.py
import yaml

from cubelab import plan, storage
from cubelab.backends import kubernetes
from cubelab.config import load
from cubelab.hub.kubernetes import TeamProfiles, expand, write_first_passwords
from cubelab.passwords import PasswordFile

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cubelab"
EXAMPLE = ROOT / "cubelab.example.yaml"
HELM = Path(sys.prefix) / "tools" / "helm"
Z2JH_SCHEMA = ROOT.parent / "shared" / "reference" / "z2jh-values.schema.yaml"
KUBERNETES = "1.36.0"
# The platform config's containers.postgres / containers.s3: none (bundled), or external servers.
BUNDLED: dict[str, Any] = {}
EXTERNAL = {"postgres": {"host": "db.example.org"}, "s3": {"endpoint": "https://s3.example.org"}}


def copy_chart(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: `make test` installs it (python deploy/cubelab/prereqs.py --tools)")
    copy = tmp_path_factory.mktemp(name) / "cubelab"
    shutil.copytree(CHART, copy)
    return copy


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart without its zero-to-jupyterhub and dask-gateway dependency entries (not downloadable
    here)."""
    copy = copy_chart(tmp_path_factory, "chart")
    meta = yaml.safe_load((copy / "Chart.yaml").read_text())
    assert [d["name"] for d in meta.pop("dependencies")] == ["jupyterhub", "dask-gateway"]
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return copy


def team_values(
    tmp_path: Path, teams: list[dict[str, Any]] | None = None, release: str = "cubelab", services: dict | None = None
) -> Path:
    config = yaml.safe_load(EXAMPLE.read_text())
    if teams is not None:
        config["teams"] = teams
    config["containers"] = dict(services or {})
    (tmp_path / "cubelab.yaml").write_text(yaml.safe_dump(config))
    return kubernetes.write(load(tmp_path / "cubelab.yaml"), tmp_path / "values.yaml", release)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=False)


def template(chart: Path, values: Path, site: dict[str, Any], tmp_path: Path, release: str = "cubelab") -> list[dict]:
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    done = helm("template", release, str(chart), "-f", str(values), "-f", str(tmp_path / "site.yaml"),
                "--kube-version", KUBERNETES)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("site", [BUNDLED, EXTERNAL], ids=["bundled", "external"])
def test_lint_and_every_manifest_valid(chart: Path, tmp_path: Path, site: dict[str, Any]) -> None:
    values = team_values(tmp_path, services=site)
    lint = helm("lint", "--strict", str(chart), "-f", str(values))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = template(chart, values, {}, tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    kinds = sorted({d["kind"] for d in docs})
    expected = ["Deployment", "Job", "NetworkPolicy", "Pod", "Secret", "Service"]
    assert kinds == sorted(expected + (["StatefulSet"] if site is BUNDLED else []))


def test_gc_cronjobs_run_the_plans_command_in_each_teams_environment(chart: Path, tmp_path: Path) -> None:
    values = team_values(tmp_path)
    assert not any(d["kind"] == "CronJob" for d in template(chart, values, {}, tmp_path))  # off by default
    docs = template(chart, values, {"gc": {"enabled": True, "olderThanDays": 7}}, tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    rendered = {t["name"]: t for t in yaml.safe_load(values.read_text())["teams"]}
    for team in ("ocean", "land"):
        pod = named["CronJob", f"cubelab-gc-{team}"]["spec"]["jobTemplate"]["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert container["command"] == [*plan.GC_COMMAND, "--older-than", "7"]
        assert container["env"] == rendered[team]["trackingEnv"]  # the team's own credentials, no other's
        assert pod["metadata"]["labels"]["cubelab.io/team"] == team
    sources = named["NetworkPolicy", "cubelab-postgres"]["spec"]["ingress"][0]["from"]
    assert {"app.kubernetes.io/instance": "cubelab", "app.kubernetes.io/component": "gc"} in [
        s["podSelector"]["matchLabels"] for s in sources]  # fmt: skip


def test_backup_cronjob_runs_the_plans_job_onto_its_volume_or_s3(chart: Path, tmp_path: Path) -> None:
    values = team_values(tmp_path)
    docs = template(chart, values, {"backup": {"enabled": True}}, tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    pod = named["CronJob", "cubelab-backup"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == [*plan.BACKUP_COMMAND, "backup", "--to", "/backups"]
    names = {e["name"] for e in container["env"]}
    assert {"POSTGRES_PASSWORD", "TEAM_OCEAN_DB_PASSWORD", "TEAM_LAND_S3_SECRET_KEY"} <= names
    assert not any(n.startswith("S3_ADMIN_") for n in names)  # the teams' own keys only
    assert container["volumeMounts"] == [{"name": "backups", "mountPath": "/backups"}]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cubelab-backups"
    claim = named["PersistentVolumeClaim", "cubelab-backups"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    sources = named["NetworkPolicy", "cubelab-postgres"]["spec"]["ingress"][0]["from"]
    assert {"app.kubernetes.io/instance": "cubelab", "app.kubernetes.io/component": "backup"} in [
        s["podSelector"]["matchLabels"] for s in sources]  # fmt: skip
    extra = [{"name": "AWS_ENDPOINT_URL", "value": "https://s3.example.org"}]
    to_s3 = template(chart, values, {"backup": {"enabled": True, "to": "s3://backups/cubelab", "env": extra}},
                     tmp_path)  # fmt: skip
    job = next(d for d in to_s3 if d["kind"] == "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "volumes" not in job and not any(d["kind"] == "PersistentVolumeClaim" for d in to_s3)
    assert job["containers"][0]["command"][-1] == "s3://backups/cubelab" and job["containers"][0]["env"][-1] == extra[0]
    bad = helm("template", "cubelab", str(chart), "-f", str(values), "--set", "backup.enabled=true",
               "--set", "backup.to=relative/path")  # fmt: skip
    assert bad.returncode != 0 and "/backup/to" in bad.stderr


def test_a_pre_upgrade_hook_migrates_the_team_databases(chart: Path, tmp_path: Path) -> None:
    docs = template(chart, team_values(tmp_path), {}, tmp_path)
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    job = named["Job", "cubelab-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"  # before the new tracking pods
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == list(plan.MIGRATE_COMMAND)
    env = {e["name"]: e for e in container["env"]}
    assert env["CUBELAB_TEAMS"]["value"] == "ocean land" and "POSTGRES_PASSWORD" in env
    assert not any("S3" in name or name.endswith("_DB_PASSWORD") for name in env)  # Postgres's superuser only
    sources = named["NetworkPolicy", "cubelab-postgres"]["spec"]["ingress"][0]["from"]
    assert {"app.kubernetes.io/instance": "cubelab", "app.kubernetes.io/component": "migrate"} in [
        s["podSelector"]["matchLabels"] for s in sources]  # fmt: skip


def test_bundled_s3_admits_only_its_s3_api(chart: Path, tmp_path: Path) -> None:
    """SeaweedFS runs with the arguments every target shares (cubelab.storage), and its NetworkPolicy admits the
    S3 port and nothing else: its internal servers and gRPC ports ignore the teams' identities."""
    docs = template(chart, team_values(tmp_path), BUNDLED, tmp_path)
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    pod = named["StatefulSet", "cubelab-s3"]["spec"]["template"]
    weed = next(c for c in pod["spec"]["containers"] if c["name"] == "seaweedfs")
    assert weed["args"] == storage.container_args()
    policy = named["NetworkPolicy", "cubelab-s3"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": storage.CONTAINER_PORTS["s3"], "protocol": "TCP"}]}]


def test_strict_validation_can_fail() -> None:
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 80}], "selektor": {"a": "b"}}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def test_team_resources_follow_the_platform_config(chart: Path, tmp_path: Path) -> None:
    teams = [{"name": "ocean", "members": ["alice", "bob"]}, {"name": "land", "members": ["bob", "carol"]},
             {"name": "sea-ice", "members": ["carol"], "gpu": True}]  # fmt: skip
    docs = template(chart, team_values(tmp_path, teams), BUNDLED, tmp_path)
    by_kind: dict[str, set[str]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], set()).add(d["metadata"]["name"])
    for team in ("ocean", "land", "sea-ice"):
        for kind in ("Deployment", "Service", "NetworkPolicy"):
            assert f"cubelab-tracking-{team}" in by_kind[kind]
        assert f"cubelab-team-{team}" in by_kind["Secret"]
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment = named["Deployment", "cubelab-tracking-sea-ice"]
    listed = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    env = {e["name"]: e for e in listed}
    assert env["CUBELAB_BACKEND_STORE_URI"]["value"] == (
        "postgresql+psycopg2://team_sea_ice:$(TEAM_SEA_ICE_DB_PASSWORD)@cubelab-postgres:5432/mlflow_sea_ice"
        "?require_auth=scram-sha-256"
    )
    assert env["CUBELAB_ARTIFACTS_DESTINATION"]["value"] == "s3://cubelab-sea-ice/mlflow"
    assert env["AWS_SECRET_ACCESS_KEY"]["value"] == "$(TEAM_SEA_ICE_S3_SECRET_KEY)"
    assert env["TEAM_SEA_ICE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "cubelab-team-sea-ice",
                                                                             "key": "s3-secret-key"}  # fmt: skip
    # The plan's commands, placed by the templates (cubelab.plan.tracking_service and the one-shot jobs).
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"] == ["python3", "-m",
                                                                                  "cubelab.tracking.serve"]  # fmt: skip
    job = named["Job", "cubelab-provision"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][:4] == ["python3", "-m", "cubelab.provision", "all"]
    s3 = named["StatefulSet", "cubelab-s3"]["spec"]["template"]["spec"]["initContainers"][0]
    assert s3["command"][:4] == ["python3", "-m", "cubelab.provision", "s3-identities"]
    # kubelet expands $(NAME) only for variables defined earlier in the list: every secret comes first.
    order = [e["name"] for e in listed]
    assert order.index("TEAM_SEA_ICE_DB_PASSWORD") < order.index("CUBELAB_BACKEND_STORE_URI")
    # Only the team's users' pods (and the hub, proxy, helm test) reach its tracking server.
    policy = named["NetworkPolicy", "cubelab-tracking-land"]
    sources = [p["podSelector"]["matchLabels"] for p in policy["spec"]["ingress"][0]["from"]]
    assert {"component": "singleuser-server", "cubelab.io/team": "land"} in sources
    assert not any(s.get("cubelab.io/team") not in (None, "land") for s in sources)
    # No secret value is in the values file; Secrets are generated.
    secret = named["Secret", "cubelab-team-ocean"]
    assert set(secret["data"]) == {"db-password", "s3-access-key", "s3-secret-key", "hub-token"}
    values_text = (tmp_path / "values.yaml").read_text()
    assert not any(v in values_text for v in secret["data"].values())


def test_hub_values_register_teams_and_pass_the_z2jh_schema(tmp_path: Path) -> None:
    teams = [{"name": "ocean", "members": ["alice", "bob"]}, {"name": "land", "members": ["bob", "carol"], "gpu": True}]
    values = yaml.safe_load(team_values(tmp_path, teams).read_text())
    hub = values["jupyterhub"]["hub"]
    assert hub["loadRoles"]["team-ocean"] == {
        "description": "members of team ocean: use its tracking server",
        "scopes": ["access:services!service=mlflow-ocean"],
        "groups": ["ocean"],
    }
    settings = json.loads(hub["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"])
    services = {s["name"]: s for s in settings["services"]}
    assert services["mlflow-land"]["url"] == "http://cubelab-tracking-land:5000"
    assert services["mlflow-land"]["api_token"] == "$(TEAM_LAND_HUB_TOKEN)"
    assert hub["extraEnv"]["TEAM_LAND_HUB_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "cubelab-team-land", "key": "hub-token"}  # fmt: skip
    slugs = [p["slug"] for p in values["jupyterhub"]["singleuser"]["profileList"]]
    assert slugs == ["ocean-cpu", "land-cpu", "land-gpu"]  # GPU only for the team allowed
    reference.require(Z2JH_SCHEMA)
    schema = _without_required(yaml.safe_load(Z2JH_SCHEMA.read_text()))
    validator = jsonschema.Draft7Validator(schema)
    assert not [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(values["jupyterhub"])]
    broken = json.loads(json.dumps(values["jupyterhub"]))
    broken["hub"]["extraConfg"] = {}  # the schema catches a typo'd key
    assert any("extraConfg" in e.message for e in validator.iter_errors(broken))


def _without_required(schema: Any) -> Any:
    """z2jh's schema requires keys its own values.yaml supplies; we check the keys we pass exist and are typed."""
    if isinstance(schema, dict):
        return {k: _without_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_without_required(v) for v in schema]
    return schema


def test_values_schema_and_release_checks(chart: Path, tmp_path: Path) -> None:
    values = team_values(tmp_path)
    base = ["template", "x", str(chart), "-f", str(values)]
    other = helm("template", "other", *base[2:])
    assert other.returncode != 0 and "rendered for release" in other.stderr
    bad_team = helm(*base[:1], "cubelab", *base[2:], "--set", "teams[0].name=Bad_Name")
    assert bad_team.returncode != 0 and "teams/0/name" in bad_team.stderr
    # Values not rendered by cubelab (no tracking environment) are refused, not deployed half-configured.
    bare = helm("template", "cubelab", str(chart), "--set", "teams[0].name=ocean",
                "--set", "teams[0].serviceUrl=http://x")  # fmt: skip
    assert bare.returncode != 0 and "trackingEnv" in bare.stderr


def test_a_broken_template_fails(chart: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(chart, broken)
    path = broken / "templates" / "tracking" / "service.yaml"
    path.write_text(path.read_text().replace("{{- end }}", ""))
    done = helm("lint", str(broken), "-f", str(team_values(tmp_path)))
    assert done.returncode != 0


def test_hub_hook_expands_secrets_and_narrows_profiles(tmp_path: Path) -> None:
    settings = {"token": "$(TEAM_OCEAN_HUB_TOKEN)", "list": ["a-$(X)-b"], "plain": "no refs"}
    assert expand(settings, {"TEAM_OCEAN_HUB_TOKEN": "t0k", "X": "x"}) == {
        "token": "t0k", "list": ["a-x-b"], "plain": "no refs"}  # fmt: skip
    with pytest.raises(KeyError, match="TEAM_OCEAN_HUB_TOKEN"):
        expand(settings, {"X": "x"})
    profiles = TeamProfiles([{"slug": "ocean-cpu"}, {"slug": "land-cpu"}, {"slug": "land-gpu"}])
    bob = SimpleNamespace(user=SimpleNamespace(groups=[SimpleNamespace(name="land")]))
    assert [p["slug"] for p in profiles(bob)] == ["land-cpu", "land-gpu"]
    passwords = tmp_path / "passwords.json"
    assert write_first_passwords(passwords, ["alice", "bob"], {"USER_ALICE_PASSWORD": "first-a"}) == 1
    assert PasswordFile(passwords).check("alice", "first-a")
    PasswordFile(passwords).set("alice", "changed")
    assert write_first_passwords(passwords, ["alice"], {"USER_ALICE_PASSWORD": "first-a"}) == 0
    assert PasswordFile(passwords).check("alice", "changed")


def test_cli_render_helm(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "cubelab.yaml")
    out = tmp_path / "v.yaml"
    command = [sys.executable, "-m", "cubelab", "-c", str(tmp_path / "cubelab.yaml"), "render", "helm"]
    done = subprocess.run([*command, "-o", str(out), "--release", "lab"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(out.read_text())["renderedForRelease"] == "lab"
    done = subprocess.run([*command, "--release", "Not_A_Release"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "not a valid Helm release name" in done.stderr


Z2JH_CHART = ROOT.parent / "shared" / "reference" / "charts" / "jupyterhub-4.4.0.tgz"
DASK_GATEWAY_CHART = ROOT.parent / "shared" / "reference" / "charts" / "dask-gateway-2026.3.0.tgz"


def with_dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart with zero-to-jupyterhub 4.4.0 and dask-gateway 2026.3.0 as its dependencies, supplied from
    ../shared/reference (no fetch)."""
    reference.require(Z2JH_CHART, DASK_GATEWAY_CHART)
    copy = copy_chart(tmp_path_factory, "release")
    (copy / "charts").mkdir(exist_ok=True)
    for packaged in (Z2JH_CHART, DASK_GATEWAY_CHART):
        shutil.copy(packaged, copy / "charts")
    return copy


@pytest.fixture(scope="module")
def release_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_dependencies(tmp_path_factory)


OIDC = {"type": "oidc", "client_id": "cubelab", "client_secret_file": "/run/secrets/oidc",
        "authorize_url": "https://idp.example.org/auth", "token_url": "https://idp.example.org/token",
        "userdata_url": "https://idp.example.org/userinfo"}  # fmt: skip


@pytest.mark.parametrize(("auth", "expected"), [
    (None, "cubelab.hub.auth.LocalPasswordAuthenticator"), (OIDC, "generic-oauth"),
])  # fmt: skip
def test_zero_to_jupyterhubs_hub_runs_the_authenticator_the_config_names(
    release_chart: Path, tmp_path: Path, auth: dict[str, Any] | None, expected: str
) -> None:
    """Rendered with z2jh itself: the hub's values (what its jupyterhub_config.py reads) name cubelab's
    authenticator, never z2jh's default `dummy`; with OIDC the client secret is mounted where the hook reads it."""
    import base64

    config = yaml.safe_load(EXAMPLE.read_text())
    if auth:
        config["hub"] = {"auth": auth}
        for team in config["teams"]:  # with OIDC the provider's groups claim decides membership
            team.pop("members", None)
            team.pop("admins", None)
    (tmp_path / "cubelab.yaml").write_text(yaml.safe_dump(config))
    values = kubernetes.write(load(tmp_path / "cubelab.yaml"), tmp_path / "values.yaml")
    docs = template(release_chart, values, BUNDLED, tmp_path)
    hub_secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "hub")
    hub_values = yaml.safe_load(base64.b64decode(hub_secret["data"]["values.yaml"]))
    assert hub_values["hub"]["config"]["JupyterHub"]["authenticator_class"] == expected
    settings = json.loads(hub_values["hub"]["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"])
    assert settings["authenticator_class"] == expected
    hub_pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "hub")
    mounts = {m["mountPath"] for m in hub_pod["spec"]["template"]["spec"]["containers"][0].get("volumeMounts", [])}
    if auth:
        assert settings["oidc"]["client_secret_file"].startswith(kubernetes.OIDC_MOUNT)
        assert kubernetes.OIDC_MOUNT in mounts
    # and the hook sets the same traits as the embedded hub does (a stand-in for traitlets' Config, which is
    # in the hub's environment, not the tests')
    from cubelab.hub.authconfig import configure_authenticator

    class Config(dict):  # type: ignore[type-arg]
        def __getattr__(self, name: str) -> Any:
            return self.setdefault(name, SimpleNamespace())

    secret_file = tmp_path / "client-secret"
    secret_file.write_text("s3cret\n")
    c = Config()
    if auth:
        settings["oidc"]["client_secret_file"] = str(secret_file)
    configure_authenticator(c, settings)
    assert c.JupyterHub.authenticator_class == expected
    if auth:
        assert c.GenericOAuthenticator.client_secret == "s3cret" and c.GenericOAuthenticator.manage_groups


def test_subdomain_mode_in_the_chart(chart: Path, tmp_path: Path) -> None:
    """hub.subdomains: the hub's settings carry subdomain_host, and each tracking pod is told its own host."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["hub"] = {"subdomains": True}
    config["containers"] = {"public_url": "https://hub.example.org"}
    (tmp_path / "cubelab.yaml").write_text(yaml.safe_dump(config))
    values = kubernetes.write(load(tmp_path / "cubelab.yaml"), tmp_path / "values.yaml")
    settings = json.loads(
        yaml.safe_load(values.read_text())["jupyterhub"]["hub"]["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"]
    )
    assert settings["subdomain_host"] == "https://hub.example.org"
    docs = template(chart, values, BUNDLED, tmp_path)
    pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "cubelab-tracking-land")
    env = {e["name"]: e.get("value") for e in pod["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CUBELAB_SERVICE_URL"] == "https://mlflow-land--service.hub.example.org/services/mlflow-land"


@pytest.mark.parametrize("site", [BUNDLED, EXTERNAL], ids=["bundled", "external"])
def test_fault_tests_get_pod_deletion_rights_only_when_asked(chart: Path, tmp_path: Path, site: dict[str, Any]) -> None:
    """tests.faults: a ServiceAccount for the test pod, a Role for pods get/list/delete and nothing else, and the
    selectors of the release's own pods (Postgres and S3 only when bundled); off by default: no token at all."""
    values = team_values(tmp_path, services=site)
    test_pod = lambda docs: next(d for d in docs if d["kind"] == "Pod")  # noqa: E731
    off = template(chart, values, {}, tmp_path)
    assert test_pod(off)["spec"]["automountServiceAccountToken"] is False
    assert not {"ServiceAccount", "Role", "RoleBinding"} & {d["kind"] for d in off}
    docs = template(chart, values, {"tests": {"faults": True}}, tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]}]
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    pod = test_pod(docs)
    assert pod["spec"]["serviceAccountName"] == binding["subjects"][0]["name"] == "cubelab-platform-tests"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    selectors = json.loads(env["CUBELAB_FAULT_SELECTORS"])
    expected = {"hub", "tracking"} | ({"postgres", "s3"} if site is BUNDLED else set())
    assert set(selectors) == expected
    assert selectors["tracking"].endswith("cubelab.io/team={team}")
    # Each selector matches the pods it names: the rendered Deployment/StatefulSet templates carry its labels.
    for role_name in expected - {"hub"}:
        wanted = dict(pair.split("=") for pair in selectors[role_name].replace("{team}", "ocean").split(","))
        templates = [d["spec"]["template"]["metadata"]["labels"] for d in docs
                     if d["kind"] in ("Deployment", "StatefulSet")]  # fmt: skip
        assert any(wanted.items() <= labels.items() for labels in templates), (role_name, wanted)


@pytest.mark.parametrize("services", [BUNDLED, EXTERNAL], ids=["bundled", "external"])
def test_every_address_names_a_service_the_release_has(release_chart: Path, tmp_path: Path, services: dict) -> None:
    """Rendered with zero-to-jupyterhub itself: each host in the tracking servers', the provisioning Job's and the
    users' environments is a Service of this release (or the external server the config names). Before the
    deployment plan, external S3 gave users' kernels http://RELEASE-s3:8333, a Service that did not exist."""
    values = team_values(tmp_path, services=services)
    docs = template(release_chart, values, {}, tmp_path)
    known = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    known |= {urlsplit(e["endpoint"]).hostname for e in [services.get("s3", {})] if e} | {
        services.get("postgres", {}).get("host")} - {None}  # fmt: skip
    rendered = yaml.safe_load(values.read_text())
    settings = json.loads(rendered["jupyterhub"]["hub"]["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"])
    urls = [
        v for env in settings["team_env"].values() for k, v in env.items() if k.endswith(("_URI", "_URL", "ENDPOINT"))
    ]
    urls += [s["url"] for s in settings["services"] if "url" in s]
    for env in [t["trackingEnv"] for t in rendered["teams"]] + [rendered["env"]["provision"]]:
        urls += [e["value"] for e in env if e["name"].endswith(("_URI", "_URL", "ENDPOINT")) and "value" in e]
        urls += [f"tcp://{e['value']}" for e in env if e["name"] == "POSTGRES_HOST"]
    hosts = {urlsplit(u).hostname for u in urls if urlsplit(u).hostname not in ("localhost",)}
    assert hosts and hosts <= known, hosts - known
    assert ("cubelab-s3" in known) == (services is BUNDLED) and "hub" in known


def test_every_long_running_container_has_liveness_and_readiness_probes(release_chart: Path, tmp_path: Path) -> None:
    """Compose and Helm restart services by their own means (restart policies, probes); on Kubernetes a server
    that hangs is restarted only if it has a liveness probe. Every Deployment's and StatefulSet's container of the
    release, zero-to-jupyterhub's hub and proxy included, has both kinds."""
    docs = template(release_chart, team_values(tmp_path), {}, tmp_path)
    checked = []
    for doc in docs:
        # z2jh's placeholder pods run `pause` only to hold room for users: nothing to probe.
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] != "user-placeholder":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                name = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
                assert "livenessProbe" in container and "readinessProbe" in container, name
                checked.append(name)
    assert {
        "Deployment/hub/hub",
        "Deployment/proxy/chp",
        "StatefulSet/cubelab-postgres/postgres",
        "StatefulSet/cubelab-s3/seaweedfs",
        "Deployment/cubelab-tracking-ocean/tracking",
    } <= set(checked), checked


def test_service_monitors_read_the_plans_endpoints_with_the_metrics_token(release_chart: Path, tmp_path: Path) -> None:
    """Off by default; on, one ServiceMonitor for the tracking servers and one for zero-to-jupyterhub's hub, both
    selecting Services this release has, on ports those Services name, with the hub Secret's metrics token."""
    values = team_values(tmp_path)
    assert not any(d["kind"] == "ServiceMonitor" for d in template(release_chart, values, {}, tmp_path))
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    site = {"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}, "scrapers": [scraper]}}
    docs = template(release_chart, values, site, tmp_path)
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    token = {"name": "cubelab-hub", "key": "metrics-token"}
    assert "metrics-token" in named["Secret", "cubelab-hub"]["data"]
    for name, path, services in (("cubelab-tracking", plan.TRACKING_METRICS_PATH,
                                  ["cubelab-tracking-ocean", "cubelab-tracking-land"]),
                                 ("cubelab-hub", plan.HUB_METRICS_PATH, ["hub"])):  # fmt: skip
        monitor = named["ServiceMonitor", name]
        assert (
            monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prom"
        )
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["path"] == path and endpoint["authorization"] == {"type": "Bearer", "credentials": token}
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"
                    and selector.items() <= d["metadata"]["labels"].items()]  # fmt: skip
        assert sorted(selected) == sorted(services)
        for service in services:
            assert endpoint["port"] in [p["name"] for p in named["Service", service]["spec"]["ports"]]
    for team in ("ocean", "land"):
        container = named["Deployment", f"cubelab-tracking-{team}"]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env[plan.METRICS_TOKEN]["valueFrom"]["secretKeyRef"] == token
        assert env["CUBELAB_METRICS_PATH"]["value"] == plan.TRACKING_METRICS_PATH
        assert scraper in named["NetworkPolicy", f"cubelab-tracking-{team}"]["spec"]["ingress"][0]["from"]
    settings = json.loads(
        yaml.safe_load(values.read_text())["jupyterhub"]["hub"]["extraEnv"]["CUBELAB_HUB_SETTINGS_JSON"]
    )
    assert {"name": "cubelab-metrics", "api_token": plan.ref(plan.METRICS_TOKEN)} in settings["services"]
