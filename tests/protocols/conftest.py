"""Hypothesis strategies for every protocol message, shared through the ``msgs`` fixture."""

from __future__ import annotations

import types
from typing import Any

import pytest
from hypothesis import strategies as st

from wfe.protocols.messages import (
    MAX_CHUNK_BYTES,
    Ack,
    AgentHello,
    AgentStatus,
    AttemptRef,
    Broadcast,
    Cancel,
    Capabilities,
    Dispatch,
    FinishReason,
    JobAccepted,
    JobFinished,
    JobRefused,
    Lease,
    Limits,
    OutputChunk,
    Reacted,
    Resume,
    Shutdown,
    StatusRequest,
    Stream,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
ints = st.integers(min_value=-(2**63), max_value=2**63)
opt_ints = st.none() | ints
texts = st.text(max_size=40)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | ints | finite | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)

refs = st.builds(AttemptRef, job_id=texts, attempt=ints)
ref_tuples = st.lists(refs, max_size=3).map(tuple)
limits = st.builds(Limits, timeout=finite, memory=opt_ints)
capabilities = st.builds(
    Capabilities,
    slots=ints,
    memory=opt_ints,
    site=texts,
    tags=st.lists(texts, max_size=3).map(tuple),
    storage=st.lists(texts, max_size=3).map(tuple),
    namespace=texts,
    topics=st.lists(texts, max_size=3).map(tuple),
)

dispatches = st.builds(
    Dispatch,
    job_id=texts,
    attempt=ints,
    script_name=texts,
    script=st.text(max_size=200),
    sha256=texts,
    params=json_objects,
    limits=limits,
    signature=st.none() | texts,
    issued=st.none() | finite,
)

#: One strategy per message class; ``test_codec`` checks that none is missing.
BY_TYPE: dict[type[Any], st.SearchStrategy[Any]] = {
    Dispatch: dispatches,
    Cancel: st.builds(Cancel, job_id=texts, attempt=ints, reason=texts),
    Ack: st.builds(Ack, job_id=texts, attempt=ints),
    StatusRequest: st.builds(StatusRequest),
    Resume: st.builds(Resume, job_id=texts, attempt=ints, next_seq=ints),
    Lease: st.builds(Lease, seq=ints, ttl=finite),
    Shutdown: st.builds(Shutdown, reason=texts, leave_running=st.booleans()),
    AgentHello: st.builds(
        AgentHello,
        name=texts,
        software=texts,
        capabilities=capabilities,
        running=ref_tuples,
        held=ref_tuples,
        seq=ints,
    ),
    AgentStatus: st.builds(
        AgentStatus, name=texts, free_slots=ints, running=ref_tuples, held=ref_tuples, seq=ints
    ),
    JobAccepted: st.builds(JobAccepted, job_id=texts, attempt=ints, pid=opt_ints),
    JobRefused: st.builds(JobRefused, job_id=texts, attempt=ints, reason=texts),
    OutputChunk: st.builds(
        OutputChunk,
        job_id=texts,
        attempt=ints,
        stream=st.sampled_from(Stream),
        seq=ints,
        data=st.binary(max_size=MAX_CHUNK_BYTES // 256),
    ),
    JobFinished: st.builds(
        JobFinished,
        job_id=texts,
        attempt=ints,
        reason=st.sampled_from(FinishReason),
        exit_code=opt_ints,
        signal=opt_ints,
        duration=finite,
        result=st.none() | json_objects,
        detail=texts,
        chunks=ints,
    ),
    Broadcast: st.builds(Broadcast, seq=ints, namespace=texts, topic=texts, message=json_objects),
    Reacted: st.builds(
        Reacted,
        seq=ints,
        topic=texts,
        reactor=texts,
        exit_code=opt_ints,
        duration=finite,
        result=st.none() | json_objects,
        detail=texts,
    ),
}


class _Strategies(types.SimpleNamespace):
    def __repr__(self) -> str:  # keeps hypothesis' falsifying examples readable
        return "msgs"


@pytest.fixture(scope="session")
def msgs() -> types.SimpleNamespace:
    """Strategies: ``by_type[cls]``, ``message`` (any type), ``dispatch``, ``json_value``."""
    return _Strategies(
        by_type=BY_TYPE,
        message=st.one_of(*BY_TYPE.values()),
        dispatch=dispatches,
        json_value=json_values,
    )
