"""Streams: filtered event subscriptions, what a slow client is told it missed, live output
while a job runs, and a stalled client cut off while the engine goes on."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import trio
from trio_websocket import wrap_client_stream

from wfe.engine.cli.client import Client
from wfe.engine.console.session import Limits
from wfe.protocols.console_frames import decode_binary

from .conftest import GUARD, Console, open_console


async def next_frame(client: Client, **match: Any) -> dict[str, Any]:
    """The next pushed frame that has every key of ``match`` (with that value if not None)."""
    async for frame in client.frames():
        if all(k in frame and (v is None or frame[k] == v) for k, v in match.items()):
            return frame
    raise AssertionError("the connection ended")


async def events_until(client: Client, stream: int, done: Any) -> list[dict[str, Any]]:
    """Events of ``stream`` until ``done(event)`` is true for one of them."""
    seen: list[dict[str, Any]] = []
    async for frame in client.frames():
        if frame.get("stream") != stream:
            continue
        assert "missed" not in frame, frame
        seen.extend(frame["events"])
        if any(done(e) for e in frame["events"]):
            return seen
    raise AssertionError("the connection ended")


def ended(job: str) -> Any:
    return lambda e: (
        e["subject"] == job and e["kind"] == "job.state" and e["data"]["state"] == "succeeded"
    )


async def test_subscribe_filters_by_kind_subject_request_and_namespace(console: Console) -> None:
    """Each stream gets only its events, in id order; request and namespace filters also
    take the events of the request's jobs."""
    with trio.fail_after(GUARD):
        async with console.connect() as c:
            await console.catalog(c, 1)
            kinds = (await c.call("subscribe", kinds=["job.state"]))["stream"]
            other = (await c.call("run", rscript="noop"))["job"]
            await c.call("wait", job=other)
            got = await events_until(c, kinds, ended(other))
            assert {e["kind"] for e in got} == {"job.state"}
            subject = (await c.call("subscribe", subjects=[other]))["stream"]
            await c.call("kill", job=other)  # ended already: only a kill_requested event
            frame = await next_frame(c, stream=subject)
            assert [(e["kind"], e["subject"]) for e in frame["events"]] == [
                ("job.kill_requested", other)
            ]

            by_request = (await c.call("subscribe", request="echo-alice-0001"))["stream"]
            by_namespace = (await c.call("subscribe", namespace="tests"))["stream"]
            elsewhere = (await c.call("subscribe", namespace="elsewhere"))["stream"]
            rid = (await console.submit(c))["id"]
            assert rid == "echo-alice-0001"
            await c.call("approve", request=rid)
            await c.call("request_wait", request=rid)
            seen: dict[int, list[dict[str, Any]]] = {
                by_request: [],
                by_namespace: [],
                elsewhere: [],
            }
            async for frame in c.frames():
                if frame.get("stream") in seen:
                    seen[frame["stream"]].extend(frame["events"])
                done = [
                    e
                    for e in seen[by_request]
                    if e["kind"] == "request.state" and e["data"]["to"] == "completed"
                ]
                if done and len(seen[by_namespace]) >= len(seen[by_request]):
                    break
            request_events = seen[by_request]
            ids = [e["id"] for e in request_events]
            assert ids == sorted(ids)
            assert {e["kind"].split(".")[0] for e in request_events} >= {
                "request",
                "job",
                "attempt",
            }
            job_ids = {e["subject"] for e in request_events if e["kind"] == "job.created"}
            assert job_ids and all(e["subject"] in job_ids | {rid} for e in request_events)
            assert [e["id"] for e in seen[by_namespace]] == ids
            assert seen[elsewhere] == []


