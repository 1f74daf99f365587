"""The web console's operations views (issue 17) in headless Chromium against a real engine
with real work: the job tree and the timeline of a root action that fans out, a request's
stage DAG and its legal verbs, an approval with a recorded comment, the agents, the work
buckets, server-side search, keyboard navigation, and a deep link that reloads to the same
view. What the page shows is checked against the engine's own answers; a screenshot of each
view is saved under the test's tmp dir (its path is in the assertion messages)."""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from wfe.engine.console.api import serve_api
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import open_engine

from .conftest import GUARD, Console, workspace
from .test_browser import CHROMIUM, Page, browser, cdp, open_page, pytestmark  # noqa: F401

#: Two stages over the catalog's raw files; the second runs after the first.
TWO_STAGES = """\
[workflow]
name = "dag"
namespace = "web"

[policy]
approval = "required"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "first"
rscript = "console_work"
consumes = "query"
params = { lines = 2, seconds = 0.01 }

[[stages]]
name = "second"
rscript = "console_work"
consumes = "query"
after = ["first"]
params = { lines = 1, seconds = 0.01 }
"""


#: The RScript of the request tests that copies each input to a product (``per_input``: the
#: product names its own input).
WORK_SCRIPTS = Path(__file__).parent.parent / "requests" / "scripts"

#: Calibrate each raw file, then map every calibrated file: products two stages deep.
PRODUCTS = """\
[workflow]
name = "prov"
namespace = "web"

[policy]
approval = "none"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "cal"
rscript = "work"
consumes = "query"
max_inputs = 1
params = { per_input = true }

[[stages]]
name = "map"
rscript = "work"
consumes = "cal"
"""


