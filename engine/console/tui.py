"""``wfe console``: the interactive terminal console, on curses, over the websocket protocol.

The screen is a pure function of a ``Model`` (``render``), and keys change the model or ask
for an operation (``handle_key``), so both are tested without a terminal; ``run_console``
wires them to curses and to a ``Client``. Tables refresh when a committed event arrives (at
most every ``REFRESH`` seconds) and every few seconds for the statistics. Keys::

    1 2 3 4 / Tab jobs, requests, agents, works   up/down, j/k   select
    Enter / o     the selected job's output (live), or the selected request's detail (its
                  stages; for a standing request their gaps, cooldowns, runs and stale products)
    Esc / b       back from the output or the detail
    x             kill the selected job           n              run: `rscript NAME k=v ...`
    a p r c A     approve, pause, resume, cancel, archive the selected request
    ?             help                            q              quit
"""

from __future__ import annotations

import curses
import shlex
import sys
from typing import Any

import attrs
import trio

from wfe.engine.cli.client import Client, ClientError, connect

REFRESH = 0.3  # least seconds between two table refreshes
TABS = ("jobs", "requests", "agents", "works")
WORK_STATUSES = ("queued", "running", "success", "failure", "cancelled")
MAX_OUTPUT_LINES = 5000
REQUEST_KEYS = {"a": "approve", "p": "pause", "r": "resume", "c": "cancel", "A": "archive"}
HELP = (
    "1-4 Tab: jobs requests agents works  j/k: select  Enter: output  x: kill  n: run"
    "  a/p/r/c/A: approve pause resume cancel archive  q: quit"
)


@attrs.define
class Model:
    """Everything the screen shows."""

    who: str = ""
    url: str = ""
    tab: str = "jobs"
    jobs: list[dict[str, Any]] = attrs.Factory(list)
    requests: list[dict[str, Any]] | None = None  # None: this engine has no requests
    agents: list[dict[str, Any]] = attrs.Factory(list)
    works: list[dict[str, Any]] = attrs.Factory(list)  # one row per pipeline's bucket
    stats: dict[str, Any] = attrs.Factory(dict)
    selected: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(TABS, 0))
    output_job: str | None = None  # showing this job's output
    output: list[str] = attrs.Factory(list)
    output_state: str = ""
    detail: list[str] | None = None  # a request's detail, as `wfe status REQUEST` prints it
    detail_of: str = ""
    prompt: str | None = None  # text being typed after "run: "
    confirm: tuple[str, str] | None = None  # (op, target) waiting for y/n
    message: str = "? for help"

    def rows(self) -> list[dict[str, Any]]:
        if self.tab == "jobs":
            return self.jobs
        if self.tab == "requests":
            return self.requests or []
        if self.tab == "works":
            return self.works
        return self.agents

    def current(self) -> dict[str, Any] | None:
        rows = self.rows()
        if not rows:
            return None
        index = min(self.selected[self.tab], len(rows) - 1)
        return rows[index]

    def add_output(self, text: str) -> None:
        if not self.output:
            self.output.append("")
        parts = text.split("\n")
        self.output[-1] += parts[0]
        self.output.extend(parts[1:])
        del self.output[:-MAX_OUTPUT_LINES]


def handle_key(model: Model, key: str) -> tuple[str, dict[str, Any]] | None:
    """Apply ``key`` to ``model``; return an operation to run ``(op, args)``, or None."""
    if model.prompt is not None:
        return _prompt_key(model, key)
    if model.confirm is not None:
        op, target = model.confirm
        model.confirm = None
        if key in ("y", "Y"):
            return (op, {"job": target} if op == "kill" else {"request": target})
        model.message = f"{op} {target}: not done"
        return None
    if model.output_job is not None and key in ("\x1b", "b", "KEY_BACKSPACE", "KEY_LEFT"):
        model.output_job = None
        return ("untail", {})
    if model.detail is not None and key in ("\x1b", "b", "KEY_BACKSPACE", "KEY_LEFT"):
        model.detail = None
        return None
    if key == "q":
        return ("quit", {})
    if key == "?":
        model.message = HELP
    elif key in ("1", "2", "3", "4"):
        model.tab, model.output_job, model.detail = TABS[int(key) - 1], None, None
    elif key == "\t":
        model.tab = TABS[(TABS.index(model.tab) + 1) % len(TABS)]
        model.output_job, model.detail = None, None
    elif key in ("j", "KEY_DOWN"):
        model.selected[model.tab] = min(
            model.selected[model.tab] + 1, max(len(model.rows()) - 1, 0)
        )
    elif key in ("k", "KEY_UP"):
        model.selected[model.tab] = max(model.selected[model.tab] - 1, 0)
    elif key == "n":
        model.prompt = ""
    elif model.tab == "jobs" and key in ("\n", "o", "KEY_ENTER"):
        job = model.current()
        if job is not None:
            model.output_job, model.output, model.output_state = job["id"], [], job["state"]
            return ("tail", {"job": job["id"]})
    elif model.tab == "jobs" and key == "x":
        job = model.current()
        if job is not None:
            model.confirm = ("kill", job["id"])
            model.message = f"kill {job['id']} and everything it started? y/n"
    elif model.tab == "requests" and key in ("\n", "o", "KEY_ENTER"):
        request = model.current()
        if request is not None:
            return ("detail", {"request": request["id"]})
    elif model.tab == "requests" and key in REQUEST_KEYS:
        request = model.current()
        if request is not None:
            op = REQUEST_KEYS[key]
            if op == "cancel":
                model.confirm = ("cancel", request["id"])
                model.message = f"cancel request {request['id']}? y/n"
                return None
            return (op, {"request": request["id"]})
    return None