async def test_a_slow_stream_is_told_what_it_missed_and_can_catch_up(tmp_path: Path) -> None:
    """A client that stops reading (its socket filled by a big tail) while jobs run gets,
    once it reads again, the events that were sent or held (at most 3 held), in id order,
    then a `missed` frame with the id range; `events` after the last id seen returns the rest."""
    limits = Limits(max_pending=3, max_request=65536)
    with trio.fail_after(GUARD):
        async with open_console(tmp_path, limits) as console, console.connect() as good:
            port = int(console.url.rsplit(":", 1)[1].strip("/"))
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills sooner
            await sock.connect(("127.0.0.1", port))
            tcp = trio.SocketStream(sock)
            try:
                async with trio.open_nursery() as nursery:
                    ws = await wrap_client_stream(
                        nursery, tcp, f"127.0.0.1:{port}", "/", message_queue_size=1
                    )

                    async def call(request_id: int, op: str, **args: Any) -> Any:
                        await ws.send_message(
                            json.dumps({"id": request_id, "op": op, "args": args})
                        )
                        while True:
                            reply = json.loads(await ws.get_message())
                            if reply.get("id") == request_id:
                                assert reply["ok"], reply
                                return reply["result"]

                    await call(1, "auth", token=console.token)
                    stream = (await call(2, "subscribe", kinds=["job."]))["stream"]
                    size = 8 * 1024 * 1024
                    big = (await good.call("run", rscript="bigoutput", params={"size": size}))[
                        "job"
                    ]
                    await ws.send_message(json.dumps({"id": 3, "op": "tail", "args": {"job": big}}))
                    # ... and read nothing: the tail fills the socket, its writer waits, and
                    # frames queue behind it; then five more jobs run.
                    await good.call("wait", job=big)
                    while not (await good.call("stats"))["console"]["queued_frames"]:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    jobs = [(await good.call("run", rscript="noop"))["job"] for _ in range(5)]
                    for job in jobs:
                        await good.call("wait", job=job)
                    while (await good.call("stats"))["console"]["events_missed"] < 1:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    got: list[dict[str, Any]] = []
                    while True:
                        message = json.loads(await ws.get_message())
                        if message.get("stream") != stream:
                            continue
                        if "missed" in message:
                            missed = message["missed"]
                            break
                        got.extend(message["events"])
                    ids = [e["id"] for e in got]
                    assert ids == sorted(set(ids))
                    assert got and missed["first_id"] > ids[-1] and missed["count"] >= 1
                    caught_up = await call(4, "events", after=ids[-1], kind="job.", limit=5000)
                    assert caught_up[0]["id"] == missed["first_id"]
                    finished = {
                        e["subject"]
                        for e in got + caught_up
                        if e["kind"] == "job.state" and e["data"]["state"] == "succeeded"
                    }
                    assert finished == {big, *jobs}
                    await ws.aclose()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await tcp.aclose()


async def test_tail_shows_output_while_the_job_runs(console: Console) -> None:
    """A tail gets the first line while the job is still running (held on a gate), then the
    rest, then the end with the job's state."""
    gate = console.root / "gate"
    with trio.fail_after(GUARD):
        async with console.connect() as c:
            job = (
                await c.call("run", rscript="console_work", params={"lines": 3, "gate": str(gate)})
            )["job"]
            tail = await c.call("tail", job=job)
            text = ""
            while "\n" not in text:  # the first line, however the agent chunks it
                frame = await next_frame(c, stream=tail["stream"], output=None)
                assert frame["channel"] == "stdout" and frame["attempt"] == 1
                text += frame["output"]
            assert text == "console_work line 1 of 3 (0 inputs)\n"
            assert (await c.call("job", job=job))["state"] == "running"
            gate.write_text("open\n")
            while True:
                frame = await next_frame(c, stream=tail["stream"])
                if frame.get("end"):
                    break
                text += frame["output"]
            assert frame == {
                "stream": tail["stream"],
                "end": True,
                "state": "succeeded",
                "error": None,
            }
            assert text == "".join(f"console_work line {i} of 3 (0 inputs)\n" for i in range(1, 4))