def final_jobs(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The batches of a request's detail that ran a job."""
    return [b for b in detail["jobs"] if b["job"]]


class Shots:
    """Screenshots of the page, saved as PNG files under ``folder``."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        folder.mkdir()

    async def take(self, name: str) -> Path:
        shot = await cdp(self.page.ws, "Page.captureScreenshot", session=self.page.session)
        path = self.folder / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


async def until(page: Page, condition: str, value: str = "true") -> Any:
    """``page.until``, but a condition that never holds fails naming itself and the page's
    hash and message line (instead of hanging until the test's guard)."""
    with trio.move_on_after(GUARD / 2):
        return await page.until(condition, value)
    shown = await page.js("[location.hash, document.getElementById('message').textContent]")
    raise AssertionError(f"never true: {condition} (page at {shown})")


async def goto(page: Page, hash_: str) -> None:
    await page.js(f"location.hash = {json.dumps(hash_)}")


async def press(page: Page, key: str) -> None:
    code = {"j": "KeyJ", "k": "KeyK", "Enter": "Enter"}[key]
    text = "\r" if key == "Enter" else key
    for kind in ("keyDown", "keyUp"):
        await cdp(page.ws, "Input.dispatchKeyEvent", session=page.session, type=kind, key=key,
                  code=code, text=text if kind == "keyDown" else "",
                  windowsVirtualKeyCode=13 if key == "Enter" else ord(key.upper()))  # fmt: skip


def tree_ids(node: dict[str, Any]) -> dict[str, str]:
    found = {node["id"]: node["state"]}
    for child in node["children"]:
        found.update(tree_ids(child))
    return found


async def test_each_operations_view_shows_what_the_engine_holds(
    console: Console, tmp_path: Path
) -> None:
    """Signed in as an operator: the job view of a fanned-out root shows its whole tree with
    the repository's states and a timeline bar per RScript attempt on its agent; the link
    reloads to the same view; the request view draws its stages with their dependency and
    input counts and offers exactly the verbs its state allows (approve and cancel when
    submitted, archive once completed); an approval's comment is recorded as an event; the
    agents, the work buckets and search show what the engine answers; j/j/Enter opens the
    second job of the list."""
    page_url = console.url.replace("ws://", "http://")
    token = await console.token_for("operator")
    with trio.fail_after(GUARD * 2):
        async with console.connect() as admin:
            await console.catalog(admin, 2)
            data_dir = str(console.root / "survey")
            root = (
                await admin.call(
                    "run",
                    action="demo.survey",
                    params={"files": 2, "seconds": 0.01, "data_dir": data_dir},
                )
            )["job"]
            assert (await admin.call("wait", job=root))["state"] == "succeeded"
            tree = tree_ids(await admin.call("tree", job=root))
            rscript_jobs = {j["id"] for j in await admin.call("find_jobs", limit=100, all=True)
                            if j["root"] == root and j["kind"] == "rscript"}  # fmt: skip
            record = await admin.call("submit_toml", toml=textwrap.dedent(TWO_STAGES), user="dave")
            rid = record["id"]
            ids = (
                await admin.call(
                    "work.deposit",
                    works=[{"pipeline": "calib", "parameters": {"n": i}} for i in range(3)],
                )
            )["ids"]

            async with browser(tmp_path / "profile") as ws:
                page = await open_page(ws, page_url)
                await cdp(ws, "Emulation.setDeviceMetricsOverride", session=page.session,
                          width=1500, height=1000, deviceScaleFactor=1, mobile=False)  # fmt: skip
                shots = Shots(page, tmp_path / "screenshots")
                await page.fill("token", token)
                await page.click("#connect")
                await until(page, f"{page.text('status')} === 'connected'")

                # the job view: tree and timeline of the root
                await goto(page, f"#/job/{root}")
                shown = await until(
                    page,
                    f"document.querySelectorAll('#job-tree li[data-job]').length === {len(tree)}"
                    " && document.querySelectorAll('#job-timeline .bar').length > 0",
                    "Object.fromEntries([...document.querySelectorAll('#job-tree li[data-job]')]"
                    ".map(li => [li.dataset.job, li.dataset.state]))",
                )
                path = await shots.take("job-tree-timeline")
                assert shown == tree, path
                bars = await page.js(
                    "[...document.querySelectorAll('#job-timeline .bar')].map(b => [b.dataset.job, b.dataset.agent])"
                )
                assert {job for job, _ in bars} == rscript_jobs, path
                assert {agent for _, agent in bars} == {"local-1"}, path
                assert await page.js(page.text("detail-state")) == "succeeded", path

                # a deep link reloads to the same view
                await cdp(ws, "Page.reload", session=page.session)
                reloaded = await until(
                    page,
                    f"document.readyState === 'complete' && {page.text('status')} === 'connected'"
                    f" && document.querySelectorAll('#job-tree li[data-job]').length === {len(tree)}",
                    f"[location.hash, {page.text('detail-id')}, !document.getElementById('pane-jobs').hidden]",
                )
                path = await shots.take("job-after-reload")
                assert reloaded == [f"#/job/{root}", root, True], path

                # the request view: DAG, input counts, legal verbs only
                await goto(page, f"#/request/{rid}")
                await until(page, "document.querySelectorAll('#request-dag .node').length === 3")
                detail = await admin.call("request", request=rid)
                graph = await admin.call("request.graph", request=rid)
                started = {s["name"]: s for s in detail["stages"]}
                dag = await page.js(
                    "[...document.querySelectorAll('#request-dag .node')].map(n => [n.dataset.stage, n.dataset.state,"
                    " n.querySelector('.counts')?.dataset.counts ?? null])"
                )
                edges = await page.js(
                    "[...document.querySelectorAll('#request-dag .edge')].map(e => [e.dataset.from, e.dataset.to])"
                )
                verbs = await until(
                    page,
                    "document.querySelectorAll('#request-verbs button').length > 0",
                    "[...document.querySelectorAll('#request-verbs button')].map(b => b.dataset.verb)",
                )
                path = await shots.take("request-submitted")
                counts = ("unallocated", "allocated", "processed", "failed")
                expected = [["(query)", "source", None]] + [
                    [
                        s["name"],
                        started[s["name"]]["state"] if s["name"] in started else "waiting",
                        "/".join(
                            str(started.get(s["name"], {"inputs": {}})["inputs"].get(k, 0))
                            for k in counts
                        ),
                    ]
                    for s in graph["stages"]
                ]
                assert dag == expected, path
                assert sorted(edges) == [
                    ["(query)", "first"],
                    ["(query)", "second"],
                    ["first", "second"],
                ], path
                assert detail["state"] == "submitted"
                assert verbs == ["approve", "cancel"], path
                row_verbs = await page.js(
                    f"[...document.querySelector('#requests tbody tr[data-key=\"{rid}\"]').querySelectorAll('button')].map(b => b.dataset.verb)"
                )
                assert row_verbs == ["approve", "cancel"], path

                await page.fill("verb-comment", "checked the inputs")
                await page.click('#request-verbs button[data-verb="approve"]')
                done = await until(
                    page,
                    f"{page.text('request-state')} === 'completed'"
                    " && [...document.querySelectorAll('#request-verbs button')].map(b => b.dataset.verb).join() === 'archive'"
                    " && document.querySelectorAll('#request-timeline .bar').length > 0",
                    "[...document.querySelectorAll('#request-dag .node')].map(n => [n.dataset.stage, n.dataset.state])",
                )
                path = await shots.take("request-completed")
                durations = await page.js(
                    "Object.fromEntries([...document.querySelectorAll('#request-durations .stage-durations')]"
                    ".map(g => [g.dataset.stage, Number(g.dataset.count)]))"
                )
                per_stage: dict[str, int] = {}
                for batch in final_jobs(await admin.call("request", request=rid)):
                    attempts = (await admin.call("job", job=batch["job"]))["attempt_list"]
                    per_stage[batch["stage"]] = per_stage.get(batch["stage"], 0) + len(attempts)
                assert durations == per_stage, path
                progress = await page.js(
                    "Object.fromEntries([...document.querySelectorAll('#request-progress path[data-stage]')]"
                    ".map(p => [p.dataset.stage, Number(p.dataset.settled)]))"
                )
                settled = {
                    s["name"]: s["inputs"].get("processed", 0) + s["inputs"].get("failed", 0)
                    for s in (await admin.call("request", request=rid))["stages"]
                }
                assert progress == settled, path
                final = await admin.call("request", request=rid)
                assert final["state"] == "completed", path
                assert done == [["(query)", "source"]] + [
                    [s["name"], s["state"]] for s in final["stages"]
                ], path
                comments = await admin.call("events", kind="request.comment", subject=rid)
                assert [(e["data"]["by"], e["data"]["text"]) for e in comments] == [
                    ("operator-1", "approve: checked the inputs")
                ], path

                # agents
                await goto(page, "#/agent/local-1")
                agent = await until(
                    page,
                    f"{page.text('agent-state')} === 'connected'"
                    " && document.querySelectorAll('#agent-history li').length > 0"
                    " && document.querySelectorAll('#agents tbody tr').length > 0",
                    "[...document.querySelectorAll('#agents tbody tr')].map(r => [r.cells[0].textContent, r.cells[2].textContent, r.cells[4].textContent])",
                )
                path = await shots.take("agent")
                live = await admin.call("agents")
                assert agent == [[a["name"], a["state"], str(a["slots"])] for a in live], path

                # work buckets and a pipeline's works
                await goto(page, "#/works")
                bucket = await until(
                    page,
                    "document.querySelector('#works tbody tr[data-key=\"calib\"]')",
                    "[...document.querySelector('#works tbody tr[data-key=\"calib\"]').cells].map(c => c.textContent)",
                )
                assert bucket == ["calib", "3", "0", "0", "0", "0"], bucket
                await page.click('#works tbody tr[data-key="calib"]')
                listed = await until(
                    page,
                    "document.querySelectorAll('#works-list tbody tr').length === 3",
                    "[...document.querySelectorAll('#works-list tbody tr')].map(r => r.dataset.key)",
                )
                path = await shots.take("works")
                assert sorted(listed) == sorted(ids), path
                assert await page.js("location.hash") == "#/works/calib", path

                # server-side search: jobs by name, events by kind
                await goto(page, "#/search")
                await page.fill("search-name", "demo.inspect")
                await page.click("#search-go")
                found = await until(
                    page,
                    f"{page.text('search-range')}.includes('of')",
                    "[[...document.querySelectorAll('#search-results tbody tr')].map(r => r.dataset.key),"
                    f" {page.text('search-range')}]",
                )
                inspected = {
                    j["id"]
                    for j in await admin.call("find_jobs", limit=100, all=True, name="demo.inspect")
                }
                path = await shots.take("search-jobs")
                assert set(found[0]) == inspected and len(inspected) == 2, path
                assert found[1] == "1–2 of 2", path
                await page.js("document.getElementById('search-kind').value = 'events'")
                await page.fill("search-name", "request.comment")
                await page.click("#search-go")
                events = await until(
                    page,
                    "document.querySelector('#search-results thead th')?.textContent === 'event'",
                    "[...document.querySelectorAll('#search-results tbody tr')].map(r => r.cells[3].textContent)",
                )
                path = await shots.take("search-events")
                assert events == [rid], path
                await page.js("document.getElementById('search-kind').value = 'works'")
                await page.fill("search-name", "calib")
                await page.click("#search-go")
                works = await until(
                    page,
                    "document.querySelector('#search-results thead th')?.textContent === 'work'",
                    "[...document.querySelectorAll('#search-results tbody tr')].map(r => r.dataset.key)",
                )
                path = await shots.take("search-works")
                assert sorted(works) == sorted(ids), path

                # keyboard: j, j, Enter opens the second job of the list (once it lists them all)
                everything = await admin.call("search", kind="jobs", limit=500)
                newest = [j["id"] for j in everything["rows"]]
                await goto(page, "#/jobs")
                await until(
                    page,
                    "[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.key).join()"
                    f" === {json.dumps(','.join(newest))}",
                )
                for key in ("j", "j", "Enter"):
                    await press(page, key)
                opened = await until(
                    page,
                    f"location.hash === '#/job/{newest[1]}' && {page.text('detail-id')} === '{newest[1]}'",
                    page.text("detail-id"),
                )
                assert opened == newest[1] and everything["total"] == len(newest)
                await shots.take("jobs-keyboard")

                # plots: every succeeded RScript job of the last hour counted once in the bars
                jobs = await admin.call("find_jobs", limit=1000, all=True, state="succeeded")
                succeeded = sum(1 for j in jobs if j["kind"] == "rscript")
                await goto(page, "#/plots")
                bars = await until(
                    page,
                    "document.querySelectorAll('#plot-throughput .bar').length > 0"
                    " && document.querySelectorAll('#plot-depth .line').length === 2",
                    "[...document.querySelectorAll('#plot-throughput .bar')].map(b => [b.dataset.series, Number(b.dataset.count)])",
                )
                path = await shots.take("plots")
                assert {series for series, _ in bars} == {"succeeded"}, path
                assert sum(count for _, count in bars) == succeeded > 0, path

                # the run form built from sleep_echo's declared parameters, checked before sending
                await goto(page, "#/new")
                await page.fill("run-name", "sleep_echo")
                await page.js(
                    "document.getElementById('run-name').dispatchEvent(new Event('input'))"
                )
                declared = (await admin.call("rscripts", name="sleep_echo"))[0]["params"]
                fields = await until(
                    page,
                    "document.querySelectorAll('#run-fields input[data-param]').length > 0",
                    "[...document.querySelectorAll('#run-fields input[data-param]')].map(i => [i.dataset.param, i.type])",
                )
                path = await shots.take("run-form")
                kinds = {"bool": "checkbox"}
                assert fields == [[p["name"], kinds.get(p["type"], "text")] for p in declared], path
                await page.js(
                    "document.querySelector('#run-fields input[data-param=\"lines\"]').value = 'x';"
                    "document.querySelector('#run-fields input[data-param=\"message\"]').value = 'from the form'"
                )
                before = (await admin.call("search", kind="jobs", limit=1))["total"]
                await page.click("#run-submit")
                refusal = await until(
                    page, f"{page.text('message')}.startsWith('params.')", page.text("message")
                )
                assert refusal == 'params.lines: expected an integer, got "x"', path
                assert (await admin.call("search", kind="jobs", limit=1))["total"] == before
                await page.js(
                    "document.querySelector('#run-fields input[data-param=\"lines\"]').value = '2'"
                )
                await page.click("#run-submit")
                ran = await until(
                    page, "location.hash.startsWith('#/job/')", "location.hash.slice(6)"
                )
                assert (await admin.call("wait", job=ran))["state"] == "succeeded"
                assert (await admin.call("logs", job=ran))[
                    "output"
                ] == "from the form\nfrom the form\n"


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Console, str]]:
    """A real engine with one connected local agent (and the request tests' ``work`` RScript)
    serving its console; yields the console and its admin token."""
    config = workspace(tmp_path / "ws")
    engine_config = attrs.evolve(
        config.engine, rscripts=(*config.engine.rscripts, str(WORK_SCRIPTS))
    )
    config = attrs.evolve(config, engine=engine_config)
    token = read_token(config)
    async with open_engine(config) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_api(
            engine, host="127.0.0.1", port=0, token=token, task_status=task_status))  # fmt: skip
        console = Console(engine, f"ws://127.0.0.1:{port}/", token, config.root)
        await console.wait_for_agents(1)
        try:
            yield console, token
        finally:
            nursery.cancel_scope.cancel()


