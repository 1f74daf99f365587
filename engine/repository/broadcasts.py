"""Broadcasts: messages workflow code publishes (``ctx.publish``), stored as events.

A broadcast is the event ``broadcast.<topic>`` whose subject is the publishing job and whose data
carry the namespace, the topic, the message and the broadcast's number: stored and replayable
like any event, delivered by the console to streams that ask for its kind (a topic) in its
namespace, and by the agent controller to the namespace's agents that react to the topic. An
agent's reaction is recorded as the event ``reaction.ended``.
"""

from __future__ import annotations

from collections.abc import Callable

from wfe.engine.repository.rowtypes import JsonObject
from wfe.engine.repository.writer import Tx
from wfe.protocols.broadcasts import TOPIC
from wfe.protocols.messages import Reacted

__all__ = ["KIND_PREFIX", "SCHEMA", "TOPIC", "publish", "reacted"]
KIND_PREFIX = "broadcast."


#: Migration: which broadcast each ``ctx.publish`` call made, by (publishing job, call number),
#: so that a tasklet replayed after a restart does not publish again (decision #61).
SCHEMA = """
CREATE TABLE broadcast_calls (parent TEXT NOT NULL, call_seq INTEGER NOT NULL,
  number INTEGER NOT NULL, PRIMARY KEY (parent, call_seq));
"""


def publish(
    topic: str,
    message: JsonObject,
    *,
    namespace: str,
    job: str,
    call_seq: int,
    subject: str | None = None,
    extra: JsonObject | None = None,
) -> Callable[[Tx], int | None]:
    """A write op that records the broadcast of ``job``'s call ``call_seq`` and returns its
    number (the ``broadcast`` counter's), or None when that call published before (a tasklet
    replayed after a restart): nothing is recorded twice. The event's subject is ``job``
    unless ``subject`` says otherwise (a simulated execution); ``extra`` joins its data."""

    def op(tx: Tx) -> int | None:
        row = tx.execute(
            "SELECT number FROM broadcast_calls WHERE parent = ? AND call_seq = ?", (job, call_seq)
        ).fetchone()
        if row is not None:
            return None
        number = tx.allocate("broadcast")
        tx.execute(
            "INSERT INTO broadcast_calls (parent, call_seq, number) VALUES (?, ?, ?)",
            (job, call_seq, number),
        )
        data = {"namespace": namespace, "topic": topic, "message": message, "number": number}
        tx.emit(KIND_PREFIX + topic, subject or job, {**data, **(extra or {})})
        return number

    return op


def reacted(agent: str, namespace: str, report: Reacted) -> Callable[[Tx], None]:
    """A write op that records how an agent's reactor ended: the event ``reaction.ended``."""

    def op(tx: Tx) -> None:
        tx.emit(
            "reaction.ended",
            agent,
            {
                "namespace": namespace,
                "number": report.seq,
                "topic": report.topic,
                "reactor": report.reactor,
                "exit_code": report.exit_code,
                "duration": report.duration,
                "result": report.result,
                "detail": report.detail,
            },
        )

    return op
