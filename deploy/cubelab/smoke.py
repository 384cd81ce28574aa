"""A newcomer's first minutes, scripted against a running stack (`cubelab smoke`, `make smoke`).

Each step is what the README's quickstart tells a person to do: open the hub, log in with the generated password
through the login form, start a server, run the README's snippet in a notebook kernel, find the run in the team's
mlflow with themselves as its author, and open the team's mlflow UI through the hub. Standard library only: it runs
in the control plane's own venv, before any test dependency is installed.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The README's notebook snippet, and a line that says which run it made.
README_SNIPPET = """\
import mlflow                      # MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN are already set
with mlflow.start_run() as run:
    mlflow.log_param("lr", 0.01)
    mlflow.log_metric("rmse", 0.42)
print("RUN_ID", run.info.run_id)
"""
KERNEL = "cubelab-sklearn"  # the scikit-learn kernel: the first of the three the README names


class SmokeError(Exception):
    """A step of the newcomer's path that did not work; the message says which and what was seen."""


@dataclass
class Newcomer:
    """A person with a browser-like session (cookies, xsrf) on the hub."""

    hub_url: str
    user: str
    password: str
    team: str

    def __post_init__(self) -> None:
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        self.token = ""

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None, body: Any = None,
                token: bool = False, page: bool = False, timeout: float = 60) -> tuple[int, str, str]:  # fmt: skip
        """(status, final URL, body text), following redirects with the session's cookies; page: as a browser
        asks for a page (services send a browser without a token to the hub's login, an API client a 401)."""
        headers = {"X-XSRFToken": self.xsrf()} if self.xsrf() else {}
        if page:
            headers["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if token:
            headers["Authorization"] = f"token {self.token}"
        url = path if path.startswith("http") else self.hub_url + path
        req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - the hub's URL
        try:
            with self.opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.geturl(), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, url, err.read().decode(errors="replace")

    def xsrf(self) -> str:
        return next((c.value or "" for c in self.cookies if c.name == "_xsrf"), "")


def step(name: str, progress: Callable[[str], None]) -> Callable[[Callable[[], str]], str]:
    """Run one step, print it with its time, and turn any failure into a SmokeError that names the step."""

    def run(action: Callable[[], str]) -> str:
        t0 = time.monotonic()
        try:
            detail = action()
        except SmokeError as err:
            raise SmokeError(f"{name}: {err}") from None
        except (OSError, ValueError, KeyError) as err:
            raise SmokeError(f"{name}: {type(err).__name__}: {err}") from None
        progress(f"ok   {time.monotonic() - t0:6.1f} s  {name}: {detail}")
        return detail

    return run


def expect(ok: bool, message: str) -> None:
    if not ok:
        raise SmokeError(message)


def run_smoke(description: dict[str, Any], progress: Callable[[str], None] = print) -> float:
    """The newcomer's path against the deployment `description` (`cubelab describe`); the seconds it took."""
    user, team = _first_member(description)
    password = user.get("initial_password")
    if not password:
        raise SmokeError(f"{user['name']} has no generated password left (changed already?): the smoke needs it")
    me = Newcomer(description["hub_url"].rstrip("/"), user["name"], password, team["name"])
    service = urllib.parse.urlsplit(team["tracking_uri"]).path.rstrip("/")
    t0 = time.monotonic()
    progress(f"as {me.user} of team {me.team}, on {me.hub_url}")

    def hub_answers() -> str:
        status, _, body = me.request("GET", "/hub/api/")
        expect(status == 200, f"GET /hub/api/ answered {status}")
        return f"JupyterHub {json.loads(body)['version']}"

    def log_in() -> str:
        status, _, _ = me.request("GET", "/hub/login")
        expect(status == 200 and me.xsrf(), f"the login page answered {status} (xsrf cookie: {bool(me.xsrf())})")
        status, url, _ = me.request("POST", "/hub/login", form={"username": me.user, "password": me.password,
                                                                 "_xsrf": me.xsrf()})  # fmt: skip
        expect(status == 200 and "/hub/login" not in url, f"the login form was refused ({status}, at {url})")
        status, _, body = me.request("POST", f"/hub/api/users/{me.user}/tokens", body={"note": "cubelab smoke",
                                                                                     "expires_in": 3600})  # fmt: skip
        expect(status in (200, 201), f"no API token for the logged-in user ({status}: {body[:200]})")
        me.token = json.loads(body)["token"]
        return f"logged in with the generated password; landed on {urllib.parse.urlsplit(url).path}"

    def start_server() -> str:
        status, _, body = me.request("POST", f"/hub/api/users/{me.user}/server", body={"team": me.team}, token=True)
        expect(status in (201, 202, 400), f"the hub refused to start the server ({status}: {body[:200]})")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            _, _, body = me.request("GET", f"/hub/api/users/{me.user}", token=True)
            if (json.loads(body).get("servers", {}).get("") or {}).get("ready"):
                return f"/user/{me.user}/ ready"
            time.sleep(0.5)
        raise SmokeError("the server was not ready in 180 s (cubelab logs hub)")

    run_id: list[str] = []

    def run_snippet() -> str:
        out = run_in_kernel(me, README_SNIPPET, KERNEL)
        found = [line.split()[1] for line in out.splitlines() if line.startswith("RUN_ID ")]
        expect(bool(found), f"the snippet printed no run id: {out[-500:]!r}")
        run_id.append(found[0])
        return f"run {found[0]} in kernel {KERNEL}"

    def run_in_mlflow() -> str:
        status, _, body = me.request("GET", f"{service}/api/2.0/mlflow/runs/get?run_id={run_id[0]}", token=True)
        expect(status == 200, f"the team's mlflow answered {status}: {body[:200]}")
        run = json.loads(body)["run"]
        author = run["info"].get("user_id")
        expect(author == me.user, f"the run's author is {author!r}, not {me.user!r}")
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        expect(params.get("lr") == "0.01", f"the run's params are {params}")
        return f"{service}: author {author}, lr={params['lr']}"

    def ui_loads() -> str:
        status, url, body = me.request("GET", f"{service}/", page=True)
        expect(status == 200, f"the mlflow UI answered {status} at {url}")
        expect("<script" in body and "mlflow" in body.lower(), f"{url} is not mlflow's page: {body[:200]!r}")
        scripts = [part.split('"')[0] for part in body.split('src="')[1:]]
        expect(bool(scripts), "the UI's page names no script")
        asset = urllib.parse.urljoin(url, scripts[0])
        status, _, _ = me.request("GET", asset)
        expect(status == 200, f"the UI's script {asset} answered {status}")
        return f"{urllib.parse.urlsplit(url).path} and its script load in the browser session"

    try:
        for name, action in (("the hub answers", hub_answers), ("log in through the form", log_in),
                             ("start my server", start_server), ("run the README's snippet", run_snippet),
                             ("see my run in the team's mlflow", run_in_mlflow),
                             ("open the team's mlflow UI through the hub", ui_loads)):  # fmt: skip
            step(name, progress)(action)
    finally:
        if me.token:  # leave the stack as found: the server stopped, the smoke's token revoked
            me.request("DELETE", f"/hub/api/users/{me.user}/server", token=True)
    return time.monotonic() - t0


def _first_member(description: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    users = {u["name"]: u for u in description.get("users", [])}
    for team in description.get("teams", []):
        for member in team.get("members", []):
            if member in users:
                return users[member], team
    raise SmokeError("the deployment has no team with a member: nobody to be the newcomer")


# --- code in a kernel, over the Jupyter websocket (RFC 6455, text frames; the standard library has no client) ---


def run_in_kernel(me: Newcomer, code: str, kernel: str, timeout: float = 240) -> str:
    """Start a kernel, run code, return what it printed; the kernel is shut down afterwards."""
    base = f"/user/{me.user}/api/kernels"
    status, _, body = me.request("POST", base, body={"name": kernel}, token=True)
    expect(status == 201, f"no kernel {kernel} ({status}: {body[:200]})")
    kernel_id = json.loads(body)["id"]
    try:
        with WebSocket(f"{me.hub_url}{base}/{kernel_id}/channels", {"Authorization": f"token {me.token}"},
                       timeout) as ws:  # fmt: skip
            return execute(ws.send, ws.receive, code, me.user, timeout)
    finally:
        me.request("DELETE", f"{base}/{kernel_id}", token=True)


def execute(send: Callable[[str], None], receive: Callable[[], str], code: str, user: str, timeout: float) -> str:
    """Run code over a kernel's channels (send and receive whole text messages); what it printed. A kernel error
    raises SmokeError with the traceback. platform_tests' hub client uses it with websocket-client's socket."""
    msg_id = uuid.uuid4().hex
    send(json.dumps({
        "header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))  # fmt: skip
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(receive())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise SmokeError("kernel error: " + "\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)
    raise SmokeError(f"the kernel did not finish in {timeout} s")


class WebSocket:
    """The client side of a websocket over plain HTTP: enough for Jupyter's kernel channels."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {parts.path}?{parts.query} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            expect(bool(chunk), "the websocket closed during its handshake")
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        expect(" 101 " in status + " ", f"the websocket was refused: {status}")

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        size = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", size) if size < 1 << 16 else
                                bytes([0x80 | 127]) + struct.pack(">Q", size))  # fmt: skip
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            expect(bool(chunk), "the websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> str:
        """The next whole text message (fragments joined); pings answered, binary frames skipped."""
        message = b""
        while True:
            first, second = self._read(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(size)  # a server's frames are never masked
            opcode = first & 0x0F
            if opcode == 0x8:
                raise SmokeError("the kernel's websocket was closed by the server")
            if opcode == 0x9:  # ping: answer with a pong carrying the same bytes
                mask = os.urandom(4)
                pong = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + pong)
                continue
            if opcode in (0x0, 0x1):
                message += payload
            if first & 0x80 and opcode in (0x0, 0x1):
                return message.decode()
