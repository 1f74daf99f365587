"""The console protocol over a real websocket, against a real engine with a real agent:
every operation, every role refusal, and who made each change."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import Client, ClientError
from wfe.engine.console.api import OPS, load_ops

from .conftest import GUARD, Console

load_ops()

#: A one-file definition declaring two parameters (for ``definition_params``).
PARAMS_TOML = """
[workflow]
name = "p"
namespace = "tests"

[params.count]
type = "int"
default = 1
description = "how many"

[params.label]
type = "str"

[[stages]]
name = "s"
rscript = "noop"
"""

CHANGES = {  # every op that changes something, with arguments that would work
    "run": {"rscript": "sleep_echo", "params": {"message": "x"}},
    "kill": {"job": "j000001"},
    "submit": {"expanded": {}, "user": "alice"},
    "approve": {"request": "echo-alice-0001"},
    "pause": {"request": "echo-alice-0001"},
    "resume": {"request": "echo-alice-0001"},
    "cancel": {"request": "echo-alice-0001"},
    "archive": {"request": "echo-alice-0001"},
    "catalog_add": {"paths": ["/nonexistent"]},
    "replica_add": {"path": "/nonexistent", "rse": "X", "location": "/x"},
    "replica_rm": {"path": "/nonexistent", "rse": "X"},
    "submit_toml": {"toml": "", "user": "alice"},
    "token.create": {"name": "x", "role": "viewer"},
    "token.revoke": {"name": "x"},
    "token.list": {},
    "retry": {"job": "j000001"},
    "rerun": {"request": "echo-alice-0001"},
    "purge": {"before": 0, "dry_run": True},
    "agents.up": {"group": "local"},
    "agents.down": {"group": "local"},
    "work.deposit": {"work": {"pipeline": "p"}},
    "work.withdraw": {"pipeline": "p"},
    "work.heartbeat": {"id": "w0000001", "attempt": 1},
    "work.update": {"id": "w0000001", "attempt": 1, "status": "success"},
    "work.cancel": {"id": "w0000001"},
    "work.delete": {"ids": ["w0000001"]},
    "pilots.create": {"system": "slurm", "agent": "p@x", "requirements": {}, "resources": {}},
    "pilots.submitted": {"id": "pilot-000001", "batch_id": "1"},
    "pilots.started": {"id": "pilot-000001"},
    "pilots.ended": {"id": "pilot-000001", "end_state": "COMPLETED"},
    "simulate": {"expanded": {}, "user": "alice"},
}

#: A definition whose workflow action (workflows.nosuch) no engine has.
NO_WORKFLOW = {
    "workflow": {"name": "nosuch", "namespace": "ns"},
    "stages": [{"name": "a", "action": "demo.hello"}],
}


async def refused(client: Client, op: str, **args: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        await client.call(op, **args)
    return info.value


async def job_ended(client: Client, job_id: str) -> dict[str, Any]:
    return await client.call("wait", job=job_id)  # type: ignore[no-any-return]


async def test_every_operation_answers_as_documented(console: Console) -> None:
    """Each registered op answers an admin: reads return data, changes take effect, and
    requests for what does not exist are not_found; the table here names every op."""
    with trio.fail_after(GUARD):
        async with console.connect() as c:
            await console.catalog(c)
            started = await c.call(
                "run", rscript="sleep_echo", params={"message": "hello", "lines": 2}
            )
            job = started["job"]
            assert (await job_ended(c, job))["state"] == "succeeded"
            record = await console.submit(c)
            rid = record["id"]
            assert record["state"] == "submitted"
            expected: dict[str, Any] = {
                "whoami": ({}, lambda r: r == {"name": "bootstrap", "role": "admin"}),
                "ops": ({}, lambda r: {o["op"] for o in r} == set(OPS)),
                "ping": ({}, lambda r: r == {"pong": True}),
                "status": (
                    {},
                    lambda r: r["jobs"][0]["id"] == job and "running" in r["statistics"],
                ),
                "jobs": ({"limit": 5}, lambda r: [j["id"] for j in r] == [job]),
                "job": ({"job": job}, lambda r: r["state"] == "succeeded" and r["attempt_list"]),
                "logs": ({"job": job}, lambda r: r["output"] == "hello\nhello\n" and not r["more"]),
                "wait": (
                    {"job": job},
                    lambda r: r == {"job": job, "state": "succeeded", "error": None},
                ),
                "agents": ({}, lambda r: r[0]["name"] == "local-1" and r[0]["slots"] == 4),
                "agents.up": ({"group": "gpu"}, "not_found"),
                "agents.down": ({"group": "gpu"}, "not_found"),
                "stats": (
                    {},
                    lambda r: r["agents"] == 1 and r["events_per_second"] >= 0 and "console" in r,
                ),
                "events": ({"kind": "job.created"}, lambda r: [e["subject"] for e in r] == [job]),
                "subscribe": ({"kinds": ["job."]}, lambda r: r["stream"] >= 1 and r["after"] > 0),
                "unsubscribe": ({"stream": 1}, lambda r: r == {"stream": 1, "closed": True}),
                "tail": ({"job": job}, lambda r: r["job"] == job and r["state"] == "succeeded"),
                "requests": ({}, lambda r: [x["id"] for x in r] == [rid]),
                "request": ({"request": rid}, lambda r: r["state"] == "submitted"),
                "lifecycle": (
                    {"request": rid},
                    lambda r: (
                        r == {"request": rid, "state": "submitted", "verbs": ["approve", "cancel"]}
                    ),
                ),
                "request.graph": (
                    {"request": rid},
                    lambda r: (
                        [(x["name"], x["depends_on"], x["from_query"]) for x in r["stages"]]
                        == [("echo", [], True)]
                    ),
                ),
                "agent.history": (
                    {"agent": "local-1"},
                    lambda r: (
                        r["state"] == "connected"
                        and r["heard_ago"] >= 0
                        and r["events"][0]["kind"] == "agent.state"
                    ),
                ),
                "activity": (
                    {"since": 0, "until": 4e9, "buckets": 2},
                    lambda r: r["ended"] == {"succeeded": [1, 0]} and r["queued"] == [0, 0],
                ),
                "comment": (
                    {"request": rid, "text": "looks right"},
                    lambda r: r == {"request": rid, "text": "looks right", "by": "bootstrap"},
                ),
                "search": (
                    {"kind": "jobs", "name": "sleep_e", "state": "succeeded"},
                    lambda r: r["total"] == 1 and r["rows"][0]["id"] == job,
                ),
                "timeline": (
                    {"job": job},
                    lambda r: (
                        [(a["job"], a["state"], a["agent"]) for a in r["attempts"]]
                        == [(job, "succeeded", "local-1")]
                    ),
                ),
                "approve": ({"request": rid}, lambda r: r["state"] == "approved"),
                "request_wait": ({"request": rid}, lambda r: r["state"] == "completed"),
                "products": ({"request": rid}, lambda r: r == []),
                "provenance": ({"product": "p-none"}, "not_found"),
                "catalog_ls": ({}, lambda r: len(r) == 2),
                "catalog_add": (
                    {"paths": [str(console.root / "data" / "raw0.dat")]},
                    lambda r: r is not None,
                ),
                "replica_add": (
                    {
                        "path": str(console.root / "data" / "raw0.dat"),
                        "rse": "EOS",
                        "location": "/e",
                    },
                    lambda r: (r["rse"], r["location"]) == ("EOS", "/e"),
                ),
                "replica_ls": (
                    {},
                    lambda r: [(x["rse"], x["location"]) for x in r] == [("EOS", "/e")],
                ),
                "replica_rm": ({"path": "/nowhere", "rse": "EOS"}, "not_found"),
                "pause": ({"request": rid}, "refused"),  # completed: can't pause
                "resume": ({"request": rid}, "refused"),
                "cancel": ({"request": rid}, "refused"),
                "archive": ({"request": rid}, lambda r: r["state"] == "archived"),
                "submit": ({"expanded": {}, "user": "alice"}, "refused"),
                "submit_toml": ({"toml": "not = [toml", "user": "alice"}, "bad_request"),
                "kill": ({"job": job}, lambda r: r["state"] == "succeeded"),
                "run": ({"action": "no.such_action"}, "not_found"),
                "actions": ({}, lambda r: r and all("name" in x and "params" in x for x in r)),
                "rscripts": (
                    {"name": "sleep_echo"},
                    lambda r: [x["name"] for x in r] == ["sleep_echo"],
                ),
                "find_jobs": ({"limit": 5}, lambda r: job in [j["id"] for j in r]),
                "tree": ({"job": job}, lambda r: r["id"] == job),
                "retry": ({"job": job}, "refused"),  # it succeeded: nothing to retry
                "rerun": ({"request": "no-such-request"}, "not_found"),
                "purge": ({"before": 0, "dry_run": True}, lambda r: r["jobs"] == 0),
                "token.create": (
                    {"name": "ci", "role": "viewer"},
                    lambda r: r["token"].startswith("wfe_"),
                ),
                "token.list": ({}, lambda r: [t["name"] for t in r] == ["ci"]),
                "token.revoke": (
                    {"name": "ci"},
                    lambda r: r["name"] == "ci" and r["revoked_by"] == "bootstrap",
                ),
                "definition_params": (
                    {"toml": PARAMS_TOML},
                    lambda r: (
                        r
                        == [
                            {
                                "name": "count",
                                "type": "int",
                                "default": 1,
                                "required": False,
                                "description": "how many",
                            },
                            {
                                "name": "label",
                                "type": "str",
                                "default": None,
                                "required": True,
                                "description": "",
                            },
                        ]
                    ),
                ),  # fmt: skip
                "work.deposit": (
                    {"works": [{"pipeline": "p", "parameters": {"a": 1}}]},
                    lambda r: r == {"ids": ["w0000001"]},
                ),
                "work.withdraw": (
                    {"pipeline": "p"},
                    lambda r: r["work"]["id"] == "w0000001" and r["work"]["status"] == "running",
                ),
                "work.heartbeat": ({"id": "w0000001", "attempt": 1}, lambda r: r["lease"] == 3600),
                "work.update": (
                    {"id": "w0000001", "attempt": 1, "status": "success", "results": {"s": 1}},
                    lambda r: r["status"] == "success",
                ),
                "work.get": ({"id": "w0000001"}, lambda r: r["results"] == {"s": 1}),
                "work.files": ({"id": "w0000001"}, lambda r: r == []),
                "work.find": ({"pipeline": "p"}, lambda r: r["count"] == 1),
                "work.count": ({"status": "success"}, lambda r: r == {"count": 1}),
                "work.buckets": ({}, lambda r: r == {"p": {"success": 1}}),
                "work.cancel": ({"id": "w0000001"}, "refused"),  # it has ended
                "work.delete": ({"ids": ["w0000001"]}, lambda r: r == {"deleted": ["w0000001"]}),
                "pilots.demand": ({}, lambda r: r["needs"] == [] and "agents" in r),
                "pilots.create": (
                    {**CHANGES["pilots.create"], "requirements": {"cpus": 2}},
                    lambda r: (
                        (r["id"], r["state"], r["factory"])
                        == ("pilot-000001", "submitting", "bootstrap")
                    ),
                ),
                "pilots.submitted": (CHANGES["pilots.submitted"], lambda r: r["batch_id"] == "1"),
                "pilots.started": (CHANGES["pilots.started"], lambda r: r["state"] == "running"),
                "pilots.ended": (
                    {**CHANGES["pilots.ended"], "exit_code": 0},
                    lambda r: (
                        (r["state"], r["end_state"], r["exit_code"]) == ("ended", "COMPLETED", 0)
                    ),
                ),
                "pilots.list": ({}, lambda r: [p["id"] for p in r] == ["pilot-000001"]),
                "simulate": ({"expanded": NO_WORKFLOW, "user": "alice"}, "not_found"),
                "execution": ({"execution": "nosuch-alice-0001"}, "not_found"),
                "execution_wait": ({"execution": "nosuch-alice-0001"}, "not_found"),
            }
            assert set(expected) == set(OPS), "every op needs a line in this test"
            for name, (args, check) in expected.items():
                if isinstance(check, str):
                    error = await refused(c, name, **args)
                    assert error.code == check, (name, error.code, str(error))
                else:
                    result = await c.call(name, **args)
                    assert check(result), (name, result)


async def test_a_viewer_changes_nothing(console: Console) -> None:
    """Every changing op is refused to a viewer with `forbidden`, naming the role needed;
    no job, request, token or event is added."""
    with trio.fail_after(GUARD):
        async with console.as_role("viewer") as viewer:
            events_before = await viewer.call("events", limit=5000)
            for name, args in CHANGES.items():
                error = await refused(viewer, name, **args)
                assert error.code == "forbidden", name
                assert f"{name} needs role " in str(error) and "token 'viewer-1' is viewer" in str(
                    error
                )
            assert await viewer.call("events", limit=5000) == events_before
            assert await viewer.call("jobs") == []
            assert (await viewer.call("whoami"))["role"] == "viewer"


async def test_an_operator_operates_but_does_not_manage_tokens(console: Console) -> None:
    """An operator runs and kills jobs; token management is refused to it (admin only)."""
    with trio.fail_after(GUARD):
        async with console.as_role("operator") as op:
            for name in ("token.create", "token.revoke", "token.list"):
                error = await refused(op, name, **CHANGES[name])
                assert error.code == "forbidden"
                assert str(error) == f"{name} needs role admin; token 'operator-1' is operator"
            job = (await op.call("run", rscript="sleep_echo", params={"seconds": 30}))["job"]
            await op.call("kill", job=job)
            assert (await job_ended(op, job))["state"] == "cancelled"


async def test_every_change_records_who_made_it(console: Console) -> None:
    """run, kill, approve and token changes put the token's name into their events."""
    with trio.fail_after(GUARD):
        async with console.connect() as admin:
            await console.catalog(admin)
        async with console.as_role("operator") as op:
            job = (await op.call("run", rscript="sleep_echo", params={"seconds": 30}))["job"]
            await op.call("kill", job=job)
            await job_ended(op, job)
            rid = (await console.submit(op))["id"]
            await op.call("approve", request=rid)
            events = await op.call("events", limit=5000)
        by = {(e["kind"], e["subject"]): e["data"].get("by") for e in events}
        assert by[("job.created", job)] == "operator-1"
        assert by[("job.kill_requested", job)] == "operator-1"
        assert by[("token.created", "token:operator-1")] == "bootstrap"
        approvals = [
            e for e in events if e["kind"] == "request.state" and e["data"]["verb"] == "approve"
        ]
        assert [a["data"]["by"] for a in approvals] == ["operator-1"]


