"""The dashboard in a real browser: Debian's headless Chromium, driven over the DevTools protocol
(CDP), loads ``/dashboard`` from a real gateway with API keys on, against a real server and
real worker processes with load flowing; the test reads the rendered DOM as it changes.

It asks for the key, then shows the stages; a backlog that rises while no worker runs and falls
to zero once one does; a poison job's dead letter with its reason; the live worker and its
device; batch-size bars and queue-wait percentiles from the workers' heartbeats; the dead
letter requeued with its button once the poison is fixed; and, with Redis killed, a banner
saying so, gone once Redis is back. A blank page (no stages) or a stale one (a backlog that
never changes, an update time that stands still) fails it.

The screenshot goes to the test's temporary folder, and to ``BATCHLINE_SCREENSHOT`` when that
names a file (how ``docs/dashboard.png`` is made). Skipped only when no Chromium is installed.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.sync.client import ClientConnection, connect

from api.auth import new_key
from queueing.client import Client
from queueing.server import EmbeddedServer
from queueing.settings import Settings
from tests.api.conftest import LiveGateway
from tests.poison import POISONED, dead_letter_poison
from tests.support import Workers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium installed (apt-get install chromium; .ci/run does)"
    ),
    pytest.mark.timeout(40),
]
KEY, DIGEST = new_key()
MODEL, FORMAT = "t_poison.model", "t_poison.format"
N_SLOW = 30
"""Jobs that take the model 0.05 s each: a backlog that lasts a second or two."""

# What the test reads of the page, in one evaluation.
READ_PAGE = """(() => {
  const status = document.querySelector('#status');
  if (!status) return null;  // (not loaded yet)
  const banner = document.querySelector('#banner');
  const stages = {};
  for (const el of document.querySelectorAll('.stage')) {
    stages[el.dataset.stage] = {
      backlog: Number(el.querySelector('.figure.backlog').dataset.value),
      dead: Number(el.querySelector('.dead .count').dataset.value),
      dead_jobs: [...el.querySelectorAll('li.dead-letter')].map((li) => li.dataset.job),
      reasons: [...el.querySelectorAll('li.dead-letter .reason')].map((r) => r.textContent),
      bars: el.querySelectorAll('svg.histogram rect').length,
      wait_p50: el.querySelector('.wait-p50').textContent,
      sparkline: el.querySelectorAll('svg.sparkline polyline').length,
    };
  }
  return {
    state: status.dataset.state,
    updated: Number(status.dataset.updated || 0),
    banner: banner.hidden ? '' : banner.textContent,
    key_form: !document.querySelector('#key-form').hidden,
    stages,
    workers: [...document.querySelectorAll('tr.worker')].map(
      (tr) => [tr.dataset.worker, tr.querySelector('.device').textContent]),
  };
})()"""


class Browser:
    """One headless Chromium and a CDP session on its page."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # (tests may run as root, where the sandbox refuses to start)
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1400,1100",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        limit = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > limit:
                self.close()
                raise AssertionError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.cdp: ClientConnection = self._stack.enter_context(
            connect(url, max_size=None, open_timeout=10)
        )
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command's result (events arriving meanwhile are skipped)."""
        call_id = next(self._ids)
        self.cdp.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.cdp.recv(timeout=20))
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"the page's script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        if hasattr(self, "_stack"):
            self._stack.close()
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    session = Browser(tmp_path / "chromium")
    try:
        yield session
    finally:
        session.close()


def wait_for_page(
    browser: Browser, predicate: Callable[[dict[str, Any]], object], timeout: float, what: str
) -> dict[str, Any]:
    """Read the page until ``predicate`` holds for it; fail with ``what`` and the last page."""
    limit = time.monotonic() + timeout
    while True:
        page: dict[str, Any] | None = browser.evaluate(READ_PAGE)
        if page is not None and predicate(page):
            return page
        if time.monotonic() > limit:
            raise AssertionError(f"after {timeout:g}s: {what}; the page shows {page}")
        time.sleep(0.1)


