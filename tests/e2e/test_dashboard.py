"""The dashboard in a real browser (Debian chromium via playwright-core) against the mesh.

Everything goes through the page: it is served by Envoy at the edge's origin and talks
grpc-web to the services through the same edge. The tests write a screenshot of every
page to docs/screenshots/ (shown in the README).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.launcher.mesh import Mesh
from tests.auth import token
from tests.e2e.browser import Browser, missing_prerequisites
from tests.e2e.conftest import job_id, tiny_job, wait_job

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    why = missing_prerequisites()
    if why:
        pytest.fail(why, pytrace=False)
    b = Browser(mesh.edge_url, tmp_path_factory.mktemp("chromium-profile"))
    try:
        b.goto(f"/#token={token('admin')}")  # as a user signs in: the dashboard keeps it for the tab
        yield b
    finally:
        b.close()


def chart(browser: Browser, chart_id: str) -> dict[str, str]:
    return browser.eval(
        "(id) => { const el = document.getElementById(id); return el ? {...el.dataset} : null; }", chart_id)


def open_job(browser: Browser, job: str) -> None:
    browser.goto(f"/#/jobs/{job}")
    browser.wait("#chart-loss")


def test_the_edge_serves_the_dashboard_with_its_headers(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.edge_url, timeout=10) as client:
        index = client.get("/", headers={"accept-encoding": "identity"})
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in index.headers["content-security-policy"]
        assert index.headers["cache-control"] == "no-cache"
        script = index.text.split('src="', 1)[1].split('"', 1)[0]
        plain = client.get(script, headers={"accept-encoding": "identity"})
        gz = client.get(script, headers={"accept-encoding": "gzip"})
        assert plain.status_code == gz.status_code == 200
        assert "immutable" in plain.headers["cache-control"]
        assert gz.headers["content-encoding"] == "gzip" and gz.content == plain.content  # httpx decodes
        assert int(gz.headers["content-length"]) < len(plain.content) / 2
        # Only GET/HEAD reach the files; unknown paths stay the API's 404.
        assert client.post("/", content=b"x").status_code == 404
        assert client.get("/nope.js").status_code == 404


def test_every_page_loads_without_console_errors(browser: Browser, rest: httpx.Client) -> None:
    created = rest.post("/v1/trainingJobs", json={**tiny_job(), "displayName": "screenshot job"}).json()
    done = wait_job(rest, created["name"], lambda j: j["state"] == "TRAINING_JOB_STATE_SUCCEEDED")
    jid = job_id(done["name"])
    browser.errors()
    pages = [
        ("system", "/#/system", "tr[data-component='training'][data-status='SERVING']"),
        ("jobs", "/#/jobs", f"#jobs-table tr[data-job='{jid}']"),
        ("job", f"/#/jobs/{jid}", "#chart-loss[data-count='40'][data-contiguous='true']"),
    ]
    for name, route, ready in pages:
        browser.goto(route)
        browser.wait(ready, timeout=20)
        browser.screenshot(SCREENSHOTS / f"{name}.png")
        assert browser.errors() == [], name
    # The job page's validation chart has the job's four evaluations.
    assert chart(browser, "chart-validation")["count"] == "4"


def test_a_job_started_from_the_form_shows_its_chart_moving(browser: Browser) -> None:
    browser.goto("/#/jobs")
    browser.wait("#create-job-form")
    for field, value in {"displayName": "from the form", "modulus": "17", "maxSteps": "200",
                         "evalInterval": "50", "checkpointInterval": "100", "progressInterval": "1"}.items():
        browser.fill(f"#{field}", value)
    browser.click("#create-job-form button[type=submit]")
    jid = browser.wait_fn("() => { const m = /^#\\/jobs\\/([a-z0-9-]+)$/.exec(location.hash); return m && m[1]; }")
    browser.wait("#chart-loss")
    first = int(browser.wait_fn(
        "() => { const n = +document.getElementById('chart-loss').dataset.count; return n > 0 && n; }", timeout=60))
    later = int(browser.wait_fn(
        "(n) => { const c = +document.getElementById('chart-loss').dataset.count; return c > n && c; }",
        arg=first, timeout=60))
    assert later > first
    browser.wait("[data-job-state='SUCCEEDED']", timeout=180)
    browser.wait("#chart-loss[data-count='200']", timeout=20)
    loss = chart(browser, "chart-loss")
    assert loss["first"] == "1" and loss["last"] == "200" and loss["contiguous"] == "true", (jid, loss)
    assert chart(browser, "chart-grokfast")["count"] == "200"
    assert browser.errors() == []


def test_a_bad_spec_shows_the_servers_message_next_to_its_field(browser: Browser) -> None:
    browser.goto("/#/jobs")
    browser.wait("#create-job-form")
    browser.fill("#batchSize", "0")
    browser.fill("#heads", "3")  # width 32 is not divisible by 3: a rule on the model message
    browser.click("#create-job-form button[type=submit]")
    browser.wait("[data-field-error='batchSize']")
    batch = browser.eval("() => document.querySelector(\"[data-field-error='batchSize']\").textContent")
    assert "greater than or equal to 1" in batch, batch
    assert browser.eval("() => document.getElementById('batchSize').getAttribute('aria-invalid')") == "true"
    browser.wait("[data-field-error='width']")
    width = browser.eval("() => document.querySelector(\"[data-field-error='width']\").textContent")
    assert "divisible by heads" in width, width
    assert browser.eval("() => location.hash") == "#/jobs"  # nothing was created
    browser.screenshot(SCREENSHOTS / "create-job-errors.png")
    assert browser.errors() == []


def test_a_stopped_service_turns_red_on_the_system_page_within_a_second(browser: Browser, mesh: Mesh) -> None:
    browser.goto("/#/system")
    browser.wait("tr[data-component='model'][data-status='SERVING']", timeout=20)
    try:
        mesh.kill_service("model", restart=False)  # held down until restart_service
        stopped = time.monotonic()
        browser.wait("tr[data-component='model'][data-status='NOT_SERVING']", timeout=10)
        took = time.monotonic() - stopped
        assert took <= 1.0, f"red after {took:.2f}s"
    finally:
        mesh.restart_service("model")
    browser.wait("tr[data-component='model'][data-status='SERVING']", timeout=30)
    browser.errors()


def test_cutting_the_stream_leaves_the_chart_without_gaps_or_duplicates(
        browser: Browser, rest: httpx.Client, mesh: Mesh) -> None:
    body = {**tiny_job(maxSteps="400", evalInterval="100", checkpointInterval="0"), "displayName": "cut stream"}
    job = rest.post("/v1/trainingJobs", json=body).json()
    jid = job_id(job["name"])
    open_job(browser, jid)
    browser.wait_fn("() => +document.getElementById('chart-loss').dataset.count > 20", timeout=60)
    previous = int(mesh.status()["envoy"]["pid"])  # type: ignore[arg-type]
    mesh.kill_service("envoy")  # SIGKILL: every connection through the edge is cut mid-stream
    mesh.wait_restarted("envoy", previous)  # the supervisor brings it back on the same port
    browser.wait("[data-stream-state][data-reconnects]:not([data-reconnects='0'])", timeout=30)
    browser.wait("[data-job-state='SUCCEEDED']", timeout=180)
    browser.wait("[data-stream-state='ended']", timeout=30)
    loss = chart(browser, "chart-loss")
    assert (loss["count"], loss["first"], loss["last"], loss["contiguous"]) == ("400", "1", "400", "true"), loss
    info = browser.eval("() => ({...document.getElementById('stream-info').dataset})")
    assert info["gaps"] == "0", info
    browser.errors()  # the cut itself logs network errors; they are expected here


COGNATE = {"candidates": "1", "max_steps": "20", "batch_size": "8", "width": "32", "heads": "2", "layers": "1",
           "context_length": "32", "progress_interval": "5"}


@pytest.mark.timeout(600)
def test_a_phase_run_from_its_page_then_its_model_and_the_alerts(browser: Browser) -> None:
    browser.goto("/#/phases")
    browser.wait("#phases-table tr[data-phase='cognate']", timeout=20)
    browser.click("#phases-table tr[data-phase='cognate'] button")
    browser.wait("#start-phase-form")
    for name, value in COGNATE.items():
        browser.fill(f"#param-{name}", value)
    browser.screenshot(SCREENSHOTS / "phases.png")
    browser.click("#start-phase-form button[type=submit]")
    run = browser.wait_fn("() => { const m = /^#\\/phaseRuns\\/([a-z0-9-]+)$/.exec(location.hash); return m && m[1]; }")
    browser.wait("#steps-table tbody tr[data-step]", timeout=30)
    browser.wait("[data-run-state='SUCCEEDED']", timeout=420)
    browser.wait("[data-stream-state='ended']", timeout=30)
    steps = browser.eval("() => [...document.querySelectorAll('#steps-table tr[data-step]')].map(r => r.dataset.stepState)")
    assert steps and all(s in ("SUCCEEDED", "SKIPPED") for s in steps), (run, steps)
    browser.screenshot(SCREENSHOTS / "phase-run.png")
    assert browser.errors() == []

    browser.goto("/#/models")
    model = browser.wait_fn(
        "() => { const r = document.querySelector('#models-table tr[data-model]'); return r && r.dataset.model; }",
        timeout=20)
    browser.screenshot(SCREENSHOTS / "models.png")
    browser.goto(f"/#/models/{model}")
    browser.wait("#versions-table tr[data-version]", timeout=20)
    # Lineage links back to the job that trained it; the download shows its progress to the end.
    assert browser.eval("() => !!document.querySelector('#versions-table a[href^=\"#/jobs/\"]')")
    browser.click("#versions-table tr[data-version] button")
    browser.wait_fn("() => { const p = document.querySelector('#versions-table progress'); "
                    "return p && p.max > 1 && p.value === p.max; }", timeout=60)
    browser.screenshot(SCREENSHOTS / "model.png")
    assert browser.errors() == []

    browser.goto("/#/alerts")
    browser.wait("#alerts-table")
    browser.wait("[data-stream-state='live'], [data-stream-state='connecting']")
    browser.screenshot(SCREENSHOTS / "alerts.png")
    assert browser.errors() == []
