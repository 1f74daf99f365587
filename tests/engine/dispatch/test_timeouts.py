"""Which per-attempt timeout a new job gets: the submit's, else its script header's, else
``[jobs] timeout``."""

from __future__ import annotations

from typing import Any

import pytest
from trio.testing import MockClock

from wfe.protocols.messages import Dispatch
from wfe.rscripts.loader import RScript

from ..conftest import Harness

UNTIMED = "# wfe-rscript: 1\n# name: untimed\n# version: 1\n# interpreter: sh\ntrue\n"
TIMED = "# wfe-rscript: 1\n# name: timed\n# version: 1\n# interpreter: sh\n# timeout: 1h\ntrue\n"


@pytest.mark.parametrize(
    ("script", "given", "expected"),
    [
        ("untimed", None, 42.0),  # no header timeout: [jobs] timeout
        ("timed", None, 3600.0),  # the header's, though it equals the header default
        ("timed", 7.0, 7.0),  # the submit's beats the header's
        ("untimed", 7.0, 7.0),  # and [jobs]
    ],
)
async def test_the_timeout_of_a_new_job(
    autojump_clock: MockClock,
    start_controller: Any,
    script: str,
    given: float | None,
    expected: float,
) -> None:
    """The submit's timeout, else the header's ``# timeout:`` if it has one, else [jobs]."""
    h: Harness = await start_controller(jobs={"timeout": 42.0})
    for text in (UNTIMED, TIMED):
        h.controller.scripts.add(RScript.from_text(text, source="test.sh"))
    agent = h.agent("a", slots=1)
    job_id = await h.controller.submit(script, {}, timeout=given)
    [dispatch] = await agent.receive(Dispatch)
    assert dispatch.job_id == job_id
    assert dispatch.limits.timeout == expected
    assert h.controller.jobs[job_id].timeout == expected