async def test_tokens_are_stored_hashed_and_revoking_closes_their_connections(
    console: Console,
) -> None:
    """The repository holds only the sha256 of a token; a revoked token's open connection is
    closed with 4403 and the token no longer authenticates; the name can be used again."""
    with trio.fail_after(GUARD):
        secret = await console.token_for("viewer")
        conn = sqlite3.connect(console.engine.repo.path)
        rows = conn.execute("SELECT * FROM tokens").fetchall()
        conn.close()
        assert rows and all(secret not in json.dumps(row) for row in rows)
        async with console.connect() as admin, console.connect(secret) as viewer:
            listed = await admin.call("token.list")
            assert (
                listed[0]["name"] == "viewer-1"
                and "token" not in listed[0]
                and "sha256" not in listed[0]
            )
            result = await admin.call("token.revoke", name="viewer-1")
            assert result["closed_connections"] == 1
            async for _ in viewer.frames():  # ends when the connection does
                pass
            error = await refused(viewer, "ping")
            assert error.code == "closed" and "4403" in str(error)
            error = await refused(admin, "token.revoke", name="viewer-1")
            assert error.code == "not_found"
            again = await admin.call("token.create", name="viewer-1", role="operator")
            assert (
                await refused(admin, "token.create", name="viewer-1", role="viewer")
            ).code == "refused"
        with pytest.raises(ClientError, match="bad or revoked token"):
            async with console.connect(secret):
                pass
        async with console.connect(again["token"]) as client:
            assert client.role == "operator"


