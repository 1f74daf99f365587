"""A stage's ``on_retry``: how a retry changes a job after an out-of-memory end or a timeout.

``on_retry = { memory = "x2" }`` doubles the job's memory for each retry that follows an
attempt that ran out of memory or timed out; ``"x1.5"`` multiplies by 1.5, ``"+1G"`` adds
a size (K, M, G, T: powers of 1024, as ``requires.memory``). The rules are kept as written
(strings), so that they travel with the job in its requirements and are read back after a
restart; ``parse_rules`` checks them, ``apply_rules`` is what the controller's policy uses.

``max_inputs = "/2"`` halves a job's inputs after such an end, as PanDA does: the retry
runs with the first ``ceil(n / 2)`` of its ``n`` inputs and the others go back to the stage,
to be batched again (``"/3"`` keeps a third; a job of one input is retried unchanged).
``inputs_kept`` is the rule's arithmetic; the split itself is ``wfe.engine.requests.split``
and the repository's ``input_split`` (docs/decisions.md #60 and the split's decision).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: The keys ``on_retry`` may have.
KEYS = ("memory", "max_inputs")
#: The rule that splits a job's inputs (not a requirement: it changes the job's params).
SPLIT = "max_inputs"
_DIVIDE = re.compile(r"/\s*(\d+)")
_MULTIPLY = re.compile(r"[x*]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_ADD = re.compile(r"\+\s*(\d+(?:\.\d+)?)\s*([KMGT]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class BadRule(ValueError):
    """An ``on_retry`` rule that cannot be used; the message is one line naming it."""


def parse_change(key: str, text: Any) -> tuple[str, float]:
    """``("x", factor)`` or ``("+", bytes)`` for a memory rule's value, ``("/", divisor)``
    for ``max_inputs``. Raises ``BadRule``."""
    if key not in KEYS:
        raise BadRule(f"unknown key {key!r} (known: {', '.join(KEYS)})")
    if key == SPLIT:
        return ("/", float(_divisor(text)))
    if not isinstance(text, str):
        raise BadRule(f'{key}: expected a string like "x2" or "+1G", not {text!r}')
    value = text.strip()
    if found := _MULTIPLY.fullmatch(value):
        factor = float(found.group(1))
        if not math.isfinite(factor) or factor <= 1:
            raise BadRule(f"{key}: {text!r} must multiply by more than 1")
        return ("x", factor)
    if found := _ADD.fullmatch(value):
        size = float(found.group(1)) * _UNITS[found.group(2).upper()]
        if size < 1:
            raise BadRule(f"{key}: {text!r} must add at least one byte")
        return ("+", size)
    raise BadRule(
        f'{key}: expected "x<factor>" (e.g. "x2") or "+<size>" (e.g. "+1G"), not {text!r}'
    )


def _divisor(text: Any) -> int:
    """The N of a ``max_inputs = "/N"`` rule (a whole number, at least 2)."""
    if not isinstance(text, str):
        raise BadRule(f'{SPLIT}: expected a string like "/2", not {text!r}')
    found = _DIVIDE.fullmatch(text.strip())
    if found is None:
        raise BadRule(f'{SPLIT}: expected "/<divisor>" (e.g. "/2"), not {text!r}')
    divisor = int(found.group(1))
    if divisor < 2:
        raise BadRule(f"{SPLIT}: {text!r} must divide by a whole number of at least 2")
    return divisor


def inputs_kept(rules: Mapping[str, str], inputs: int) -> int | None:
    """How many of its ``inputs`` a job keeps for its retry under ``rules``: the first
    ``ceil(inputs / N)`` for ``max_inputs = "/N"``. None: its inputs are not split (no such
    rule, or a job of at most one input, which is retried unchanged)."""
    text = rules.get(SPLIT)
    if text is None or inputs < 2:
        return None
    return math.ceil(inputs / _divisor(text))


def parse_rules(rules: Any) -> dict[str, str]:
    """The rules of an ``on_retry`` table, checked, as written. Raises ``BadRule``."""
    if not isinstance(rules, Mapping):
        raise BadRule(f'expected a table like {{ memory = "x2" }}, not {rules!r}')
    for key, text in rules.items():
        parse_change(str(key), text)
    return {str(k): str(v) for k, v in rules.items()}


def apply_rules(rules: Mapping[str, str], requirements: Mapping[str, Any]) -> dict[str, Any]:
    """``requirements`` as ``rules`` change them for the next attempt (a new dict). A rule
    for memory changes nothing when the job asked for no memory: there is nothing to grow."""
    changed = dict(requirements)
    for key, text in rules.items():
        if key == SPLIT:  # the job's inputs, not its requirements (``inputs_kept``)
            continue
        how, amount = parse_change(key, text)
        current = changed.get(key)
        if current is None or isinstance(current, bool) or not isinstance(current, int | float):
            continue
        changed[key] = int(current * amount) if how == "x" else int(current + amount)
    return changed
