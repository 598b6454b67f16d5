"""The web dashboard (``GET /ui``) driven in headless Chromium against the real API process.

The API runs as ``python -m beam_etl.api`` on a free loopback port over a temporary output folder;
tenants and keys come from its CLI; pipelines are registered, started and inspected from the page
only. Needs Playwright for Python (requirements-dev.txt) and Debian's ``chromium`` (``make install``
installs it with apt-get); without either the tests fail and say how to install them. Full-page
screenshots of each stage go to ``test-artifacts/dashboard/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the fixture below fails with the install command
    sync_playwright = None

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "/usr/bin/chromium")
INSTALL_HINT = ("install with `make install` (pip install -r requirements-dev.txt; "
                "apt-get install -y --no-install-recommends chromium), or set BEAM_ETL_CHROMIUM to a Chromium binary")
TENANT = "acme-ui"
RUN_TIMEOUT_MS = 180_000
TERMINAL = ("succeeded", "failed", "budget_exceeded", "stopped", "lost")
XSS_LINE = '<script>window.__xss = 1</script>,<img src=x onerror="window.__xss = 2">,oops'


@dataclass
class Api:
    """The API process under test and what the tests need to talk to it."""

    base_url: str
    output_dir: Path
    admin: dict[str, Any]
    log: Path

    def cli(self, *args: str) -> dict[str, Any]:
        """``python -m beam_etl.api ARGS --output-dir D``: the one JSON object it prints."""
        done = subprocess.run([sys.executable, "-m", "beam_etl.api", *args, "--output-dir", str(self.output_dir)],
                              capture_output=True, text=True, timeout=60, cwd=REPO, env=_env())
        assert done.returncode == 0, f"CLI {args} exited {done.returncode}: {done.stderr}"
        return json.loads(done.stdout)

    def call(self, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
        """One API request (outside the browser): the status and the body (decoded JSON, or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, _decode(resp.headers.get_content_type(), resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.headers.get_content_type(), err.read())


def _decode(content_type: str, raw: bytes) -> Any:
    return json.loads(raw or b"null") if content_type == "application/json" else raw.decode(errors="replace")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _chromium() -> str:
    """The Chromium binary: $BEAM_ETL_CHROMIUM, else Debian's package; fails the test when there is none."""
    configured = os.environ.get("BEAM_ETL_CHROMIUM")
    for candidate in ([configured] if configured else []) + list(CHROMIUM_CANDIDATES):
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail(f"Chromium not found (looked for {', '.join(CHROMIUM_CANDIDATES)}): {INSTALL_HINT}", pytrace=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The real API on a free loopback port over a fresh output folder, with one tenant (admin key)."""
    output_dir = tmp_path_factory.mktemp("dashboard")
    port = _free_port()
    log = output_dir / "api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "beam_etl.api", "--host", "127.0.0.1", "--port", str(port),
                                 "--output-dir", str(output_dir)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO, env=_env())
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the API exited with {proc.returncode}:\n{_tail(log)}"
            with contextlib.suppress(OSError), urllib.request.urlopen(base_url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
            assert time.monotonic() < deadline, f"the API did not answer /health in 60 s:\n{_tail(log)}"
            time.sleep(0.3)
        harness = Api(base_url=base_url, output_dir=output_dir, admin={}, log=log)
        harness.admin = harness.cli("tenants", "create", TENANT)
        assert harness.admin["role"] == "admin" and harness.admin["api_key"], harness.admin
        yield harness
    finally:
        runs = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        for child in runs:  # runs the API started (each in its own session) and left going
            with contextlib.suppress(psutil.Error):
                child.kill()


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    """Fails the module's tests at once, saying how to install, when Playwright or Chromium is missing."""
    if sync_playwright is None:
        pytest.fail(f"Playwright for Python is not installed: {INSTALL_HINT}", pytrace=False)
    return _chromium()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """Headless Debian Chromium under Playwright."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
    with sync_playwright() as pw:
        try:
            launched = pw.chromium.launch(executable_path=chromium, headless=True,
                                          args=[*args, "--disable-dev-shm-usage"])
        except Exception as err:  # noqa: BLE001 - a broken install must fail loudly, with the hint
            pytest.fail(f"Chromium at {chromium} did not start ({err}): {INSTALL_HINT}", pytrace=False)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context and page; fails the test on any uncaught script error or CSP violation.
    The page's last state is saved as test-artifacts/dashboard/last-<test>.png (a failure's picture)."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    tab.on("console", lambda msg: problems.append(f"console: {msg.text}")
           if "Content Security Policy" in msg.text else None)
    expect.set_options(timeout=20_000)
    yield tab
    with contextlib.suppress(Exception):
        _shot(tab, f"last-{request.node.originalname.removeprefix('test_')}")
    context.close()
    assert not problems, problems


def _shot(page: Page, name: str) -> None:
    """A full-page screenshot, test-artifacts/dashboard/NAME.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)


def _login(page: Page, api: Api, key: str) -> None:
    page.goto(f"{api.base_url}/ui")
    page.get_by_label("API key").fill(key)
    page.get_by_test_id("login-button").click()
    expect(page.get_by_test_id("session-tenant")).to_have_text(TENANT)


def _wait_for_run(page: Page, states: tuple[str, ...]) -> str:
    """Waits until the run view's badge shows one of ``states``; returns it."""
    page.wait_for_function("states => states.includes(document.querySelector('[data-testid=run-status]')"
                           ".getAttribute('data-status'))", arg=list(states), timeout=RUN_TIMEOUT_MS)
    return page.get_by_test_id("run-status").get_attribute("data-status") or ""


def test_operator_registers_runs_and_inspects_a_run(api: Api, page: Page, tmp_path: Path) -> None:
    """Log in, register the quickstart from the form, start it, watch it finish, then read its DLQ,
    lineage, report and logs and replay its dead letters: every step through the page."""
    # the bundled input plus one broken row whose raw text is markup: it reaches the DLQ verbatim
    source = REPO / "beam_etl" / "data" / "customers_orders.csv"
    orders = tmp_path / "orders_with_markup.csv"
    orders.write_text(source.read_text(encoding="utf-8").rstrip("\n") + "\n" + XSS_LINE + "\n", encoding="utf-8")

    page.goto(f"{api.base_url}/ui")
    expect(page.get_by_test_id("login")).to_be_visible()
    _shot(page, "01-login")
    _login(page, api, api.admin["api_key"])
    expect(page.get_by_test_id("session-role")).to_have_text("admin")
    page.reload()  # the key stays in sessionStorage
    expect(page.get_by_test_id("session-tenant")).to_have_text(TENANT)

    form = page.get_by_test_id("register-form")
    form.get_by_label("Name").fill("broken")
    form.get_by_label("Template").fill("no_such_template")
    page.get_by_test_id("register-button").click()
    expect(page.get_by_test_id("field-error-template")).to_be_visible()
    expect(page.get_by_test_id("error-banner")).to_contain_text("422")
    _shot(page, "02-register-error")

    form.get_by_label("Name").fill("orders-demo")
    form.get_by_label("Template").fill("quickstart")
    form.get_by_label("Params (JSON object)").fill(json.dumps({"input": str(orders)}))
    form.get_by_label("Options (one per line)").fill("--runner=DirectRunner")
    page.get_by_test_id("register-button").click()
    row = page.locator('[data-testid=pipeline-row][data-pipeline-name="orders-demo"]')
    expect(row.get_by_test_id("pipeline-status")).to_have_attribute("data-status", "never_run")
    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    _shot(page, "03-registered")

    row.get_by_test_id("start-button").click()
    status = page.get_by_test_id("run-status")
    expect(page.get_by_test_id("run-view")).to_be_visible()
    _wait_for_run(page, ("running", *TERMINAL))
    _shot(page, "04-running")
    final = _wait_for_run(page, TERMINAL)
    run_id = page.get_by_test_id("run-id").inner_text()
    logs = api.call("GET", f"/runs/{run_id}/logs?tail=80", api.admin["api_key"])
    assert final == "succeeded", f"run {run_id} ended {final}: {logs}"
    expect(status).to_have_text("succeeded")
    orders_row = page.locator('[data-testid=counter-row][data-step="orders"]')
    expect(orders_row.locator("[data-field=records_out]")).not_to_have_text(re.compile(r"^(0|—)$"))
    expect(page.locator('[data-testid=total][data-total="dead_letters"] dd')).not_to_have_text("0")
    expect(row.get_by_test_id("pipeline-status")).to_have_attribute("data-status", "succeeded")
    expect(page.locator(f'[data-testid=run-row][data-run-id="{run_id}"]')).to_be_visible()
    _shot(page, "05-succeeded")

    page.get_by_test_id("tab-dlq").click()
    dlq_rows = page.get_by_test_id("dlq-row")
    expect(dlq_rows.first).to_be_visible()
    assert dlq_rows.count() > 1
    expect(page.get_by_test_id("dlq-group").first).to_be_visible()
    expect(page.get_by_test_id("dlq-page-info")).to_contain_text("of")
    markup = page.get_by_test_id("dlq-record").filter(has_text="<script>window.__xss = 1</script>")
    expect(markup).to_have_count(1)  # shown as text ...
    assert page.evaluate("window.__xss") is None  # ... and never run
    assert page.locator("[data-testid=panel-dlq] script, [data-testid=panel-dlq] img").count() == 0
    _shot(page, "06-dlq")
    page.get_by_test_id("dlq-step").select_option("orders")
    page.get_by_test_id("dlq-type").select_option("parse")
    page.get_by_test_id("dlq-apply").click()
    expect(page.locator("[data-testid=dlq-row]:not([data-step=orders])")).to_have_count(0)
    expect(dlq_rows.first).to_have_attribute("data-error-type", "parse")
    _shot(page, "07-dlq-filtered")

    page.get_by_test_id("tab-lineage").click()
    graph = page.get_by_test_id("lineage-graph")
    expect(graph).to_be_visible()
    expect(graph.locator("[data-testid=lineage-node][data-kind=step]").first).to_be_visible()
    expect(graph.locator("[data-testid=lineage-node][data-kind=dataset]").first).to_be_visible()
    assert graph.locator("path.edge").count() > 0
    _shot(page, "08-lineage")

    page.get_by_test_id("tab-report").click()
    report = page.frame_locator("[data-testid=report-frame]")
    expect(report.locator("h1")).to_contain_text(run_id)
    _shot(page, "09-report")
    with page.context.expect_page() as opened:
        page.get_by_test_id("report-open").click()
    expect(opened.value.locator("h1")).to_contain_text(run_id)
    opened.value.close()

    page.get_by_test_id("tab-logs").click()
    expect(page.get_by_test_id("logs")).not_to_be_empty()
    _shot(page, "10-logs")

    page.get_by_test_id("tab-dlq").click()
    page.get_by_test_id("dlq-type").select_option("type")  # parse failures are raw text: not replayable
    page.get_by_test_id("dlq-apply").click()
    expect(page.locator("[data-testid=dlq-row]:not([data-error-type=type])")).to_have_count(0)
    expect(page.get_by_test_id("dlq-replay-button")).to_be_enabled()
    page.get_by_test_id("dlq-replay-button").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
    expect(page.get_by_test_id("confirm-text")).to_contain_text(run_id)
    expect(page.get_by_test_id("confirm-text")).to_contain_text("error type type")
    _shot(page, "11-replay-confirm")
    page.get_by_test_id("confirm-ok").click()
    link = page.get_by_test_id("replay-link")
    expect(link).to_be_visible()
    replay_id = link.get_attribute("data-run-id")
    assert replay_id and replay_id != run_id
    link.click()
    expect(page.get_by_test_id("run-id")).to_have_text(replay_id)
    expect(page.get_by_test_id("replay-of")).to_have_text(run_id)
    replay_final = _wait_for_run(page, TERMINAL)  # the replayed rows are still malformed: any outcome is fine
    replay_row = page.locator(f'[data-testid=run-row][data-run-id="{replay_id}"]')
    expect(replay_row.get_by_test_id("run-row-status")).to_have_attribute("data-status", replay_final)
    expect(row.get_by_test_id("pipeline-status")).to_have_attribute("data-status", replay_final)
    _shot(page, "12-replay-run")

    for name in ("01-login", "02-register-error", "03-registered", "04-running", "05-succeeded", "06-dlq",
                 "07-dlq-filtered", "08-lineage", "09-report", "10-logs", "11-replay-confirm", "12-replay-run"):
        shot = ARTIFACTS / f"{name}.png"
        assert shot.is_file() and shot.stat().st_size > 1000, shot


def test_viewer_cannot_start_or_register(api: Api, page: Page) -> None:
    """A viewer key sees the tenant's pipelines with Start disabled and no register form; the API
    refuses the start with 403 even when the page is forced to send it, and the banner says so."""
    name = f"viewer-sees-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "template": "quickstart", "params": {}, "options": ["--runner=DirectRunner"]}
    code, created = api.call("POST", "/pipelines", api.admin["api_key"], body)
    assert code == 201, created
    viewer = api.cli("keys", "create", "--tenant", TENANT, "--role", "viewer")
    assert viewer["role"] == "viewer", viewer

    page.goto(f"{api.base_url}/ui")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_test_id("login-button").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("401")
    expect(page.get_by_test_id("login")).to_be_visible()
    _shot(page, "20-bad-key")

    _login(page, api, viewer["api_key"])
    expect(page.get_by_test_id("session-role")).to_have_text("viewer")
    row = page.locator(f'[data-testid=pipeline-row][data-pipeline-name="{name}"]')
    start = row.get_by_test_id("start-button")
    expect(start).to_be_disabled()
    expect(row.get_by_test_id("stop-button")).to_be_disabled()
    expect(page.get_by_test_id("register-form")).to_be_hidden()
    expect(page.get_by_test_id("register-denied")).to_be_visible()
    _shot(page, "21-viewer")

    forced = page.evaluate("""async ([id, key]) => {
        const r = await fetch(`/pipelines/${id}/start`, {method: "POST", headers: {"X-API-Key": key}});
        return [r.status, await r.json()];
    }""", [created["id"], viewer["api_key"]])
    assert forced[0] == 403 and forced[1].get("detail"), forced
    start.evaluate("button => { button.disabled = false; }")
    start.click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("403")
    _shot(page, "22-viewer-forced-start")
    code, status = api.call("GET", f"/pipelines/{created['id']}/status", viewer["api_key"])
    assert code == 200 and status["status"] == "never_run", status

    page.get_by_test_id("logout-button").click()
    expect(page.get_by_test_id("login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('beam_etl.apiKey')") is None
    for shot in ("20-bad-key", "21-viewer", "22-viewer-forced-start"):
        assert (ARTIFACTS / f"{shot}.png").stat().st_size > 1000