async def test_token_arguments_are_checked(console: Console) -> None:
    """Bad names, unknown roles and the reserved name are refused with one line each."""
    with trio.fail_after(GUARD):
        async with console.connect() as admin:
            assert "unknown role 'root'" in str(
                await refused(admin, "token.create", name="a", role="root")
            )
            assert "bad token name" in str(
                await refused(admin, "token.create", name="no spaces", role="viewer")
            )
            assert "reserved" in str(
                await refused(admin, "token.create", name="bootstrap", role="viewer")
            )
            assert "can't be revoked" in str(await refused(admin, "token.revoke", name="bootstrap"))
            assert (
                await refused(admin, "token.create", name=3, role="viewer")
            ).code == "bad_request"


async def test_refused_engine_operations_say_why(console: Console) -> None:
    """Unknown jobs are not_found; unknown RScripts and bad parameters are refused; the
    connection goes on."""
    with trio.fail_after(GUARD):
        async with console.connect() as c:
            assert (await refused(c, "job", job="j999999")).code == "not_found"
            assert (await refused(c, "kill", job="j999999")).code == "not_found"
            assert (await refused(c, "tail", job="j999999")).code == "not_found"
            assert (await refused(c, "run", rscript="no_such_script")).code in (
                "refused",
                "not_found",
            )
            assert (
                await refused(c, "run", rscript="sleep_echo", params={"lines": "many"})
            ).code == "refused"
            assert (await refused(c, "run", action="x", rscript="y")).code == "bad_request"
            assert (await refused(c, "jobs", limit=0)).code == "bad_request"
            assert (await refused(c, "jobs", limit=True)).code == "bad_request"
            assert (await refused(c, "unsubscribe", stream=42)).code == "not_found"
            assert await c.call("ping") == {"pong": True}


