"""Gaps found auditing the console against issue 5's "done means": role refusals derived from
the op table, failed authentication with changing requests queued behind it, oversized
requests at their limits, the internal-error path, who made each change, and the doc's
tables against the code. Real trio-websocket clients against a real engine's console."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from wfe.engine.cli.client import Client, ClientError
from wfe.engine.console import protocol
from wfe.engine.console.api import OPS, load_ops
from wfe.engine.console.registry import Op
from wfe.engine.console.session import Limits
from wfe.engine.console.tokens import Role

from .conftest import DEFINITION, GUARD, Console, open_console

load_ops()

DOC = Path(__file__).parents[3] / "docs" / "console-protocol.md"
#: Event kinds an operation can cause (agents' own events may come and go meanwhile).
CHANGE_KINDS = ("job.", "request.", "token.", "catalog.")


def port_of(console: Console) -> int:
    return int(console.url.rsplit(":", 1)[1].strip("/"))


@asynccontextmanager
async def raw(
    console: Console, token: str | None = None, *, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A plain websocket, authenticated with ``token`` unless it is None (on a TCP stream we
    close ourselves: trio-websocket's client leaves its socket open when the server closes)."""
    port = port_of(console)
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            ws = await wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{port}",
                "/",
                extra_headers=headers,
                max_message_size=64 * 1024 * 1024,
            )
            if token is not None:
                await ws.send_message(json.dumps({"id": 0, "op": "auth", "args": {"token": token}}))
                assert json.loads(await ws.get_message())["ok"] is True
            yield ws
        finally:
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def ask(ws: WebSocketConnection, frame: str | dict[str, Any]) -> dict[str, Any]:
    await ws.send_message(frame if isinstance(frame, str) else json.dumps(frame))
    return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def refused(client: Client, op: str, **args: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        await client.call(op, **args)
    return info.value


async def changes_since(client: Client, after: int) -> list[dict[str, Any]]:
    """Events of kinds an operation could cause, committed after event ``after``."""
    events = await client.call("events", after=after, limit=5000)
    return [e for e in events if e["kind"].startswith(CHANGE_KINDS)]


async def last_event(client: Client) -> int:
    return int((await client.call("subscribe", kinds=["no.such.kind"]))["after"])


# --- roles -------------------------------------------------------------------------------------


async def test_every_op_above_a_role_is_refused_to_it_before_its_arguments_are_read(
    console: Console,
) -> None:
    """Derived from the op table, not a hand-kept list: a viewer is refused every operator and
    admin op, an operator every admin op, with `forbidden` even when the arguments are
    missing (the role is checked first); ops a role may use are never `forbidden`; the auth
    reply's `allowed` flags say the same; nothing is recorded; both connections go on."""
    with trio.fail_after(GUARD):
        async with (
            console.connect() as admin,
            console.as_role("viewer") as viewer,
            console.as_role("operator") as operator,
        ):
            before = await last_event(admin)
            for client, role in ((viewer, Role.VIEWER), (operator, Role.OPERATOR)):
                allowed = {o["op"]: o["allowed"] for o in client.welcome["ops"]}
                assert allowed == {name: role >= o.role for name, o in OPS.items()}
                for name, found in sorted(OPS.items()):
                    if role >= found.role:
                        continue
                    error = await refused(client, name)
                    assert error.code == "forbidden", (role, name, error.code, str(error))
                    assert str(error) == (
                        f"{name} needs role {found.role.label};"
                        f" token '{client.name}' is {role.label}"
                    )
            # ops the role may use answer, at worst, about their arguments
            for name, found in sorted(OPS.items()):
                if found.role > Role.OPERATOR:
                    continue
                try:
                    await operator.call(name)
                except ClientError as exc:
                    assert exc.code != "forbidden", (name, str(exc))
            assert await changes_since(admin, before) == []
            assert await viewer.call("ping") == {"pong": True}
            assert await operator.call("ping") == {"pong": True}


# --- authentication ----------------------------------------------------------------------------


async def test_changing_requests_behind_a_failed_auth_never_run(console: Console) -> None:
    """A changing request first, or queued right behind a bad, revoked, empty or non-string
    token, gets one `unauthenticated` reply and a 4401 close; the queued request gets no
    reply and runs nothing: no job, token or event; the refusals are counted."""
    with trio.fail_after(GUARD):
        async with console.connect() as admin:
            revoked = (await admin.call("token.create", name="gone", role="admin"))["token"]
            await admin.call("token.revoke", name="gone")
            before = await last_event(admin)
            counted = (await admin.call("stats"))["console"]["refused"]["unauthenticated"]
        run = {"id": 2, "op": "run", "args": {"rscript": "noop"}}
        mint = {"id": 3, "op": "token.create", "args": {"name": "mint", "role": "admin"}}
        attempts: list[tuple[dict[str, Any], str]] = [
            (run, "authenticate first"),
            (mint, "authenticate first"),
            ({"id": 1, "op": "auth", "args": {"token": "wfe_" + "0" * 43}}, "bad or revoked token"),
            ({"id": 1, "op": "auth", "args": {"token": revoked}}, "bad or revoked token"),
            ({"id": 1, "op": "auth", "args": {"token": ""}}, "bad or revoked token"),
            ({"id": 1, "op": "auth", "args": {"token": 12345}}, "bad or revoked token"),
            ({"id": 1, "op": "auth", "args": {"token": ["x"]}}, "bad or revoked token"),
        ]
        for first, message in attempts:
            async with raw(console) as ws:
                for frame in (first, run, mint):
                    await ws.send_message(json.dumps(frame))
                reply = json.loads(await ws.get_message())
                assert reply["id"] == first["id"] and reply["ok"] is False, first
                assert reply["error"]["code"] == "unauthenticated"
                assert reply["error"]["message"].startswith(message), reply
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert (
                    info.value.reason is not None
                    and info.value.reason.code == protocol.CLOSE_UNAUTHENTICATED
                )
        async with console.connect() as admin:
            assert await changes_since(admin, before) == []
            assert await admin.call("jobs") == []
            assert [t["name"] for t in await admin.call("token.list", revoked=True)] == ["gone"]
            stats = (await admin.call("stats"))["console"]
            assert stats["refused"]["unauthenticated"] == counted + len(attempts)


async def test_a_websocket_from_another_origin_is_refused_before_auth(console: Console) -> None:
    """An upgrade whose Origin names another site gets HTTP 403 and no websocket; one whose
    Origin is the console's own address is accepted and may authenticate."""
    port = port_of(console)
    evil = [(b"Origin", b"http://evil.example")]
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:  # our own TCP stream: trio-websocket leaves a rejected one open
            with pytest.RaisesGroup(ConnectionRejected, flatten_subgroups=True) as info:
                async with trio.open_nursery() as nursery:
                    await wrap_client_stream(
                        nursery, stream, f"127.0.0.1:{port}", "/", extra_headers=evil
                    )
        finally:
            await stream.aclose()
        rejected = info.value.exceptions[0]
        assert isinstance(rejected, ConnectionRejected)
        assert (rejected.status_code, rejected.body) == (403, b"cross-origin websocket refused\n")
        own = [(b"Origin", f"http://127.0.0.1:{port}".encode())]
        async with raw(console, headers=own) as ws:
            reply = await ask(ws, {"id": 1, "op": "auth", "args": {"token": console.token}})
            assert reply["result"]["name"] == "bootstrap"


# --- oversized messages ------------------------------------------------------------------------

SMALL = Limits(max_request=1024, max_message=4096)


def padded(size: int, pad: str = "x") -> str:
    """A ping request of exactly ``size`` characters (``pad`` repeated in an unused arg)."""
    bare = json.dumps({"id": 1, "op": "ping", "args": {"pad": ""}})
    request = {"id": 1, "op": "ping", "args": {"pad": pad * (size - len(bare))}}
    return json.dumps(request, ensure_ascii=False)


async def test_requests_at_the_two_size_limits(tmp_path: Path) -> None:
    """With max_request 1024 and max_message 4096: a request of exactly 1024 is answered; 1025
    and 4096 get `too_large` naming the sizes and the connection goes on; 4097 closes that
    connection with 1009, and another connection and the engine go on."""
    with trio.fail_after(GUARD):
        async with open_console(tmp_path, SMALL) as console:
            async with console.connect() as other, raw(console, console.token) as ws:
                assert len(padded(1024)) == 1024
                assert (await ask(ws, padded(1024)))["result"] == {"pong": True}
                for size in (1025, 4096):
                    reply = await ask(ws, padded(size))
                    assert reply == {
                        "id": None,
                        "ok": False,
                        "error": {
                            "code": "too_large",
                            "message": f"request of {size} bytes is over the limit of 1024",
                        },
                    }
                    assert (await ask(ws, padded(10)))["result"] == {"pong": True}
                await ws.send_message(padded(4097))
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert (
                    info.value.reason is not None
                    and info.value.reason.code == protocol.CLOSE_TOO_BIG
                )
                job = (await other.call("run", rscript="noop"))["job"]
                assert (await other.call("wait", job=job))["state"] == "succeeded"


async def test_the_request_limit_counts_bytes_not_characters(tmp_path: Path) -> None:
    """A request of 700 characters but over 1024 bytes of UTF-8 is over the 1024-byte limit."""
    with trio.fail_after(GUARD):
        async with open_console(tmp_path, SMALL) as console, raw(console, console.token) as ws:
            text = padded(700, pad="\u00e9")
            assert len(text) == 700 and len(text.encode()) > 1024
            reply = await ask(ws, text)
            assert reply == {
                "id": None,
                "ok": False,
                "error": {
                    "code": "too_large",
                    "message": f"request of {len(text.encode())} bytes is over the limit of 1024",
                },
            }


# --- errors leave the connection and the engine unharmed ---------------------------------------


async def _boom(session: Any, args: dict[str, Any]) -> Any:
    raise RuntimeError("boom")


async def _not_json(session: Any, args: dict[str, Any]) -> Any:
    return {"ratio": float("nan")}


async def test_after_every_kind_of_error_the_same_connection_runs_a_job(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One operator connection gets, in turn, bad JSON, a non-object, an unknown op, an
    oversized request, a forbidden op, an unknown job, a refused run, a bad argument, a second
    auth, an op that raises and one whose result is not JSON: each its own code on one line,
    each followed by a good answer; then that same connection runs a job to success."""
    monkeypatch.setitem(
        OPS, "audit.boom", Op(name="audit.boom", role=Role.VIEWER, handler=_boom, summary="")
    )
    monkeypatch.setitem(
        OPS,
        "audit.unjson",
        Op(name="audit.unjson", role=Role.VIEWER, handler=_not_json, summary=""),
    )
    big = {"id": 5, "op": "run", "args": {"rscript": "noop", "params": {"x": "y" * 70_000}}}
    errors: list[tuple[str | dict[str, Any], str, str]] = [
        ("{not json", "bad_request", "request is not JSON"),
        ("[]", "bad_request", "a request must be a JSON object"),
        ({"id": 3, "op": "no.such.op"}, "unknown_op", "unknown op 'no.such.op'"),
        (json.dumps(big), "too_large", "request of "),
        ({"id": 6, "op": "token.create", "args": {"name": "n", "role": "admin"}}, "forbidden", ""),
        ({"id": 7, "op": "kill", "args": {"job": "j999999"}}, "not_found", ""),
        ({"id": 8, "op": "run", "args": {"rscript": "no_such_script"}}, "", ""),
        ({"id": 9, "op": "run", "args": {"rscript": 7}}, "bad_request", "args.rscript"),
        ({"id": 10, "op": "auth", "args": {"token": console.token}}, "bad_request", "already"),
        ({"id": 11, "op": "audit.boom"}, "internal", "internal error in audit.boom: RuntimeError"),
        ({"id": 12, "op": "audit.unjson"}, "internal", "audit.unjson: result is not JSON"),
    ]
    with trio.fail_after(GUARD):
        async with raw(console, await console.token_for("operator")) as ws:
            for frame, code, message in errors:
                reply = await ask(ws, frame)
                assert reply["ok"] is False, frame
                assert code in ("", reply["error"]["code"]), (frame, reply)
                assert reply["error"]["code"] in protocol.__dict__.values(), reply
                assert reply["error"]["message"].startswith(message), (frame, reply)
                assert "\n" not in reply["error"]["message"]
                assert await ask(ws, {"id": "p", "op": "ping"}) == {
                    "id": "p",
                    "ok": True,
                    "result": {"pong": True},
                }
            assert (await ask(ws, {"id": 20, "op": "jobs"}))["result"] == []  # nothing ran
            job = (await ask(ws, {"id": 21, "op": "run", "args": {"rscript": "noop"}}))["result"]
            waited = await ask(ws, {"id": 22, "op": "wait", "args": {"job": job["job"]}})
            assert waited["result"]["state"] == "succeeded"
            stats = (await ask(ws, {"id": 23, "op": "stats"}))["result"]
            assert stats["console"]["refused"]["forbidden"] == 1


# --- who made each change ----------------------------------------------------------------------


async def test_every_verb_and_token_change_records_the_token_name(console: Console) -> None:
    """An operator's action run, submit_toml, approve, pause, resume, cancel and archive, and
    an admin's token create and revoke each put that token's name as `by` in their events;
    submit_toml answers with the submitted record."""
    gate = str(console.root / "never-opened")
    toml = textwrap.dedent(DEFINITION.format(name="audit", namespace="audit"))
    with trio.fail_after(GUARD):
        async with console.as_role("admin") as admin:
            await admin.call("token.create", name="temp", role="viewer")
            await admin.call("token.revoke", name="temp")
        async with console.as_role("operator") as op:
            await console.catalog(op)
            job = (
                await op.call(
                    "run",
                    action="demo.survey",
                    params={"files": 0, "data_dir": str(console.root / "survey")},
                )
            )["job"]
            assert (await op.call("wait", job=job))["state"] == "succeeded"
            record = await op.call("submit_toml", toml=toml, user="carol", params={"gate": gate})
            rid = record["id"]
            assert (rid, record["state"], record["namespace"]) == (
                "audit-carol-0001",
                "submitted",
                "audit",
            )
            verbs = ["approve", "pause", "resume", "cancel", "archive"]
            for verb in verbs:
                if verb == "pause":
                    await op.call("request_wait", request=rid, states=["running"])
                result = await op.call(verb, request=rid)
                assert result["verb"] == verb, result
            events = await op.call("events", limit=5000)
        by = {(e["kind"], e["subject"]): e["data"].get("by") for e in events}
        assert by[("job.created", job)] == "operator-1"
        assert by[("token.created", "token:temp")] == "admin-1"
        assert by[("token.revoked", "token:temp")] == "admin-1"
        operator_verbs = [
            (e["data"]["verb"], e["data"].get("by"))
            for e in events
            if e["kind"] == "request.state" and e["subject"] == rid and e["data"]["verb"] in verbs
        ]
        assert operator_verbs == [(v, "operator-1") for v in verbs]


async def test_a_submission_records_the_token_that_made_it(console: Console) -> None:
    """submit and submit_toml by operator-1 on behalf of user alice record `by` operator-1."""
    with trio.fail_after(GUARD):
        async with console.as_role("operator") as op:
            first = (await console.submit(op))["id"]
            toml = textwrap.dedent(DEFINITION.format(name="web", namespace="tests"))
            second = (await op.call("submit_toml", toml=toml, user="alice"))["id"]
            events = await op.call("events", kind="request.state", limit=5000)
        submits = {
            e["subject"]: e["data"].get("by") for e in events if e["data"]["verb"] == "submit"
        }
        assert submits == {first: "operator-1", second: "operator-1"}


async def test_a_catalog_change_records_the_token_that_made_it(console: Console) -> None:
    """catalog_add by operator-1 records `by` operator-1 in each catalog event."""
    with trio.fail_after(GUARD):
        async with console.as_role("operator") as op:
            await console.catalog(op, 2)
            events = await op.call("events", kind="catalog.", limit=5000)
        assert len(events) == 2
        assert [e["data"].get("by") for e in events] == ["operator-1", "operator-1"]


# --- the doc and the code ----------------------------------------------------------------------


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def test_the_protocol_doc_lists_exactly_the_ops_codes_and_close_codes() -> None:
    """docs/console-protocol.md's operations table names every registered op with its least
    role and no other; its error and close-code tables are exactly those of the protocol."""
    text = DOC.read_text()
    documented: dict[str, str] = {}
    for line in _section(text, "## Operations", "## Streams").splitlines():
        row = re.match(r"\| (`[^|]+`) \| (viewer|operator|admin) \|", line)
        if row:
            for name in re.findall(r"`([^`]+)`", row.group(1)):
                assert name not in documented, f"{name} documented twice"
                documented[name] = row.group(2)
    assert documented == {name: o.role.label for name, o in OPS.items()}

    codes = set(re.findall(r"^\| `([a-z_]+)` \|", _section(text, "### Errors", "### Close"), re.M))
    constants = {
        v
        for k, v in vars(protocol).items()
        if k.isupper() and isinstance(v, str) and k != "PROTOCOL"
    }
    assert codes == constants
    closes = {
        int(c)
        for c in re.findall(
            r"^\| (\d{4}) \|", _section(text, "### Close", "## Authentication"), re.M
        )
    }
    assert closes == {v for k, v in vars(protocol).items() if k.startswith("CLOSE_")}


async def test_a_connection_over_max_connections_gets_503_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    """With every socket of max_connections taken, one more websocket upgrade is answered
    HTTP 503 with the reason before any websocket exists; the open connections still work,
    and once one has gone a new one is accepted."""
    limits = Limits(max_connections=3, max_unauthenticated=1, admin_reserve=1, max_request=65536)
    with trio.fail_after(GUARD):
        async with open_console(tmp_path, limits) as console:
            port = port_of(console)
            async with console.connect() as first, console.connect(), console.connect():
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(
                    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                answer = b""
                while chunk := await stream.receive_some():
                    answer += chunk
                await stream.aclose()
                assert answer.startswith(b"HTTP/1.1 503 Service Unavailable")
                assert answer.endswith(b"too many console connections\n")
                assert (await first.call("stats"))["console"]["refused"]["too_many"] == 1
                with pytest.raises(
                    ClientError, match=r"refused the connection: HTTP 503: too many"
                ):
                    async with console.connect():
                        pass
            while True:  # the sessions end just after their clients have closed
                try:
                    async with console.connect() as again:
                        assert (await again.call("stats"))["console"]["connections"] >= 1
                        break
                except ClientError as exc:
                    assert str(exc).endswith("HTTP 503: too many console connections"), exc
                    await trio.sleep(0.05)
