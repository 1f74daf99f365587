"""The upload reference and file format (``wfe.links.xmpp_upload``) and the engine's fetch policy:
only files of the server's own upload service, checked for size and sha256."""

from __future__ import annotations

import hashlib
import random
import xml.etree.ElementTree as ET
from typing import Any

import attrs
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.transports.xmpp_link import UploadFetcher
from wfe.links.xmpp_upload import (
    UploadError,
    UploadRef,
    allowed_url,
    pack,
    parse_ref,
    same_service,
    service_base,
    unpack,
    worth_uploading,
)
from wfe.protocols.messages import OutputChunk, Stream

BASE = "http://127.0.0.1:5280/file_share/"


def chunks_for(datas: list[tuple[Stream, bytes]], first: int = 0) -> list[OutputChunk]:
    return [
        OutputChunk(job_id="j/1", attempt=2, stream=stream, seq=first + n, data=data)
        for n, (stream, data) in enumerate(datas)
    ]


def ref_for(data: bytes, count: int, first: int = 0, url: str = BASE + "slot/f.out") -> UploadRef:
    return UploadRef(
        job_id="j/1",
        attempt=2,
        seq=first,
        chunks=count,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        url=url,
    )


@given(
    st.lists(st.tuples(st.sampled_from(Stream), st.binary(max_size=300)), min_size=1),
    st.integers(min_value=0, max_value=10**6),
)
def test_pack_and_unpack_round_trip(datas: list[tuple[Stream, bytes]], first: int) -> None:
    """A packed run of chunks unpacks to the same chunks, streams and seqs included."""
    chunks = chunks_for(datas, first)
    data = pack(chunks)
    assert unpack(data, ref_for(data, len(chunks), first)) == chunks


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"size": 1}, "bytes, the reference says"),
        ({"sha256": "0" * 64}, "sha256 does not match"),
        ({"chunks": 3}, "2 chunks, the reference says 3"),
        ({"seq": 5}, "bad record 0"),
    ],
)
def test_unpack_refuses_a_file_that_does_not_match_its_reference(
    change: dict[str, Any], problem: str
) -> None:
    """Wrong size, checksum, chunk count or seqs: the file is refused, naming the problem."""
    chunks = chunks_for([(Stream.STDOUT, b"a" * 10), (Stream.STDERR, b"b")])
    data = pack(chunks)
    with pytest.raises(UploadError, match=problem):
        unpack(data, attrs.evolve(ref_for(data, 2), **change))


def test_a_reference_survives_its_element_and_bad_ones_are_refused() -> None:
    """``parse_ref`` reads back what ``element`` wrote; a reference without a proper sha256,
    seq or url is refused with the field named."""
    ref = ref_for(b"x" * 40, 1, first=7, url=BASE + 'a/b.out?"&<')
    assert parse_ref(ET.fromstring(ref.element())) == ref
    for attribute, value in (("sha256", "XYZ"), ("seq", "-1"), ("url", ""), ("chunks", "0")):
        element = ET.fromstring(ref.element())
        element.set(attribute, value)
        with pytest.raises(UploadError, match=attribute):
            parse_ref(element)


def test_only_big_incompressible_chunks_are_worth_uploading() -> None:
    """Random bytes of 64 KiB go by HTTP; text of the same size, or 1 KiB of random, do not."""
    rnd = random.Random(1)
    big = OutputChunk(job_id="j", attempt=1, stream=Stream.STDOUT, seq=0, data=rnd.randbytes(65536))
    assert worth_uploading(big)
    text = OutputChunk(job_id="j", attempt=1, stream=Stream.STDOUT, seq=0, data=b"line\n" * 13107)
    assert not worth_uploading(text)
    small = OutputChunk(
        job_id="j", attempt=1, stream=Stream.STDOUT, seq=0, data=rnd.randbytes(1024)
    )
    assert not worth_uploading(small)


@pytest.mark.parametrize(
    ("url", "same"),
    [
        (BASE + "slot/file.out", True),
        ("http://127.0.0.1:5280/file_share/a/b", True),
        ("http://127.0.0.2:5280/file_share/slot/file.out", False),  # another host
        ("http://127.0.0.1:5281/file_share/slot/file.out", False),  # another port
        ("https://127.0.0.1:5280/file_share/slot/file.out", False),  # another scheme
        ("http://127.0.0.1:5280/other/slot/file.out", False),  # another path
        ("http://127.0.0.1:5280/file_share/../admin", False),
        ("http://user@127.0.0.1:5280/file_share/slot/f", False),
        ("http://127.0.0.1:5280/file_share/slot/f?x=1", False),
        ("http://127.0.0.1:bad/file_share/slot/f", False),
    ],
)
def test_same_service(url: str, same: bool) -> None:
    """A URL is fetched only when it is under the service's own base."""
    assert same_service(url, BASE) is same


def test_service_base_and_schemes() -> None:
    """The base is what precedes ``<slot>/<file>``; http is allowed only for plaintext XMPP."""
    assert service_base(BASE + "abc/f.out") == BASE
    assert allowed_url("https://x/f", plain=False) and allowed_url("http://x/f", plain=True)
    assert not allowed_url("http://x/f", plain=False) and not allowed_url("ftp://x/f", plain=True)


class Settings:
    jid = "engine@wfe.localhost"
    tls = "plain"


class Client:
    settings = Settings()


async def test_the_fetcher_refuses_urls_off_the_service_and_checks_what_it_gets() -> None:
    """A reference naming another host is refused without any request; one on the service is
    fetched and checked; a file that does not match its reference is refused."""
    requests: list[str] = []
    chunks = chunks_for([(Stream.STDOUT, b"hello")])
    data = pack(chunks)

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        return httpx.Response(200, content=data)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        fetcher = UploadFetcher(Client(), http)  # type: ignore[arg-type]
        fetcher.use_service(BASE)
        with pytest.raises(UploadError, match="not on the upload service"):
            await fetcher.fetch(ref_for(data, 1, url="http://10.0.0.1/file_share/s/f"))
        assert requests == [] and fetcher.refused == 1
        assert await fetcher.fetch(ref_for(data, 1)) == chunks
        with pytest.raises(UploadError, match="sha256"):
            await fetcher.fetch(attrs.evolve(ref_for(data, 1), sha256="0" * 64))
    assert requests == [BASE + "slot/f.out"] * 2 and fetcher.fetched == 1