async def test_a_products_provenance_is_drawn_back_to_its_raw_inputs(tmp_path: Path) -> None:
    """A product of the second stage of a completed request opens as a graph: itself, the two
    products of the first stage it was made from, and the raw file each of those came from,
    as the engine's provenance chain records them."""
    with trio.fail_after(GUARD):
        async with served(tmp_path) as (console, token):
            async with console.connect() as admin:
                await console.catalog(admin, 2)
                rid = (await admin.call("submit_toml", toml=PRODUCTS, user="erin"))["id"]
                assert (await admin.call("request_wait", request=rid))["state"] == "completed"
                products = await admin.call("products", request=rid)
                final = next(p for p in products if p["stage"] == "map")
                chain = await admin.call("provenance", product=final["id"])
                async with browser(tmp_path / "profile") as ws:
                    page = await open_page(ws, console.url.replace("ws://", "http://"))
                    await cdp(ws, "Emulation.setDeviceMetricsOverride", session=page.session,
                              width=1500, height=1000, deviceScaleFactor=1, mobile=False)  # fmt: skip
                    shots = Shots(page, tmp_path / "screenshots")
                    await page.fill("token", token)
                    await page.click("#connect")
                    await until(page, f"{page.text('status')} === 'connected'")
                    await goto(page, f"#/request/{rid}")
                    button = f'#request-products button[data-product="{final["id"]}"]'
                    await until(page, f"document.querySelector({json.dumps(button)})")
                    await page.click(button)
                    drawn = await until(
                        page,
                        "document.querySelectorAll('#provenance-graph .node').length > 0",
                        "[...document.querySelectorAll('#provenance-graph .node')]"
                        ".map(n => [n.dataset.kind, n.dataset.ref])",
                    )
                    path = await shots.take("provenance")
                    shown = await page.js(page.text("message"))

    def walk(item: dict[str, Any]) -> list[list[str]]:
        ref = item["id"] if item["kind"] == "product" else item.get("path") or item.get("ref")
        found = [[item["kind"], str(ref)]]
        for inner in item.get("from") or []:
            found += walk(inner)
        return found

    expected = walk(chain)
    assert shown == "", (shown, path)  # no error on the way
    assert sorted(drawn) == sorted(expected), path
    assert sum(1 for kind, _ in expected if kind == "catalog") == 2, path
    assert sum(1 for kind, _ in expected if kind == "product") == 3, path