async def test_a_tail_of_a_big_output_is_complete_and_in_order(console: Console) -> None:
    """Eight MiB of output reach a tail byte for byte, whatever was dropped live."""
    size = 8 * 1024 * 1024
    with trio.fail_after(GUARD):
        async with console.connect() as c:
            job = (await c.call("run", rscript="bigoutput", params={"size": size}))["job"]
            tail = await c.call("tail", job=job)
            digest = hashlib.sha256()
            total = 0
            while True:
                frame = await next_frame(c, stream=tail["stream"])
                assert "missed" not in frame
                if frame.get("end"):
                    break
                data = frame["output"].encode()
                digest.update(data)
                total += len(data)
            assert frame["state"] == "succeeded"
            result = (await c.call("job", job=job))["attempt_list"][0]
            assert total == size
            assert result["state"] == "succeeded"
            expected = await console.engine.output(job)
            assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()


async def test_a_stalled_client_is_disconnected_and_the_engine_goes_on(tmp_path: Path) -> None:
    """A client that tails a big output and never reads is closed once one write has
    waited stall_timeout; meanwhile another client runs jobs to success."""
    limits = Limits(stall_timeout=0.5, max_request=65536)
    with trio.fail_after(GUARD):
        async with open_console(tmp_path, limits) as console, console.connect() as good:
            port = int(console.url.rsplit(":", 1)[1].strip("/"))
            async with trio.open_nursery() as nursery:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                ws = await wrap_client_stream(
                    nursery, stream, f"127.0.0.1:{port}", "/", message_queue_size=1
                )
                await ws.send_message(
                    json.dumps({"id": 1, "op": "auth", "args": {"token": console.token}})
                )
                await ws.get_message()
                job = (
                    await good.call("run", rscript="bigoutput", params={"size": 32 * 1024 * 1024})
                )["job"]
                await ws.send_message(json.dumps({"id": 2, "op": "tail", "args": {"job": job}}))
                # ... and never read again.
                for _ in range(3):
                    quick = (await good.call("run", rscript="noop"))["job"]
                    assert (await good.call("wait", job=quick))["state"] == "succeeded"
                assert (await good.call("wait", job=job))["state"] == "succeeded"
                # The server has no event for "closed a stalled client": poll its statistics.
                while (await good.call("stats"))["console"]["refused"]["stalled"] < 1:  # noqa: ASYNC110
                    await trio.sleep(0.1)
                stats = (await good.call("stats"))["console"]
                assert stats["connections"] == 1
                await stream.aclose()
                nursery.cancel_scope.cancel()


async def test_a_compressed_subscription_gets_binary_frames_with_the_same_events(
    console: Console,
) -> None:
    """Over a real websocket, `subscribe` with compress gets binary messages (stream id, then
    zlib JSON) carrying exactly the events a plain subscription of another connection gets."""
    port = int(console.url.rsplit(":", 1)[1].strip("/"))
    with trio.fail_after(GUARD):
        async with console.connect() as plain, trio.open_nursery() as nursery:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            ws = await wrap_client_stream(nursery, stream, f"127.0.0.1:{port}", "/")
            await ws.send_message(
                json.dumps({"id": 1, "op": "auth", "args": {"token": console.token}})
            )
            assert json.loads(await ws.get_message())["ok"]
            await ws.send_message(
                json.dumps(
                    {"id": 2, "op": "subscribe", "args": {"kinds": ["job."], "compress": True}}
                )
            )
            reply = json.loads(await ws.get_message())
            assert reply["ok"], reply
            packed_stream = reply["result"]["stream"]
            text_stream = (await plain.call("subscribe", kinds=["job."]))["stream"]
            job = (await plain.call("run", rscript="noop"))["job"]
            expected = await events_until(plain, text_stream, ended(job))
            got: list[dict[str, Any]] = []
            while not any(ended(job)(e) for e in got):
                message = await ws.get_message()
                assert isinstance(message, bytes), message
                frame = decode_binary(message)
                assert frame["stream"] == packed_stream
                got.extend(frame["events"])  # type: ignore[arg-type]
            assert got == expected
            await ws.aclose()
            nursery.cancel_scope.cancel()
