"""A person in a real browser: log in, see the team links, open the team's mlflow UI, see a teammate's run."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest

from platform_tests.conftest import issue_token

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless Debian Chromium as root, with no background traffic (this machine has no network).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
# Beside the test stacks (.cubelab/scratch), not loose in the state directory `make up` uses.
SCREENSHOTS = Path(
    os.environ.get("CUBELAB_SCREENSHOTS", Path(__file__).resolve().parent.parent / ".cubelab" / "scratch")
)


@pytest.fixture(scope="module")
def browser() -> Any:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(page: Any, hub: str, user: str, password: str) -> None:
    """Fill in and send the hub's login form; land on the home page."""
    page.goto(f"{hub}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(f"{hub}/hub/home", timeout=30000)


def test_login_team_links_and_teammates_run_in_the_mlflow_ui(deployment: dict[str, Any], browser: Any) -> None:
    team = deployment["teams"][0]
    user, teammate = team["members"][0], team["members"][1]
    password = next(u.get("initial_password") for u in deployment["users"] if u["name"] == user)
    if not password:
        pytest.skip("the deployment description carries no passwords (not local accounts)")

    # The teammate logs a run from code.
    run_name = f"teammate-run-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", issue_token(deployment, teammate))
        mlflow.set_tracking_uri(team["tracking_uri"])
        exp = mlflow.set_experiment(f"browser-{uuid.uuid4().hex[:6]}")
        with mlflow.start_run(run_name=run_name):
            mlflow.log_metric("rmse", 0.3)

    hub = deployment["hub_url"]
    page = browser.new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        log_in(page, hub, user, password)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 720})
        page.screenshot(path=str(SCREENSHOTS / "browser-hub-home.png"))  # README's first picture
        links = page.locator("a.cubelab-mlflow")
        hrefs = sorted(links.nth(i).get_attribute("href") for i in range(links.count()))
        expected = sorted(f"/services/mlflow-{t['name']}/" for t in deployment["teams"] if user in t["members"])
        assert hrefs == expected

        # Into the team's mlflow UI through the hub: OAuth with the hub, no second password.
        page.click(f"a.cubelab-mlflow[href='/services/mlflow-{team['name']}/']")
        page.wait_for_url(f"{hub}/services/mlflow-{team['name']}/**", timeout=30000)
        page.goto(f"{hub}/services/mlflow-{team['name']}/#/experiments/{exp.experiment_id}/runs")
        try:
            page.get_by_text(run_name).first.wait_for(timeout=60000)
        except Exception:
            print("failed responses:", *failed, sep="\n  ")
            raise
        finally:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "browser-mlflow-ui.png"))
    finally:
        page.close()


def test_browser_of_another_team_cannot_open_the_ui(deployment: dict[str, Any], browser: Any) -> None:
    team, other = deployment["teams"][0], deployment["teams"][1]
    stranger = next(m for m in other["members"] if m not in team["members"])
    password = next(u.get("initial_password") for u in deployment["users"] if u["name"] == stranger)
    if not password:
        pytest.skip("the deployment description carries no passwords (not local accounts)")
    hub = deployment["hub_url"]
    page = browser.new_page()
    try:
        log_in(page, hub, stranger, password)
        response = page.goto(f"{hub}/services/mlflow-{team['name']}/")
        assert response is not None
        # The hub refuses the OAuth authorization (the stranger lacks access:services!service=mlflow-TEAM): the
        # browser ends on the hub's 403 page, never on the team's UI.
        assert response.status == 403, (response.status, page.url)
        assert page.url.startswith(f"{hub}/hub/"), page.url
    finally:
        page.close()


FETCH = """url => fetch(url, {credentials: "include"}).then(r => r.text()).then(
    text => "read: " + text.slice(0, 80), error => "refused: " + error)"""


def test_a_page_on_another_loopback_port_cannot_read_the_ui_with_a_members_cookie(
    deployment: dict[str, Any], browser: Any
) -> None:
    """Issue 25: any local account can serve a page on a loopback port; with alice's cookie, a fetch from it must
    not read her team's data (the tracking server grants cross-origin reads to the platform's origins only). The
    same fetch from the hub's own origin reads them: the control that shows the check can fail."""
    import http.server
    import threading

    team = deployment["teams"][0]
    user = team["members"][0]
    password = next(u.get("initial_password") for u in deployment["users"] if u["name"] == user)
    if not password:
        pytest.skip("the deployment description carries no passwords (not local accounts)")
    hub = deployment["hub_url"]
    api = f"{hub}/services/mlflow-{team['name']}/ajax-api/2.0/mlflow/experiments/search?max_results=1"

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>a member's own page</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser.new_page()
    try:
        log_in(page, hub, user, password)
        page.goto(f"{hub}/services/mlflow-{team['name']}/")  # the UI's cookie, as after opening the team link
        own = page.evaluate(FETCH, api)
        assert own.startswith("read: ") and "experiments" in own, own
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        foreign = page.evaluate(FETCH, api)
        assert foreign.startswith("refused: "), foreign
    finally:
        page.close()
        server.shutdown()
