"""Paging stored output: only the chunks a page touches are read, and pages end between
UTF-8 characters, so that printing them one after another never garbles a character."""

from __future__ import annotations

import itertools
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wfe.engine.errors import UnknownJob
from wfe.engine.repository.queries import output_page


def database(chunks: list[bytes]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
    conn.execute("CREATE TABLE attempts (job_id TEXT, attempt INTEGER)")
    conn.execute(
        "CREATE TABLE output (job_id TEXT, attempt INTEGER, seq INTEGER, stream TEXT, data BLOB)"
    )
    conn.execute("INSERT INTO jobs VALUES ('j1'), ('j2')")
    conn.execute("INSERT INTO attempts VALUES ('j1', 1), ('j1', 2)")
    conn.execute("INSERT INTO output VALUES ('j1', 1, 0, 'stdout', X'6f6c64')")  # attempt 1: "old"
    conn.executemany("INSERT INTO output VALUES ('j1', 2, ?, 'stdout', ?)", list(enumerate(chunks)))
    return conn


def pages(conn: sqlite3.Connection, limit: int) -> list[bytes]:
    out, offset = [], 0
    while True:
        page = output_page("j1", None, offset, limit)(conn)
        out.append(page.data)
        offset = page.offset + len(page.data)
        if offset >= page.size:
            return out


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(min_size=0, max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=1200), max_size=8),
    limit=st.integers(min_value=1, max_value=64),
)
def test_pages_reassemble_the_output_and_end_between_characters(
    text: str, cuts: list[int], limit: int
) -> None:
    """Whatever the chunking and the page size, the pages of the last attempt join to its
    whole output; with room for any character (4 bytes) every page decodes on its own."""
    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    got = pages(database(chunks), limit)
    assert b"".join(got) == data
    assert all(len(p) <= limit for p in got)
    if limit >= 4:
        assert "".join(p.decode() for p in got) == text


def test_a_page_reads_only_the_chunks_it_needs() -> None:
    """A page in the middle of a big output reads the blobs of the chunks it touches only."""
    conn = database([bytes([65 + i]) * 1000 for i in range(50)])
    read: list[str] = []
    conn.set_trace_callback(read.append)
    page = output_page("j1", None, 10_500, 1000)(conn)
    assert page.data == b"K" * 500 + b"L" * 500 and page.size == 50_000
    blob_reads = [q for q in read if q.startswith("SELECT data FROM output")]
    assert len(blob_reads) == 2


def test_an_attempt_can_be_named_and_an_unknown_job_is_refused() -> None:
    """attempt=1 pages the first attempt; a job with no attempt has empty output; an unknown
    job raises UnknownJob."""
    conn = database([b"new"])
    assert output_page("j1", 1, 0, 10)(conn).data == b"old"
    assert output_page("j2", None, 0, 10)(conn).size == 0
    with pytest.raises(UnknownJob, match="no job nope"):
        output_page("nope", None, 0, 10)(conn)
