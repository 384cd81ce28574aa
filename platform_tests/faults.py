"""Killing a deployment's services for test_faults.py, the way the deployment's description says it can be done.

- `{"kind": "local", "config": PATH}`: the embedded stack of that platform config. SIGKILL to the service's
  recorded process; the stack's supervisor brings it back with no command run (`cubelab up` does, where the
  config turns supervision off). Only written by the test suite for a stack it started itself.
- `{"kind": "docker", "socket": PATH, "services": {ROLE: COMPOSE SERVICE}}`: a compose deployment whose Docker
  (or podman) API socket the operator mounted into the platform-tests container (`docker compose run -v
  /var/run/docker.sock:/var/run/docker.sock --rm platform-tests`). SIGKILL to the service's container, then a
  start; the container is found by its compose labels, in the test container's own compose project.

- `{"kind": "kubernetes", "selectors": {ROLE: LABEL SELECTOR}}`: a Helm release installed with
  `tests.faults: true`, whose test pod may delete the release's pods. The pod is deleted at once (grace 0, as
  a SIGKILL) and its controller makes a new one; restoring waits until that one is Ready. Written for the
  chart and rendered by its tests, never run here: these machines have no Kubernetes cluster.

Roles: `postgres`, `hub`, `s3`, and `tracking` (the first team's tracking server). An injector lists the roles
it can kill (`roles`): external Postgres and S3 are not the deployment's to kill.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
import urllib.parse
from typing import Any, Protocol


class Injector(Protocol):
    roles: set[str]

    def kill(self, role: str) -> None: ...

    def restore(self) -> None: ...


class LocalInjector:
    def __init__(self, spec: dict[str, Any], team: str) -> None:
        from cubelab.backends.local.stack import LocalBackend
        from cubelab.config import load

        self.backend = LocalBackend(load(spec["config"]), progress=lambda _: None)
        self.names = {"postgres": "postgres", "hub": "hub", "s3": "s3", "tracking": f"mlflow-{team}"}
        self.roles = set(self.names)
        self.killed = ("", 0)  # the service last killed, and its pid

    def kill(self, role: str) -> None:
        name = self.names[role]
        record = self.backend.procs.running(name)
        assert record is not None, f"{name} is not running"
        os.kill(record.pid, signal.SIGKILL)
        self.killed = (name, record.pid)

    def restore(self) -> None:
        if not self.backend.config.supervision.enabled:
            self.backend.up()
            return
        name, pid = self.killed
        deadline = time.monotonic() + 120
        while True:  # no command: the supervisor's restart is what is tested
            rows = {row.name: row for row in self.backend.status()}
            if rows[name].healthy and rows[name].pid != pid:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the supervisor did not bring {name} back within 120 s: {rows[name]}")
            time.sleep(0.5)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class DockerInjector:
    def __init__(self, spec: dict[str, Any], team: str) -> None:
        self.socket = spec["socket"]
        self.services = {role: name.format(team=team) for role, name in spec["services"].items()}
        self.roles = set(self.services)
        own = self._api("GET", f"/containers/{socket.gethostname()}/json")
        self.project = own["Config"]["Labels"]["com.docker.compose.project"]
        self.killed: list[tuple[str, str]] = []  # (container, when the killed process had started)

    def _api(self, method: str, path: str) -> Any:
        conn = _UnixConnection(self.socket)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise AssertionError(f"{method} {path}: {resp.status} {body[:300]!r}")
        return json.loads(body) if body else None

    def _container(self, role: str) -> str:
        labels = [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={self.services[role]}"]
        query = urllib.parse.quote(json.dumps({"label": labels}))
        found = self._api("GET", f"/containers/json?filters={query}")
        assert len(found) == 1, f"{len(found)} containers of service {self.services[role]}"
        return str(found[0]["Id"])

    def _state(self, container: str) -> dict[str, Any]:
        return dict(self._api("GET", f"/containers/{container}/json")["State"])

    def kill(self, role: str) -> None:
        container = self._container(role)
        started = self._state(container)["StartedAt"]
        self._api("POST", f"/containers/{container}/kill?signal=KILL")
        # The kill lands asynchronously: wait until the container is down (or already started again by a
        # restart policy), so that restore() cannot mistake the old, dying process for a running one.
        deadline = time.monotonic() + 30
        while (state := self._state(container))["Running"] and state["StartedAt"] == started:
            if time.monotonic() > deadline:
                raise AssertionError(f"container {container[:12]} still runs after SIGKILL")
            time.sleep(0.2)
        self.killed.append((container, started))

    def restore(self) -> None:
        for container, started in self.killed:
            deadline = time.monotonic() + 60
            while not ((state := self._state(container))["Running"] and state["StartedAt"] != started):
                if not state["Running"]:
                    try:  # a restart policy may be starting it already
                        self._api("POST", f"/containers/{container}/start")
                    except AssertionError:
                        pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"container {container[:12]} did not start again")
                time.sleep(1)
        self.killed.clear()


class KubernetesInjector:
    ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

    def __init__(self, spec: dict[str, Any], team: str) -> None:
        import ssl

        self.selectors = {role: selector.format(team=team) for role, selector in spec["selectors"].items()}
        self.roles = set(self.selectors)
        with open(f"{self.ACCOUNT}/namespace") as fh:
            self.namespace = fh.read().strip()
        with open(f"{self.ACCOUNT}/token") as fh:
            self.token = fh.read().strip()
        self.tls = ssl.create_default_context(cafile=f"{self.ACCOUNT}/ca.crt")
        self.killed: list[tuple[str, str]] = []  # (selector, uid of the deleted pod)

    def _api(self, method: str, path: str) -> Any:
        import urllib.request

        request = urllib.request.Request(
            f"https://kubernetes.default.svc/api/v1/namespaces/{self.namespace}/{path}",
            method=method, headers={"Authorization": f"Bearer {self.token}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, context=self.tls, timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read())

    def _pods(self, selector: str) -> list[dict[str, Any]]:
        return list(self._api("GET", f"pods?labelSelector={urllib.parse.quote(selector)}")["items"])

    def kill(self, role: str) -> None:
        selector = self.selectors[role]
        running = [p for p in self._pods(selector) if p["status"].get("phase") == "Running"]
        assert len(running) == 1, f"{len(running)} running pods match {selector}"
        meta = running[0]["metadata"]
        self._api("DELETE", f"pods/{meta['name']}?gracePeriodSeconds=0")
        self.killed.append((selector, meta["uid"]))  # a StatefulSet's new pod has the old one's name

    def restore(self) -> None:
        for selector, gone in self.killed:
            deadline = time.monotonic() + 300
            while not any(p["metadata"]["uid"] != gone and _ready(p) for p in self._pods(selector)):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no ready pod matches {selector} again")
                time.sleep(2)
        self.killed.clear()


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def injector(deployment: dict[str, Any]) -> Injector | None:
    spec = deployment.get("faults")
    if not spec:
        return None
    team = deployment["teams"][0]["name"]
    kinds = {"local": LocalInjector, "docker": DockerInjector, "kubernetes": KubernetesInjector}
    return kinds[spec["kind"]](spec, team)
