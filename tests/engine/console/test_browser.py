"""The web console end to end in headless Chromium, driven over the Chrome DevTools protocol
(a websocket, spoken here with trio-websocket): sign in with a token, run a job and watch its
output while it is produced, kill one, submit a request, approve it and watch it complete."""

from __future__ import annotations

import functools
import itertools
import json
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from .conftest import DEFINITION, GUARD, Console

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)"),
]


class Page:
    """One browser tab, attached with a flat CDP session."""

    def __init__(self, ws: WebSocketConnection, session: str) -> None:
        self.ws = ws
        self.session = session

    async def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (promises are awaited); return its value."""
        reply = await cdp(self.ws, "Runtime.evaluate", session=self.session, expression=expression,
                          awaitPromise=True, returnByValue=True)  # fmt: skip
        if "exceptionDetails" in reply:
            raise AssertionError(f"page error: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def until(self, condition: str, value: str = "true") -> Any:
        """Wait (in the page, checking every 50 ms) until ``condition`` holds; return ``value``."""
        return await self.js(
            "new Promise(done => { const check = () => { try { if ("
            + condition
            + ") return done("
            + value
            + "); }"
            " catch (e) {} setTimeout(check, 50); }; check(); })"
        )

    async def click(self, selector: str) -> None:
        await self.js(f"document.querySelector({json.dumps(selector)}).click()")

    async def fill(self, element_id: str, value: str) -> None:
        await self.js(
            f"document.getElementById({json.dumps(element_id)}).value = {json.dumps(value)}"
        )

    def text(self, element_id: str) -> str:
        return f"document.getElementById({json.dumps(element_id)}).textContent"


_ids = itertools.count(1)


async def cdp(
    ws: WebSocketConnection, method: str, *, session: str | None = None, **params: Any
) -> Any:
    """Send one CDP command and return its result (events in between are skipped)."""
    message_id = next(_ids)
    message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
    if session is not None:
        message["sessionId"] = session
    await ws.send_message(json.dumps(message))
    while True:
        reply = json.loads(await ws.get_message())
        if reply.get("id") == message_id:
            if "error" in reply:
                raise AssertionError(f"{method}: {reply['error']}")
            return reply["result"]


@asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[WebSocketConnection]:
    """Headless Chromium with a fresh profile; yields its DevTools websocket."""
    profile.mkdir()  # noqa: ASYNC240 (a fresh tmp_path: nothing to block on)
    command = [CHROMIUM or "chromium", *FLAGS, f"--user-data-dir={profile}", "about:blank"]
    async with trio.open_nursery() as nursery:
        start = functools.partial(trio.run_process, command, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, check=False)  # fmt: skip
        process = await nursery.start(start)
        try:
            active = profile / "DevToolsActivePort"
            while not active.exists() or len(active.read_text().splitlines()) < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)  # Chromium writes this file once it listens
            port, path = active.read_text().splitlines()[:2]
            async with open_websocket_url(
                f"ws://127.0.0.1:{port}{path}", max_message_size=64 * 1024 * 1024
            ) as ws:
                yield ws
        finally:
            process.kill()


async def open_page(ws: WebSocketConnection, url: str) -> Page:
    target = await cdp(ws, "Target.createTarget", url="about:blank")
    attached = await cdp(ws, "Target.attachToTarget", targetId=target["targetId"], flatten=True)
    page = Page(ws, attached["sessionId"])
    await cdp(ws, "Page.enable", session=page.session)
    await cdp(ws, "Page.navigate", session=page.session, url=url)
    await page.until("document.readyState === 'complete' && document.getElementById('token')")
    await page.js("window.confirm = () => true")  # the page asks before kill and cancel
    return page


async def test_the_web_console_runs_watches_and_approves(console: Console, tmp_path: Path) -> None:
    """Signed in as an operator, the page runs a job and shows its first line while the job
    is still running, then its end; kills a job; submits a request, approves it and shows it
    completed. The engine records the operator as the one who did each."""
    page_url = console.url.replace("ws://", "http://")
    gate = console.root / "gate"
    token = await console.token_for("operator")
    with trio.fail_after(GUARD):
        async with console.connect() as admin:
            await console.catalog(admin, 2)
        async with browser(tmp_path / "profile") as ws:
            page = await open_page(ws, page_url)
            await page.fill("token", token)
            await page.click("#connect")
            who = await page.until(f"{page.text('status')} === 'connected'", page.text("who"))
            assert who == "operator-1 (operator)"

            await page.click('.tab[data-tab="new"]')
            await page.fill("run-name", "console_work")
            await page.fill("run-params", json.dumps({"lines": 3, "gate": str(gate)}))
            await page.click("#run-submit")
            # the job waits at its gate, so it is running; the state and the output arrive in
            # separate pushed frames, so wait for both to be shown
            first = await page.until(
                f"{page.text('output')}.includes('console_work line 1 of 3')"
                f" && {page.text('detail-state')} === 'running'",
                f"[{page.text('detail-id')}, {page.text('detail-state')}, {page.text('output')}]",
            )
            job, shown_state, output = first
            assert shown_state == "running" and "line 2" not in output
            async with console.connect() as admin:
                assert (await admin.call("job", job=job))["state"] == "running"
                gate.write_text("open\n")
                final = await page.until(
                    f"{page.text('detail-state')} === 'succeeded' && {page.text('output')}.includes('-- succeeded --')",
                    page.text("output"),
                )
                assert "console_work line 3 of 3" in final
                row = await page.until(
                    f"[...document.querySelectorAll('#jobs tbody tr')].some(r => r.dataset.key === '{job}'"
                    " && r.cells[3].textContent === 'succeeded')"
                )
                assert row is True

                await page.click('.tab[data-tab="new"]')
                await page.fill("run-name", "sleep_echo")
                await page.fill("run-params", json.dumps({"seconds": 60}))
                await page.click("#run-submit")
                victim = await page.until(
                    f"{page.text('detail-state')} === 'running' && {page.text('detail-id')} !== '{job}'",
                    page.text("detail-id"),
                )
                await page.click("#kill")
                await page.until(f"{page.text('detail-state')} === 'cancelled'")

                await page.click('.tab[data-tab="new"]')
                await page.fill(
                    "submit-toml", textwrap.dedent(DEFINITION.format(name="web", namespace="web"))
                )
                await page.fill("submit-user", "carol")
                await page.click("#submit-button")
                await page.until(
                    "document.querySelector('#requests tbody tr')?.cells[3].textContent === 'submitted'"
                )
                rid = await page.js("document.querySelector('#requests tbody tr').dataset.key")
                assert rid == "web-carol-0001"
                await page.click('#requests tbody tr button[data-verb="approve"]')
                await page.until(
                    "document.querySelector('#requests tbody tr').cells[3].textContent === 'completed'"
                )

                events = await admin.call("events", limit=5000)
        by = {(e["kind"], e["subject"]): e["data"].get("by") for e in events}
        assert by[("job.created", job)] == "operator-1"
        assert by[("job.kill_requested", victim)] == "operator-1"
        approvals = [
            e["data"]["by"]
            for e in events
            if e["kind"] == "request.state" and e["data"]["verb"] == "approve"
        ]
        assert approvals == ["operator-1"]


async def test_the_page_refuses_a_bad_token_and_a_viewer_sees_no_actions(
    console: Console, tmp_path: Path
) -> None:
    """A bad token leaves the page signed out with the reason; a viewer's page hides the
    operator forms."""
    page_url = console.url.replace("ws://", "http://")
    viewer = await console.token_for("viewer")
    with trio.fail_after(GUARD):
        async with browser(tmp_path / "profile") as ws:
            page = await open_page(ws, page_url)
            await page.fill("token", "wrong")
            await page.click("#connect")
            shown = await page.until(
                f"{page.text('message')}.includes('bad or revoked token')", page.text("message")
            )
            assert shown == "unauthenticated: bad or revoked token"
            assert await page.js("document.getElementById('app').hidden") is True
            await page.fill("token", viewer)
            await page.click("#connect")
            await page.until(f"{page.text('status')} === 'connected'")
            hidden = await page.js("getComputedStyle(document.getElementById('run-form')).display")
            assert hidden == "none"
            assert await page.js("sessionStorage.getItem('wfe.token')") == viewer
