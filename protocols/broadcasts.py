"""Broadcast topics and who hears a broadcast: rules both the engine and agents apply. No I/O.

Workflow code publishes a message on a topic (``ctx.publish``); the engine delivers it to the
agents of the publishing request's namespace that react to that topic (``Capabilities.namespace``
and ``topics``). A topic is a short dotted name: letters, digits, ``_``, ``.`` and ``-``,
starting with a letter.
"""

from __future__ import annotations

import re

from wfe.protocols.messages import Broadcast, Capabilities

TOPIC = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def topic_problem(topic: object) -> str:
    """Why ``topic`` is not a topic, in one line, or ""."""
    if isinstance(topic, str) and TOPIC.fullmatch(topic):
        return ""
    return f"topic {topic!r}: letters, digits, '_', '.', '-', starting with a letter (at most 64)"


def hears(capabilities: Capabilities, broadcast: Broadcast) -> bool:
    """True if an agent with ``capabilities`` is to be sent ``broadcast``: same namespace, and
    a reactor for its topic."""
    return capabilities.namespace == broadcast.namespace and broadcast.topic in capabilities.topics
