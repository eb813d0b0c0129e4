"""The UIs an operator uses, in a real browser against the real stack of `prewarm up`.

Debian's chromium, driven by playwright (never a browser download). The stack runs on free
ports with its own data directory; a small warehouse is trained first so MLflow has a
champion to show. Screenshots go to a temporary directory, or to PREWARM_SCREENSHOTS_DIR
(`make screenshots` points it at docs/img for the README).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from flows import stack
from flows.deployments import ON_DEMAND, SCHEDULED
from flows.settings import Settings
from provisioning.apply import release_all
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.runtime.select import PROCESS_STATE_FILE
from warehouse.db import connect

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PREWARM = str(Path(sys.executable).with_name("prewarm"))
# How the Prefect UI words each deployment's schedule.
SCHEDULE_TEXT = {
    "prewarm-cycle": "Every 5 minutes",
    "train-forecasters": "At 02:00 AM every day",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A trained demo warehouse and the whole stack on free ports, stopped afterwards."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (.ci/run installs it)")
    home = tmp_path_factory.mktemp("stack")
    env = {
        "PREWARM_DATA_DIR": str(home / "data"),
        "PREWARM_MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlruns' / 'mlflow.db'}",
        "PREWARM_MLFLOW_ARTIFACTS_DIR": str(home / "mlruns" / "artifacts"),
        "PREWARM_PREFECT_PORT": str(_free_port()),
        "PREWARM_MLFLOW_PORT": str(_free_port()),
        "PREWARM_API_PORT": str(_free_port()),
        "PREWARM_RUNTIME": "process",
        "PREFECT_HOME": str(home / "data" / "prefect"),
    }
    saved = {k: os.environ.get(k) for k in [*env, "PREFECT_API_URL"]}
    os.environ.update(env)
    os.environ.pop("PREFECT_API_URL", None)
    settings = Settings()
    for command in (
        ["ingest", "--clients", "2", "--days", "4", "--seed", "3"],
        ["train"],
    ):
        done = subprocess.run([PREWARM, *command], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    services = stack.services(settings)
    try:
        for service in services:
            stack.start(service)
            problem = stack.wait_healthy(service, 180)
            assert problem is None, problem
        _, missing = stack.check_deployments(settings, 120)
        assert not missing, missing
        yield settings
    finally:
        for service in reversed(services):
            stack.stop(service)
        # The cycles' members outlive the stack (as a pool should): release them here.
        state = settings.data_dir / PROCESS_STATE_FILE
        if state.exists():
            release_all(ProcessRuntime(state), settings.pool_scope)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("PREWARM_SCREENSHOTS_DIR")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _screenshot(page: object, path: Path) -> None:
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_prefect_ui_lists_the_cycle_and_training_schedules(running_stack, browser, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 760})
    page.goto(f"http://127.0.0.1:{running_stack.prefect_port}/deployments", wait_until="load")
    names = [*SCHEDULED, *ON_DEMAND]
    for name in names:
        page.locator("tr", has_text=name).first.wait_for(timeout=60_000)
    rows = {name: page.locator("tr", has_text=name).first.inner_text() for name in names}
    for name, text in SCHEDULE_TEXT.items():
        assert text in rows[name], f"{name}: {rows[name]!r}"
    # One schedule on the short interval: the steps of a cycle are never scheduled apart.
    for name in ON_DEMAND:
        assert "Every" not in rows[name], f"{name}: {rows[name]!r}"
    assert f"{len(names)} Deployments" in page.inner_text("body")
    _screenshot(page, shots / "prefect-deployments.png")


def test_mlflow_ui_shows_forecasters_with_a_champion(running_stack, browser, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 620})
    page.goto(f"http://127.0.0.1:{running_stack.mlflow_port}/#/models", wait_until="load")
    page.get_by_text("forecaster-c0000", exact=True).first.wait_for(timeout=60_000)
    # MLflow greets first-time visitors with a dialog and an assistant panel: close both.
    page.wait_for_timeout(1_000)
    page.keyboard.press("Escape")
    page.locator("[role=dialog]").first.wait_for(state="hidden", timeout=10_000)
    assistant = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if assistant.count():
        assistant.first.click()
    # The UI separates "@" and the alias with a no-break space.
    body = page.inner_text("body").replace("\xa0", " ")
    assert "forecaster-c0001" in body
    row = page.get_by_role("row").filter(has_text="forecaster-c0000").first.inner_text()
    row = row.replace("\xa0", " ")
    assert "@ champion" in row or "@ challenger" in row, row
    assert "@ champion" in body  # at least one model made it past the promotion gate
    _screenshot(page, shots / "mlflow-models.png")


def test_the_mlflow_server_runs_without_its_job_consumers(running_stack):
    """MLflow 3's GenAI job runner and its huey consumers cost ~2 GB of RSS and serve
    nothing prewarm does: the stack's MLflow server starts without them, and still serves
    the registry (the test above)."""
    port = str(running_stack.mlflow_port)
    (server,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "server" in (cmd := p.info["cmdline"] or []) and port in cmd and "mlflow" in cmd[1]
    ]
    descendants = [" ".join(child.cmdline()) for child in server.children(recursive=True)]
    assert descendants  # its web workers
    assert not [c for c in descendants if "huey" in c or "_job_runner" in c], descendants


def _niceness_of_children(command_part: str) -> list[int]:
    """The niceness of each child of this process whose command line holds `command_part`
    (other tests leave children too, some of them zombies: skipped)."""
    found = []
    for child in psutil.Process().children():
        try:
            command, nice = " ".join(child.cmdline()), child.nice()
        except psutil.Error:
            continue
        if command_part in command:
            found.append(nice)
    return found


def test_the_flows_run_below_the_api_s_priority(running_stack):
    """The deployments (cycle, training) are batch work at PREWARM_BATCH_NICE; the API, which
    answers clients, keeps the priority `prewarm up` itself has."""
    assert running_stack.batch_nice == 10
    assert _niceness_of_children("flows.deployments") == [10]
    assert _niceness_of_children("flows.cli api") == [psutil.Process().nice()]


def _prefect(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """A Prefect API call, retried while the server answers 503: its SQLite database is busy
    (under the whole suite's load; Prefect's own client retries these the same way)."""
    for _ in range(10):
        response = httpx.request(method, url, timeout=10, **kwargs)
        if response.status_code != 503:
            break
        time.sleep(1.0)
    response.raise_for_status()
    return response


def _run_deployment(settings: Settings, name: str, timeout_s: float = 300.0) -> dict:
    """Start a run of a served deployment through the Prefect API; its final state."""
    api = stack.prefect_api_url(settings)
    wanted = {"deployments": {"name": {"any_": [name]}}}
    found = _prefect("POST", f"{api}/deployments/filter", json=wanted).json()
    assert found, f"no deployment {name}"
    run = _prefect("POST", f"{api}/deployments/{found[0]['id']}/create_flow_run", json={})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _prefect("GET", f"{api}/flow_runs/{run.json()['id']}").json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1.0)
    raise AssertionError(f"{name} did not finish within {timeout_s:.0f} s")


def test_the_stack_runs_cycles_that_converge(running_stack):
    """`prewarm up` serves prewarm-cycle: two runs on the same data, the second changes
    nothing on the runtime."""
    for _ in range(2):
        state = _run_deployment(running_stack, "prewarm-cycle")
        if state["type"] == "CANCELLED":  # the schedule's own run was going: one at a time
            state = _run_deployment(running_stack, "prewarm-cycle")
        assert state["type"] == "COMPLETED", state
    with connect(running_stack.warehouse_path, read_only=True) as con:
        rows = con.execute(
            "SELECT status, creates + releases + pauses + unpauses FROM cycles ORDER BY seq"
        ).fetchall()
    assert len(rows) >= 2 and {status for status, _ in rows} == {"done"}
    assert rows[0][1] > 0 and rows[-1][1] == 0