def _prompt_key(model: Model, key: str) -> tuple[str, dict[str, Any]] | None:
    assert model.prompt is not None
    if key == "\x1b":
        model.prompt, model.message = None, "run: not done"
    elif key in ("\n", "KEY_ENTER"):
        text, model.prompt = model.prompt, None
        try:
            return ("run", parse_run(text))
        except ValueError as exc:
            model.message = f"run: {exc}"
    elif key in ("KEY_BACKSPACE", "\x7f", "\b"):
        model.prompt = model.prompt[:-1]
    elif len(key) == 1 and key.isprintable():
        model.prompt += key
    return None


def parse_run(text: str) -> dict[str, Any]:
    """``rscript NAME k=v ...`` or ``action NAME k=v ...`` into ``run`` arguments (values
    that parse as JSON are taken as JSON). Raises ``ValueError`` with the expected form."""
    import json

    words = shlex.split(text)
    if len(words) < 2 or words[0] not in ("rscript", "action"):
        raise ValueError("type `rscript NAME k=v ...` or `action NAME k=v ...`")
    params: dict[str, Any] = {}
    for pair in words[2:]:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"bad parameter {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return {words[0]: words[1], "params": params}


def render(model: Model, height: int, width: int) -> tuple[list[str], int | None]:
    """The screen as lines (each at most ``width``) and the index of the highlighted line."""
    s = model.stats
    head = (
        f"wfe console  {model.who}  agents {s.get('agents', '-')}  queued {s.get('queued', '-')}"
        f"  running {s.get('running', '-')}  events/s {s.get('events_per_second', '-')}"
    )
    tabs = "  ".join(
        (f"[{i + 1} {t}]" if t == model.tab else f" {i + 1} {t} ")
        for i, t in enumerate(TABS)
        if t != "requests" or model.requests is not None
    )
    lines = [head, tabs, ""]
    highlight = None
    body = max(height - 5, 1)
    if model.output_job is not None:
        lines[2] = f"output of {model.output_job} ({model.output_state})  Esc: back"
        lines += model.output[-body:]
    elif model.detail is not None:
        lines[2] = f"request {model.detail_of}  Esc: back"
        lines += model.detail[:body]
    else:
        table, selected = _table(model)
        if len(table) > 1:
            first = (
                max(0, min(selected - body + 2, len(table) - body)) if selected is not None else 0
            )
            lines.append(table[0])
            shown = table[1:][first : first + body - 1]
            lines += shown
            if selected is not None:
                highlight = 4 + selected - first
        else:
            lines.append(f"(no {model.tab})")
    lines += [""] * max(0, height - 1 - len(lines))
    lines = lines[: height - 1]
    if model.prompt is not None:
        lines.append(f"run: {model.prompt}")
    else:
        lines.append(model.message)
    return [line[: max(width - 1, 0)] for line in lines], highlight


def _table(model: Model) -> tuple[list[str], int | None]:
    if model.tab == "jobs":
        cols = [("id", 8), ("kind", 7), ("name", 18), ("state", 10), ("attempts", 8), ("error", 40)]
        rows = model.jobs
    elif model.tab == "requests":
        cols = [
            ("id", 22),
            ("workflow", 14),
            ("namespace", 10),
            ("state", 10),
            ("user", 8),
            ("error", 30),
        ]
        rows = model.requests or []
    elif model.tab == "works":
        cols = [("pipeline", 24), *((s, 9) for s in WORK_STATUSES)]
        rows = model.works
    else:
        cols = [
            ("name", 12),
            ("state", 12),
            ("transport", 9),
            ("slots", 6),
            ("free_slots", 10),
            ("running", 40),
        ]
        rows = [{**a, "running": " ".join(a.get("running", []))} for a in model.agents]
    header = "  ".join(c.upper().ljust(w) for c, w in cols)
    lines = [header] + [
        "  ".join(str(r.get(c) if r.get(c) is not None else "-")[:w].ljust(w) for c, w in cols)
        for r in rows
    ]
    if not rows:
        return lines, None
    return lines, min(model.selected[model.tab], len(rows) - 1)


# --- the terminal --------------------------------------------------------------------------