#: A definition pasted into the page's submit form: the form is built from its parameters.
SUBMITTED = """\
[workflow]
name = "sub"
namespace = "web"

[params.count]
type = "int"
default = 1

[params.label]
type = "str"

[[stages]]
name = "s"
rscript = "noop"
"""


#: A continuous request: each raw file is processed as soon as it is catalogued.
STANDING = """\
[workflow]
name = "std"
namespace = "web"
trigger = "continuous"

[policy]
approval = "none"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "cal"
rscript = "work"
consumes = "query"
max_inputs = 1
"""


async def test_a_standing_requests_view_and_the_submit_form_from_declared_params(
    tmp_path: Path,
) -> None:
    """A continuous request shows, beside its DAG, its trigger and per stage the gap, running
    jobs, cooldown, rounds and version, as the engine's ``request`` op reports them. The
    submit form reads a pasted definition's declared parameters into typed fields, refuses a
    bad value in one line before sending, and submits the request with the values given."""
    with trio.fail_after(GUARD):
        async with served(tmp_path) as (console, token):
            async with console.connect() as admin:
                await console.catalog(admin, 2)
                rid = (await admin.call("submit_toml", toml=STANDING, user="erin"))["id"]
                while True:  # both files processed by the standing stage, no resubmission
                    detail = await admin.call("request", request=rid)
                    if (
                        detail.get("standing")
                        and all(
                            s["gap"] == 0 and s["running"] == 0
                            for s in detail["standing"]["stages"]
                        )
                        and len(await admin.call("products", request=rid)) == 2
                    ):
                        break
                    await trio.sleep(0.1)
                view = detail["standing"]
                async with browser(tmp_path / "profile") as ws:
                    page = await open_page(ws, console.url.replace("ws://", "http://"))
                    shots = Shots(page, tmp_path / "screenshots")
                    await page.fill("token", token)
                    await page.click("#connect")
                    await until(page, f"{page.text('status')} === 'connected'")
                    await goto(page, f"#/request/{rid}")
                    rows = await until(
                        page,
                        "!document.getElementById('request-standing').hidden"
                        " && document.querySelectorAll('#standing-stages tbody tr').length > 0",
                        "[...document.querySelectorAll('#standing-stages tbody tr')]"
                        ".map(r => [...r.cells].map(c => c.textContent))",
                    )
                    trigger = await page.js(page.text("standing-trigger"))
                    stale = await page.js(page.text("standing-stale"))
                    path = await shots.take("standing")

                    # the submit form built from the parameters the pasted definition declares
                    await goto(page, "#/new")
                    await page.js(
                        f"document.getElementById('submit-toml').value = {json.dumps(SUBMITTED)}"
                    )
                    await page.click("#submit-read")
                    fields = await until(
                        page,
                        "document.querySelectorAll('#submit-fields input[data-param]').length > 0",
                        "[...document.querySelectorAll('#submit-fields input[data-param]')]"
                        ".map(i => [i.dataset.param, i.dataset.type, i.required])",
                    )
                    form_path = await shots.take("submit-form")
                    await page.js(
                        "document.querySelector('#submit-fields input[data-param=\"count\"]')"
                        ".value = 'many';"
                        "document.querySelector('#submit-fields input[data-param=\"label\"]')"
                        ".value = 'from the page'"
                    )
                    await page.click("#submit-button")
                    refusal = await until(
                        page, f"{page.text('message')}.startsWith('params.')", page.text("message")
                    )
                    before = len(await admin.call("requests"))
                    await page.js(
                        "document.querySelector('#submit-fields input[data-param=\"count\"]')"
                        ".value = '3'"
                    )
                    await page.click("#submit-button")
                    await until(page, "location.hash === '#/requests'")
                    made = [
                        await admin.call("request", request=r["id"])
                        for r in await admin.call("requests")
                        if r["workflow"] == "sub"
                    ]
    assert fields == [["count", "int", False], ["label", "str", True]], form_path
    assert refusal == 'params.count: expected an integer, got "many"', form_path
    assert before == 1 and len(made) == 1, form_path
    assert made[0]["params"] == {"count": 3, "label": "from the page"}, (made, form_path)
    assert trigger == f"trigger {view['trigger']}", path
    [stage] = view["stages"]
    assert rows == [[
        "cal", str(stage["gap"]), str(stage["running"]), f"{stage['cooldown']:g}s",
        rows[0][4], "-", f"{stage['version']} ({stage['version_policy']})",
    ]], path  # fmt: skip
    assert rows[0][4].endswith("ago") or rows[0][4] == "now", path
    assert stale == "0 stale product(s)", path