async def test_the_token_commands_work_through_the_engine(
    console: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    """`wfe token create|list|revoke` and `wfe console --url` talk to the running engine
    with the bootstrap token; a refusal is one line and exit status 1."""
    from wfe.engine.cli.main import main

    port = console.url.rsplit(":", 1)[1].strip("/")
    (console.root / "run").mkdir(exist_ok=True)
    (console.root / "run" / "api.port").write_text(f"{port}\n")
    config = str(console.root / "wfe.toml")

    async def wfe(*argv: str) -> tuple[int, str, str]:
        status = await trio.to_thread.run_sync(main, [*argv, "--config", config])
        out, err = capsys.readouterr()
        return status, out, err

    with trio.fail_after(GUARD):
        status, out, err = await wfe("token", "create", "--name", "ci", "--role", "viewer")
        assert status == 0 and out.startswith("wfe_") and "shown this once" in err
        async with console.connect(out.strip()) as client:
            assert client.role == "viewer"
        status, out, _ = await wfe("token", "list")
        assert status == 0 and out.splitlines()[1].split()[:3] == ["ci", "viewer", "bootstrap"]
        assert (await wfe("token", "revoke", "ci"))[:2] == (
            0,
            "revoked 'ci' (viewer); closed 0 connection(s)\n",
        )
        status, _, err = await wfe("token", "revoke", "ci")
        assert (
            status == 1 and err == "wfe: error: no live token named 'ci' (see `wfe token list`)\n"
        )
        status, out, _ = await wfe("console", "--url")
        assert out == f"http://127.0.0.1:{port}/\n"
