"""The dashboard's sign-in flow in a real browser with the edge enforcing tokens (issue 10):
no token → the page asks for one; a viewer's token → reading works, and creating a job
shows a clear 403 (the server's message, the reason and what to do), nothing created.

A browser of its own (fresh profile: no token in its session storage), driving Debian's
chromium through playwright-core against the real mesh, like tests/e2e/test_dashboard.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from services.launcher.mesh import Mesh
from tests.auth import token
from tests.e2e.browser import Browser, missing_prerequisites

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh_browser(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    why = missing_prerequisites()
    if why:
        pytest.fail(why, pytrace=False)
    b = Browser(mesh.edge_url, tmp_path_factory.mktemp("chromium-signin"))
    try:
        yield b
    finally:
        b.close()


def _text(browser: Browser, selector: str) -> str:
    return browser.eval("(s) => document.querySelector(s)?.textContent ?? ''", selector)


def test_no_token_asks_to_sign_in_and_a_viewer_sees_a_clear_403_on_create(
        fresh_browser: Browser, rest: httpx.Client) -> None:
    b = fresh_browser
    b.goto("/#/system")
    # the health stream is refused (401): the sign-in bar asks for a token
    b.wait(".signin.needed #token-input", timeout=20)
    assert b.eval("() => document.querySelector('.signin').getAttribute('role')") == "alert"
    assert b.eval("() => document.querySelectorAll('tr[data-component]').length") == 0  # nothing shown without one
    b.errors()  # the browser logs the refused requests; not the page's errors

    b.fill("#token-input", token("viewer"))
    b.click(".signin form button[type=submit]")
    b.wait("tr[data-component='training']", timeout=30)  # reading works with the viewer's token
    signed = _text(b, ".signin")
    assert "Signed in as test-viewer (viewer)" in signed, signed
    assert b.eval("() => sessionStorage.getItem('agentforge.token') !== null")

    before = len(rest.get("/v1/trainingJobs", params={"pageSize": 1000}).json().get("trainingJobs", []))
    b.goto("/#/jobs")
    b.wait("#create-job-form")
    b.fill("#displayName", "a viewer may not")
    b.click("#create-job-form button[type=submit]")
    b.wait("#create-job-form .problem", timeout=20)
    problem = _text(b, "#create-job-form .problem")
    assert "The job was not created" in problem, problem
    assert "PERMISSION_DENIED" in problem and "ROLE_REQUIRED" in problem, problem
    assert "viewer" in problem and "trainer" in problem, problem  # the server's own words: who needs what
    assert "What to do:" in problem and "role" in problem, problem
    # the sign-in bar offers another token, saying why
    b.wait(".signin.needed #token-input")
    assert "trainer" in _text(b, ".signin"), _text(b, ".signin")
    after = len(rest.get("/v1/trainingJobs", params={"pageSize": 1000}).json().get("trainingJobs", []))
    assert after == before  # nothing was created
    assert b.eval("() => location.hash") == "#/jobs"
    assert [e for e in b.errors() if "pageerror" in e] == []
