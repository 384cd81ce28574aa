"""Run the pod templates of rendered Kubernetes manifests with podman, the way kubelet would, without a cluster.

`podman kube play` takes Pods and Deployments but not StatefulSets or Jobs (Debian's podman 4.3), and it has no
Services: so every workload's pod template is started here the same way, with `podman run`. What a pod gets is
what its template says: command and args, env (values, Secrets, ConfigMaps, the pod's own fields, and $(NAME)
expanded from variables defined earlier, as kubelet does), Secret and ConfigMap volumes (files, items, modes,
subPath), emptyDir, persistent volumes (a folder per claim, owned by the pod's user and fsGroup as a fresh
volume would be), the security context (user, group, fsGroup, read-only root, dropped capabilities, no new privileges)
and init containers run to completion first.

Services become DNS names on one podman network: a pod gets every Service name that selects its labels as a
network alias, and the `NAME_SERVICE_HOST/PORT` variables kubelet injects. Where a Service's port differs from
its target port, a one-port relay (cubelab.relay) answers under the Service's name. Not covered, by design:
NetworkPolicies (no enforcement: every pod reaches every other), RBAC and the API server (nothing here talks to
one; KubeSpawner cannot spawn pods), probes other than the readiness checks this module runs by hand, scheduling.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")
Podman = Callable[..., subprocess.CompletedProcess[str]]


def expand(text: str, env: dict[str, str]) -> str:
    """kubelet's $(NAME): replaced when NAME is defined, kept as written otherwise; $$ is a literal $."""
    return REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _env_name(service: str) -> str:
    return service.upper().replace("-", "_")


