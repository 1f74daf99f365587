"""Broadcasts: messages workflow code publishes (``ctx.publish``), stored as events.

A broadcast is the event ``broadcast.<topic>`` whose subject is the publishing job and whose data
carry the namespace, the topic and the message: stored and replayable like any event, and
delivered by the console to streams that ask for its kind (a topic) in its namespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from wfe.engine.repository.rowtypes import JsonObject
from wfe.engine.repository.writer import Tx

TOPIC = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
KIND_PREFIX = "broadcast."


def publish(topic: str, message: JsonObject, *, namespace: str, job: str) -> Callable[[Tx], int]:
    """A write op that records the broadcast and returns nothing useful but its size."""

    def op(tx: Tx) -> int:
        tx.emit(
            KIND_PREFIX + topic,
            job,
            {"namespace": namespace, "topic": topic, "message": message},
        )
        return len(message)

    return op
