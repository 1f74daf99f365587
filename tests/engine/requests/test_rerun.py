"""``wfe rerun REQUEST``: a request's failed inputs run again as a new request, recorded."""

from __future__ import annotations

from .conftest import World

FLAKY_ONCE = """
[workflow]
name = "t"
namespace = "tests"

[policy]
approval = "none"
max_allocations = 1
on_stage_failure = "complete"

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[params.flaky]
type = "str"
default = ""

[params.gate]
type = "str"
default = ""

[[stages]]
name = "a"
rscript = "work"
consumes = "query"
max_inputs = 1
retries = 0
params = { flaky = "${flaky}", gate = "${gate}" }
"""


async def test_rerun_runs_only_the_failed_inputs_as_a_new_request(world: World) -> None:
    """Inputs that failed (here: each fails on its first run) run again, alone, in a new
    request of the same workflow, user and parameters; events on both name the other;
    a request still running, or with nothing failed, is refused in one line."""
    (world.root / "flaky").mkdir()
    for name in ("r1.dat", "r2.dat"):
        (world.root / "flaky" / name).write_text("seen\n")  # these two succeed at once
    await world.catalog(["r1.dat", "r2.dat", "r3.dat"])
    path = world.definition(FLAKY_ONCE)
    first = await world.submit(path, flaky=world.root / "flaky")
    ended = await world.wait(first["id"])
    detail = await world.detail(first["id"])
    assert detail["stages"][0]["inputs"] == {"failed": 1, "processed": 2}, ended

    code, out, err = await world.wfe("rerun", first["id"])
    assert code == 0, err
    again = out.strip()
    assert again == "t-alice-0002"
    assert err == f"1 failed input(s) of {first['id']} run again\n"
    redone = await world.wait(again)
    assert redone["state"] == "completed"
    new = await world.detail(again)
    assert new["params"] == detail["params"]
    assert new["stages"][0]["inputs"] == {"processed": 1}
    assert len(new["jobs"]) == 1
    products = await world.call("products", request=again)
    assert [p["metadata"]["source"] for p in products] == ["r3.dat"]

    events = await world.call("events", subject=first["id"], kind="request.rerun")
    assert [(e["data"]["request"], e["data"]["by"]) for e in events] == [(again, "bootstrap")]
    assert events[0]["data"]["inputs"] == [str(world.data / "r3.dat")]
    back = await world.call("events", subject=again, kind="request.rerun_of")
    assert [e["data"]["request"] for e in back] == [first["id"]]

    code, _, err = await world.wfe("rerun", again)
    assert (code, err) == (1, f"wfe: error: request {again} has no failed input to rerun\n")
    running = await world.submit(path, gate=world.gate)  # waits at the gate: not ended
    await world.job_running(running["id"])
    code, _, err = await world.wfe("rerun", running["id"])
    assert (code, err) == (
        1,
        f"wfe: error: request {running['id']} is running: only a request that has ended can be rerun\n",
    )
    world.open_gate()
    await world.wait(running["id"])