def test_the_dashboard_shows_load_dead_letters_and_outages(
    own_server: EmbeddedServer,
    settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    browser: Browser,
    tmp_path: Path,
) -> None:
    settings = settings.replace(
        redis_url=own_server.url,
        pipelines=("tests.poison",),
        max_deliveries=1,
        api_keys=(DIGEST,),
    )
    register(settings)
    gateway = start_gateway(settings)
    r = redis.Redis.from_url(own_server.url)
    workers = Workers(settings)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{gateway.url}/dashboard?interval_ms=250")

        # Keys are on: the page asks for one, and shows nothing until it has it.
        page = wait_for_page(browser, lambda p: p["key_form"], 10, "no key form")
        assert page["state"] == "auth"
        assert page["stages"] == {}
        browser.evaluate(
            f"document.querySelector('#key').value = {json.dumps(KEY)};"
            "document.querySelector('#key-form').requestSubmit();"
        )
        page = wait_for_page(browser, lambda p: p["state"] == "ok", 10, "the key was refused")
        assert set(page["stages"]) == {MODEL, FORMAT}
        assert page["stages"][MODEL]["backlog"] == 0
        assert browser.evaluate("sessionStorage.length") == 1
        assert browser.evaluate("localStorage.length + document.cookie.length") == 0

        # Load while no worker runs (the poison first: see tests.poison): the backlog rises.
        r.set(POISONED, 1)
        with Client(settings) as client:
            poison = client.submit("t_poison", {"x": 0, "poison": True})
            client.submit_many("t_poison", [{"x": x, "sleep": 0.05} for x in range(1, N_SLOW)])
        first = wait_for_page(
            browser, lambda p: p["stages"][MODEL]["backlog"] == N_SLOW, 10, "no backlog shown"
        )

        # A worker dies on the poison; its restart dead-letters it and drains the rest.
        dead_letter_poison(workers, settings, 1)
        workers.start("t_poison", name="w")
        page = wait_for_page(
            browser,
            lambda p: (
                p["stages"][MODEL]["dead"] == 1 and 0 < p["stages"][MODEL]["backlog"] < N_SLOW
            ),
            20,
            "the backlog never fell while the dead letter showed",
        )
        assert page["stages"][MODEL]["dead_jobs"] == [poison.id]
        assert "dead-lettered after 1 attempts" in page["stages"][MODEL]["reasons"][0]
        drained = wait_for_page(
            browser,
            lambda p: (
                all(s["backlog"] == 0 for s in p["stages"].values())
                and p["stages"][MODEL]["bars"] > 0
                and p["workers"]
            ),
            30,
            "the backlog never fell to 0 with batch sizes and a live worker shown",
        )
        assert drained["updated"] > first["updated"], "the page stopped updating"
        assert drained["workers"] == [["w", "cpu"]]
        assert drained["stages"][MODEL]["wait_p50"] not in ("", "\u2013")  # (an en dash: no data)
        assert drained["stages"][MODEL]["sparkline"] == 1
        shot = tmp_path / "dashboard.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
        if target := os.environ.get("BATCHLINE_SCREENSHOT"):
            shutil.copyfile(shot, target)

        # Fixed, the poison job is requeued with the page's button, and ends done.
        r.delete(POISONED)
        browser.evaluate(
            f"document.querySelector('.stage[data-stage=\"{MODEL}\"] li.dead-letter button').click()"
        )
        wait_for_page(browser, lambda p: p["stages"][MODEL]["dead"] == 0, 10, "not requeued")
        with Client(settings) as client:
            assert client.job(poison.id).result(timeout=20) == {"x": 0, "y": 0, "formatted": True}

        # Redis goes away: the page says so; it comes back: the page recovers.
        workers.close()
        own_server.kill()
        down = wait_for_page(browser, lambda p: p["state"] == "down", 15, "no outage shown")
        assert "Redis is unreachable" in down["banner"]
        own_server.start()
        wait_for_page(
            browser, lambda p: p["state"] == "ok" and not p["banner"], 15, "no recovery shown"
        )
    finally:
        workers.close()
        r.close()
