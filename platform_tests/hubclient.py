"""A small client of the hub for the acceptance tests: the login form, users' servers, code in kernels."""

from __future__ import annotations

import json
import time
from typing import Any

import requests
import websocket

from cubelab.smoke import SmokeError, execute


def login(hub_url: str, user: str, password: str) -> tuple[requests.Session, requests.Response]:
    """Log in through the real form (with its xsrf token), as a browser does."""
    session = requests.Session()
    page = session.get(f"{hub_url}/hub/login", timeout=10)
    page.raise_for_status()
    xsrf = session.cookies.get("_xsrf")
    resp = session.post(
        f"{hub_url}/hub/login",
        data={"username": user, "password": password, "_xsrf": xsrf},
        allow_redirects=False,
        timeout=30,
    )
    return session, resp


def xsrf_of(session: requests.Session) -> str:
    return str(session.cookies.get("_xsrf"))


class UserServer:
    """One user's single-user server, driven with the user's hub token."""

    def __init__(self, hub_url: str, user: str, token: str) -> None:
        self.hub_url = hub_url
        self.user = user
        self.headers = {"Authorization": f"token {token}"}
        self.token = token

    def start(self, team: str | None = None, timeout: float = 90) -> float:
        """Start the server (with the team chosen, as the spawn form would) and wait until it is ready."""
        t0 = time.monotonic()
        body = {"team": team} if team else {}
        resp = requests.post(
            f"{self.hub_url}/hub/api/users/{self.user}/server", headers=self.headers, json=body, timeout=30
        )
        if resp.status_code not in (201, 202, 400):  # 400: already running
            resp.raise_for_status()
        while time.monotonic() - t0 < timeout:
            model = requests.get(f"{self.hub_url}/hub/api/users/{self.user}", headers=self.headers, timeout=10).json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return time.monotonic() - t0
            time.sleep(0.2)
        raise TimeoutError(f"the server of {self.user} was not ready in {timeout} s")

    def stop(self) -> None:
        requests.delete(f"{self.hub_url}/hub/api/users/{self.user}/server", headers=self.headers, timeout=30)

    def kernelspecs(self) -> dict[str, Any]:
        resp = requests.get(f"{self.hub_url}/user/{self.user}/api/kernelspecs", headers=self.headers, timeout=30)
        resp.raise_for_status()
        return dict(resp.json()["kernelspecs"])

    def wait_for_tensorboard_run(self, prefix: str, timeout: float = 150) -> list[str]:
        """Until this server's TensorBoard lists a run starting with prefix (the first request starts TensorBoard,
        which reloads every 5 s; cubelab.hub.tbsync copies new logs to the team's bucket every 10 s)."""
        url = f"{self.hub_url}/user/{self.user}/tensorboard/data/runs"
        deadline = time.monotonic() + timeout
        runs: list[str] = []
        while time.monotonic() < deadline:
            resp = requests.get(url, headers=self.headers, timeout=60)
            if resp.status_code == 200:
                runs = resp.json()
                if found := [r for r in runs if r.startswith(prefix)]:
                    return found
            time.sleep(2)
        raise AssertionError(f"no run {prefix}* in TensorBoard's runs {runs}")

    def run_notebook(self, path: Any, timeout: float = 600) -> dict[str, Any]:
        """Run a notebook's code cells in a new kernel of the kind its metadata names; the JSON summary its last
        cell prints last."""
        nb = json.loads(path.read_text())
        cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        outputs = self.run_cells(cells, timeout, kernel_name=nb["metadata"]["kernelspec"]["name"])
        # The summary is the last line with a JSON object; a progress bar (tqdm on stderr, which arrives
        # interleaved with stdout and may lack its newline) can stand before it on that line.
        line = [text for text in outputs[-1].splitlines() if "{" in text][-1]
        return dict(json.JSONDecoder().raw_decode(line[line.index("{") :])[0])

    def run(self, code: str, timeout: float = 120, kernel_name: str = "python3") -> str:
        """Run code in a new kernel over the kernel websocket; return what it printed (raise on an error)."""
        return self.run_cells([code], timeout, kernel_name)[0]

    def run_cells(self, cells: list[str], timeout: float = 120, kernel_name: str = "python3") -> list[str]:
        """Run cells one after another in one new kernel (as a notebook runs); what each printed."""
        base = f"{self.hub_url}/user/{self.user}/api/kernels"
        kernel = requests.post(base, headers=self.headers, json={"name": kernel_name}, timeout=30)
        kernel.raise_for_status()
        kernel_id = kernel.json()["id"]
        ws_url = base.replace("http", "ws", 1) + f"/{kernel_id}/channels"
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {self.token}"], timeout=timeout)
        try:
            return [_execute(ws, code, self.user, timeout) for code in cells]
        finally:
            ws.close()
            requests.delete(f"{base}/{kernel_id}", headers=self.headers, timeout=30)


def _execute(ws: websocket.WebSocket, code: str, user: str, timeout: float) -> str:
    try:
        return execute(ws.send, ws.recv, code, user, timeout)
    except SmokeError as exc:
        raise RuntimeError(str(exc)) from None