@dataclass
class Manifests:
    docs: list[dict[str, Any]]

    def named(self, kind: str) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.docs if d["kind"] == kind}

    def secret(self, name: str) -> dict[str, bytes]:
        doc = self.named("Secret")[name]
        data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
        return data | {k: v.encode() for k, v in (doc.get("stringData") or {}).items()}

    def config_map(self, name: str) -> dict[str, bytes]:
        return {k: v.encode() for k, v in (self.named("ConfigMap")[name].get("data") or {}).items()}

    def pod_template(self, kind: str, name: str) -> dict[str, Any]:
        doc = self.named(kind)[name]
        return doc if kind == "Pod" else doc["spec"]["template"]

    def services_for(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [s for s in self.named("Service").values()
                if (sel := s["spec"].get("selector")) and sel.items() <= labels.items()]  # fmt: skip

    def service_env(self) -> dict[str, str]:
        """What kubelet injects for every Service (the host is its DNS name here: there are no cluster IPs)."""
        env: dict[str, str] = {}
        for name, service in self.named("Service").items():
            prefix, ports = _env_name(name), service["spec"]["ports"]
            env[f"{prefix}_SERVICE_HOST"] = name
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            for port in ports:
                if "name" in port:
                    env[f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
        return env


@dataclass
class PodRun:
    """One pod started with podman: its name (also its host name) and the containers it runs."""

    name: str
    containers: list[str] = field(default_factory=list)


class Cluster:
    """Pods of one rendered release on one podman network."""

    def __init__(self, manifests: Manifests, podman: Podman, images: dict[str, str], workdir: Path,
                 relay_image: str, namespace: str = "default") -> None:  # fmt: skip
        self.m, self.podman, self.images, self.workdir = manifests, podman, images, workdir
        self.relay_image, self.namespace = relay_image, namespace
        self.network = f"kubeplay-{workdir.name}"
        self.started: list[str] = []
        # name -> address of every pod and Service so far, written into each container's /etc/hosts: podman's DNS
        # here answered some lookups only after tens of seconds under load (requests hung, then 503s).
        self.hosts: dict[str, str] = {}
        self._hosts_files: list[Path] = []  # the /etc/hosts (on this machine) of each long-running container

    def __enter__(self) -> Cluster:
        self.podman("network", "create", self.network)
        return self

    def __exit__(self, *_: object) -> None:
        for container in reversed(self.started):
            self.podman("rm", "-f", "-t", "5", container, check=False)
        self.podman("network", "rm", "-f", self.network, check=False)

    # -- what a container gets ---------------------------------------------------------------------
    def _env(self, container: dict[str, Any], pod: str) -> dict[str, str]:
        env = self.m.service_env()
        fields = {"metadata.namespace": self.namespace, "metadata.name": pod, "status.podIP": pod}
        for entry in container.get("env", []):
            if "value" in entry:
                value = expand(str(entry["value"]), env)
            elif ref := entry["valueFrom"].get("secretKeyRef"):
                value = self.m.secret(ref["name"])[ref["key"]].decode()
            elif ref := entry["valueFrom"].get("configMapKeyRef"):
                value = self.m.config_map(ref["name"])[ref["key"]].decode()
            else:
                value = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
            env[entry["name"]] = value
        return env

    def _files(self, pod: str, volume: dict[str, Any]) -> Path:
        """A Secret or ConfigMap volume as files (its items, or every key), with their modes."""
        if "secret" in volume:
            source, data = volume["secret"], self.m.secret(volume["secret"]["secretName"])
        else:
            source, data = volume["configMap"], self.m.config_map(volume["configMap"]["name"])
        folder = Path(tempfile.mkdtemp(prefix=f"{pod}-{volume['name']}-", dir=self.workdir))
        folder.chmod(0o755)
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            path = folder / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])
            path.chmod(item.get("mode", source.get("defaultMode", 0o644)))
        return folder

    def _mounts(self, pod: str, spec: dict[str, Any], container: dict[str, Any], claims: dict[str, str]) -> list[str]:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        args: list[str] = []
        prepared: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            name, target, ro = mount["name"], mount["mountPath"], ":ro" if mount.get("readOnly") else ""
            volume = volumes.get(name, {"persistentVolumeClaim": {"claimName": claims.get(name, name)}})
            if "secret" in volume or "configMap" in volume:
                folder = prepared.setdefault(name, self._files(pod, volume))
                source = folder / mount["subPath"] if "subPath" in mount else folder
                args += ["-v", f"{source}:{target}:ro"]
            elif "emptyDir" in volume:
                # A folder of the pod's, shared by its init containers and its container, writable by any uid.
                folder = self.workdir / f"{pod}-{name}"
                folder.mkdir(exist_ok=True)
                folder.chmod(0o1777)
                args += ["-v", f"{folder}:{target}{ro}"]
            elif "persistentVolumeClaim" in volume:
                claim = claims.get(name, volume["persistentVolumeClaim"]["claimName"])
                args += ["-v", f"{self._claim(claim, spec, container)}:{target}{ro}"]
            else:
                raise NotImplementedError(f"pod {pod}: volume {name} of a kind kubeplay does not run: {volume}")
        return args

    def _claim(self, claim: str, spec: dict[str, Any], container: dict[str, Any]) -> Path:
        """A persistent volume as a fresh cluster gives it: an empty folder (kept for the pod's restarts) and,
        with fsGroup, owned by that group and group-writable (setgid), so the pod's user can write it. A folder,
        not a podman volume: podman copies the image's folder ownership onto a new volume at first mount."""
        folder = self.workdir / f"claim-{claim}"
        if folder.exists():
            return folder
        folder.mkdir()
        pod, own = spec.get("securityContext") or {}, container.get("securityContext") or {}
        user, group = own.get("runAsUser", pod.get("runAsUser")), pod.get("fsGroup")
        if group is not None:
            os.chown(folder, user if user is not None else 0, group)
            folder.chmod(0o2775)
        return folder

    def _security(self, spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
        pod, own = spec.get("securityContext") or {}, container.get("securityContext") or {}
        user, group = own.get("runAsUser", pod.get("runAsUser")), own.get("runAsGroup", pod.get("runAsGroup"))
        args: list[str] = []
        if user is not None:
            args += ["--user", f"{user}:{group if group is not None else user}"]
        if "fsGroup" in pod:
            args += ["--group-add", str(pod["fsGroup"])]
        if own.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if "ALL" in (own.get("capabilities") or {}).get("drop", []):
            args.append("--cap-drop=all")
        if own.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        return args

    def _argv(self, pod: str, spec: dict[str, Any], container: dict[str, Any], claims: dict[str, str],
              aliases: list[str]) -> list[str]:  # fmt: skip
        env = self._env(container, pod)
        image = self.images.get(container["image"], container["image"])
        argv = ["--network", self.network, "--hostname", pod, *[f"--network-alias={a}" for a in [pod, *aliases]]]
        argv += self.add_hosts()
        argv += self._security(spec, container) + self._mounts(pod, spec, container, claims)
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        if "workingDir" in container:
            argv += ["--workdir", container["workingDir"]]
        command = [expand(c, env) for c in container.get("command", [])]
        if command:
            argv += ["--entrypoint", command[0]]
        return [*argv, image, *command[1:], *[expand(a, env) for a in container.get("args", [])]]

    # -- running pods ------------------------------------------------------------------------------
    def run(self, kind: str, name: str, *, args: list[str] | None = None, env: dict[str, str] | None = None) -> PodRun:
        """Start a workload's pod (replica 0): init containers to completion, then its container. args replaces
        the container's args (a Pod run as a test with another selection of tests, say); env adds variables."""
        template = self.m.pod_template(kind, name)
        pod = f"{name}-0" if kind == "StatefulSet" else name
        spec, labels = template["spec"], template["metadata"].get("labels", {})
        doc = self.m.named(kind)[name]
        claims = {t["metadata"]["name"]: f"{t['metadata']['name']}-{pod}"
                  for t in doc.get("spec", {}).get("volumeClaimTemplates", [])}  # fmt: skip
        if len(spec["containers"]) != 1:
            raise NotImplementedError(f"{kind}/{name}: pods of several containers share a network namespace")
        for init in spec.get("initContainers", []):
            container = f"{pod}-{init['name']}"
            self.podman("run", "--name", container, *self._argv(pod, spec, init, claims, []))
            self.started.append(container)
        main = dict(spec["containers"][0])
        if args is not None:
            main["args"] = args
        main["env"] = [*main.get("env", []), *({"name": k, "value": v} for k, v in (env or {}).items())]
        services = self.m.services_for(labels)
        aliases = [s["metadata"]["name"] for s in services if self._direct(s, main)]
        container = f"{pod}-{main['name']}"
        self.podman("run", "-d", "--name", container, *self._argv(pod, spec, main, claims, aliases))
        self.started.append(container)
        self.serving(container, [pod, *aliases])
        for service in services:
            if not self._direct(service, main):
                self._relay(service, main, pod)
        return PodRun(pod, [container])

    def add_hosts(self) -> list[str]:
        """`podman run` arguments giving a new container every name known so far."""
        return [f"--add-host={name}:{address}" for name, address in self.hosts.items()]

    def serving(self, container: str, names: list[str]) -> None:
        """Record a long-running container's names and address, and add them to the /etc/hosts of every one
        running (those started earlier learn the names of those started later)."""
        fmt = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        address = self.podman("inspect", "-f", fmt, container).stdout.strip()
        self.hosts |= dict.fromkeys(names, address)
        self._hosts_files.append(Path(self.podman("inspect", "-f", "{{.HostsPath}}", container).stdout.strip()))
        lines = [f"{address}\t{name}" for name, address in self.hosts.items()]
        for path in self._hosts_files:
            known = path.read_text().splitlines() if path.exists() else []
            if path.exists() and (missing := [line for line in lines if line not in known]):
                with path.open("a") as fh:
                    fh.write("\n".join(missing) + "\n")

    def _target(self, port: dict[str, Any], container: dict[str, Any]) -> int:
        target = port.get("targetPort", port["port"])
        if isinstance(target, int):
            return target
        return next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == target)

    def _direct(self, service: dict[str, Any], container: dict[str, Any]) -> bool:
        return all(self._target(p, container) == p["port"] for p in service["spec"]["ports"])

    def _relay(self, service: dict[str, Any], container: dict[str, Any], pod: str) -> None:
        """A Service whose port differs from the pod's: a one-port relay answers under the Service's name."""
        name = service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            relay = f"svc-{name}-{port['port']}"
            self.podman("run", "-d", "--name", relay, "--network", self.network, f"--network-alias={name}",
                        *self.add_hosts(), "--user", "0", self.relay_image, "python3", "-m", "cubelab.relay",
                        str(port["port"]), f"{pod}:{self._target(port, container)}")  # fmt: skip
            self.started.append(relay)
            self.serving(relay, [name])

    def wait_exit(self, run: PodRun, timeout: float = 300) -> tuple[int, str]:
        """Wait for the pod's container to end: its exit code and its log."""
        done = self.podman("wait", run.containers[0], check=False, timeout=timeout)
        logs = self.podman("logs", run.containers[0], check=False)
        return int(done.stdout.strip() or -1), logs.stdout + logs.stderr

    def wait_ready(self, kind: str, name: str, run: PodRun, timeout: float = 180) -> None:
        """Poll the container's readiness probe (httpGet, from inside its pod's network; or exec) until it
        passes, as kubelet would before the Service sends it traffic."""
        container = self.m.pod_template(kind, name)["spec"]["containers"][0]
        probe = container.get("readinessProbe") or container.get("livenessProbe")
        if probe is None:
            return
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self._target({"port": get["port"], "targetPort": get["port"]}, container)
            check = ["python3", "-c", "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=3)",
                     f"http://{run.name}:{port}{get.get('path', '/')}"]  # fmt: skip
            probe_argv = ["run", "--rm", "--network", self.network, self.relay_image, *check]
        elif "exec" in probe:
            probe_argv = ["exec", run.containers[0], *probe["exec"]["command"]]
        else:
            probe_argv = ["exec", run.containers[0], "true"]
        deadline = time.monotonic() + timeout
        while self.podman(*probe_argv, check=False).returncode != 0:
            state = self.podman("inspect", "-f", "{{.State.Status}}", run.containers[0], check=False).stdout.strip()
            if time.monotonic() > deadline or state not in ("running", "created"):
                logs = self.podman("logs", run.containers[0], check=False)
                raise AssertionError(f"{kind}/{name} not ready ({state}) after {timeout:.0f} s:\n"
                                     f"{(logs.stdout + logs.stderr)[-4000:]}")  # fmt: skip
            time.sleep(2)


def workloads(
    manifests: Manifests, kinds: tuple[str, ...] = ("StatefulSet", "Job", "Deployment")
) -> Iterator[tuple[str, str]]:
    for doc in manifests.docs:
        if doc["kind"] in kinds:
            yield doc["kind"], doc["metadata"]["name"]