class Terminal:
    """The curses screen, driven from trio (keys are read when stdin is readable)."""

    def __init__(self, screen: Any) -> None:
        self.screen = screen
        screen.nodelay(True)
        screen.keypad(True)
        curses.curs_set(0)

    def draw(self, model: Model) -> None:
        height, width = self.screen.getmaxyx()
        lines, highlight = render(model, height, width)
        self.screen.erase()
        for y, line in enumerate(lines):
            attr = (
                curses.A_REVERSE
                if y == highlight
                else (curses.A_BOLD if y in (0, 3) else curses.A_NORMAL)
            )
            try:
                self.screen.addstr(y, 0, line, attr)
            except curses.error:
                pass  # the bottom-right corner
        self.screen.refresh()

    async def keys(self) -> list[str]:
        await trio.lowlevel.wait_readable(sys.stdin.fileno())
        keys = []
        while True:
            try:
                key = self.screen.get_wch()
            except curses.error:
                break
            keys.append(curses.keyname(key).decode() if isinstance(key, int) else key)
        return keys


class App:
    """The console's live state: a client, the model, and what is being tailed."""

    def __init__(self, client: Client, terminal: Terminal, url: str) -> None:
        self.client = client
        self.terminal = terminal
        self.model = Model(who=f"{client.name} ({client.role})", url=url)
        self.dirty = trio.Event()
        self.events_stream: int | None = None
        self.tail_stream: int | None = None
        self.has_requests = any(o["op"] == "requests" for o in client.welcome.get("ops", []))

    async def run(self) -> None:
        self.model.requests = [] if self.has_requests else None
        self.events_stream = (
            await self.client.call(
                "subscribe", kinds=["job.", "agent.", "request.", "work."], compress=True
            )
        )["stream"]
        await self.refresh()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.frames)
            nursery.start_soon(self.refresher)
            while True:
                for key in await self.terminal.keys():
                    wanted = handle_key(self.model, key)
                    if wanted is not None:
                        if wanted[0] == "quit":
                            nursery.cancel_scope.cancel()
                            return
                        nursery.start_soon(self.perform, *wanted)
                self.terminal.draw(self.model)

    async def refresh(self) -> None:
        self.model.jobs = await self.client.call("jobs", limit=200)
        self.model.agents = await self.client.call("agents")
        self.model.stats = await self.client.call("stats")
        if self.has_requests:
            self.model.requests = await self.client.call("requests", limit=200)
        self.model.works = buckets(await self.client.call("work.buckets"))
        if self.model.detail is not None:  # a request's detail follows its events too
            await self.show_detail(self.model.detail_of)
        self.terminal.draw(self.model)

    async def refresher(self) -> None:
        while True:
            with trio.move_on_after(3):  # statistics change without events
                await self.dirty.wait()
            self.dirty = trio.Event()
            await self.refresh()
            await trio.sleep(REFRESH)

    async def frames(self) -> None:
        async for frame in self.client.frames():
            stream = frame.get("stream")
            if stream == self.events_stream:
                self.dirty.set()
            elif stream == self.tail_stream and self.tail_stream is not None:
                if "output" in frame:
                    self.model.add_output(frame["output"])
                elif frame.get("end"):
                    self.model.output_state = frame["state"]
                    self.model.add_output(f"\n-- {frame['state']} --\n")
                elif "missed" in frame:
                    self.model.add_output(f"\n-- missed output chunks {frame['missed']} --\n")
                self.terminal.draw(self.model)

    async def show_detail(self, request_id: str) -> None:
        """Show request ``request_id`` as ``wfe status REQUEST`` prints it."""
        from wfe.engine.cli.requests import render_request

        record = await self.client.call("request", request=request_id)
        self.model.detail_of = request_id
        self.model.detail = render_request(record).splitlines()
        self.terminal.draw(self.model)

    async def perform(self, op: str, args: dict[str, Any]) -> None:
        try:
            if op in ("tail", "untail") and self.tail_stream is not None:
                stream, self.tail_stream = self.tail_stream, None
                await self.client.call("unsubscribe", stream=stream)
            if op == "untail":
                return
            if op == "detail":
                await self.show_detail(str(args["request"]))
                return
            result = await self.client.call(op, **args)
            if op == "tail":
                self.tail_stream = result["stream"]
                self.model.output_state = result["state"]
            else:
                self.model.message = f"{op}: {_summary(result)}"
        except ClientError as exc:
            self.model.message = f"{op}: {exc.code or 'error'}: {exc}"
        self.dirty.set()
        self.terminal.draw(self.model)


def buckets(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """``work.buckets`` (pipeline -> status -> count) as one row per pipeline, every status."""
    return [
        {"pipeline": pipeline, **{s: by_status.get(s, 0) for s in WORK_STATUSES}}
        for pipeline, by_status in sorted(counts.items())
    ]


def _summary(result: Any) -> str:
    if isinstance(result, dict):
        return "  ".join(
            f"{k} {v}" for k, v in result.items() if isinstance(v, str | int) and k != "stream"
        )[:100]
    return str(result)[:100]


def run_console(url: str, token: str) -> int:
    """Run the console until `q`; return the exit status."""

    async def main(screen: Any) -> None:
        async with connect(url, token) as client:
            await App(client, Terminal(screen), url).run()

    curses.wrapper(lambda screen: trio.run(main, screen))
    return 0
