"""Drive Debian's chromium from pytest through playwright-core (dashboard/e2e/driver.mjs).

``Browser(edge_url, tmp)`` starts ``node dashboard/e2e/driver.mjs`` with a fresh user data
dir; each method sends one JSON command and waits for its answer. Playwright's own
errors (a selector that never showed up, a timeout) come back as :class:`BrowserError`
with the page's recent console errors appended. Never downloads a browser: chromium is
installed by ``make setup`` (apt-get) and found at ``$CHROMIUM`` or /usr/bin/chromium.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "dashboard" / "e2e" / "driver.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

__all__ = ["Browser", "BrowserError", "CHROMIUM", "missing_prerequisites"]


class BrowserError(RuntimeError):
    """A command the browser could not carry out."""


def missing_prerequisites() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node is missing"
    if not (ROOT / "dashboard" / "node_modules" / "playwright-core").exists():
        return "dashboard/node_modules is missing: run `make setup` (npm ci)"
    if not (ROOT / "dashboard" / "dist" / "index.html").exists():
        return "dashboard/dist is missing: run `make setup` (it builds the dashboard)"
    return None


class Browser:
    def __init__(self, base_url: str, user_data_dir: Path, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.proc = subprocess.Popen(
            ["node", str(DRIVER), str(user_data_dir)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "CHROMIUM": CHROMIUM},
        )
        self._buf = b""
        self._answer(timeout)  # "ready"

    def _answer(self, timeout: float) -> Any:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from the browser driver within {timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise BrowserError(f"the browser driver exited: {err[-2000:]}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise BrowserError(answer.get("error", "unknown error"))
        return answer.get("result")

    def call(self, op: str, timeout: float = 60.0, **kwargs: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **kwargs}) + "\n").encode())
        self.proc.stdin.flush()
        try:
            return self._answer(timeout)
        except BrowserError as exc:
            if op != "errors":
                try:
                    recent = self.call("errors", timeout=10)
                except BrowserError:
                    recent = []
                if recent:
                    raise BrowserError(f"{exc}\nconsole errors: {recent[-10:]}") from None
            raise

    # -- conveniences ------------------------------------------------------------------
    def goto(self, route: str) -> str:
        return self.call("goto", url=f"{self.base_url}/{route.lstrip('/')}")

    def wait(self, selector: str, timeout: float = 15.0) -> None:
        """Until ``selector`` is visible (BrowserError after ``timeout`` seconds)."""
        self.call("wait", timeout=timeout + 10, selector=selector, wait_ms=int(timeout * 1000))

    def wait_fn(self, expr: str, arg: Any = None, timeout: float = 15.0) -> Any:
        """Until the JS function ``expr`` (called with ``arg``) returns truthy; its value."""
        return self.call("waitFn", timeout=timeout + 10, expr=expr, arg=arg, wait_ms=int(timeout * 1000))

    def eval(self, expr: str, arg: Any = None) -> Any:
        return self.call("eval", expr=expr, arg=arg)

    def fill(self, selector: str, value: str) -> None:
        self.call("fill", selector=selector, value=value)

    def click(self, selector: str) -> None:
        self.call("click", selector=selector)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.call("screenshot", path=str(path))

    def errors(self) -> list[str]:
        return list(self.call("errors"))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=15)
            except (BrowserError, BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
