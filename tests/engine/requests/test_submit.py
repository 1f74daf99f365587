"""Submitting: bad submissions are refused with one line before anything is stored, and
a query that matches nothing fails the request at its start."""

from __future__ import annotations

from typing import Any

import pytest

from wfe.engine.cli.client import ClientError
from wfe.engine.requests.errors import SubmitError

from .conftest import HEAD, World

GOOD = (
    HEAD
    + """
[params.count]
type = "int"
default = 1

[[stages]]
name = "a"
rscript = "work"
params = { count = "${count}" }
"""
)


async def stored(world: World) -> tuple[int, int, int]:
    def fn(conn: Any) -> tuple[int, int, int]:
        return tuple(  # type: ignore[return-value]
            conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("requests", "definitions", "rscript_texts")
        )

    return await world.engine.repo.read(fn)


#: (definition, params, user, the start of the one-line error)
BAD: list[tuple[str, dict[str, str], str, str]] = [
    (GOOD, {"count": "many"}, "alice", "parameter 'count': 'many' is not an integer"),
    (GOOD, {"colour": "red"}, "alice", "unknown parameter 'colour' (known: count)"),
    (GOOD, {}, "alice/x", "user name 'alice/x' is not id-safe"),
    (
        GOOD.replace('rscript = "work"', 'rscript = "wrok"'),
        {},
        "alice",
        "stage 'a': unknown RScript 'wrok' (not in rscripts/ beside the definition,"
        " nor in the engine's library)",
    ),
    (
        GOOD.replace('count = "${count}"', 'count = "${count}", colour = "red"'),
        {},
        "alice",
        "stage 'a': work: unknown parameter 'colour' (known: bad_result, count,",
    ),
    (
        HEAD + '\n[[stages]]\nname = "a"\nrscript = "noop"\nconsumes = "query"\n',
        {},
        "alice",
        "stage 'a' consumes inputs but RScript 'noop' declares no `inputs` parameter",
    ),
]


async def test_a_bad_submission_is_refused_and_stores_nothing(world: World) -> None:
    """Each problem is one line; no request, definition or script is stored."""
    for definition, params, user, message in BAD:
        with pytest.raises(ClientError) as info:
            await world.submit(world.definition(definition), user=user, **params)
        assert str(info.value).startswith(message), message
        assert "\n" not in str(info.value)
    assert await stored(world) == (0, 0, 0)


async def test_a_script_whose_header_name_differs_is_refused(world: World) -> None:
    """A bundled script must carry the name its stage uses."""
    from wfe.engine.cli.requests import submission

    payload = submission(world.definition(GOOD), user="alice")
    payload["scripts"] = {
        "work": payload["scripts"]["work"].replace("# name: work", "# name: other")
    }
    with pytest.raises(ClientError, match=r"rscripts/work: header name is 'other', not 'work'"):
        await world.call("submit", **payload)
    assert await stored(world) == (0, 0, 0)


async def test_a_query_that_matches_nothing_fails_the_request(world: World) -> None:
    """The finder finding no input is a failure at start, with the reason."""
    await world.catalog(["d1.dat"], kind="dark")
    text = HEAD + '\n[[stages]]\nname = "a"\nrscript = "work"\nconsumes = "query"\n'
    rid = (await world.submit(world.definition(text)))["id"]
    done = await world.wait(rid)
    assert done["state"] == "failed"
    assert done["error"] == "the query matched no catalog entries (see `wfe catalog ls`)"


def test_bundle_refuses_a_named_script_that_does_not_parse(tmp_path: Any) -> None:
    """``wfe submit`` reports a broken script of the definition's own before sending."""
    from wfe.engine.cli.requests import submission

    (tmp_path / "rscripts").mkdir()
    (tmp_path / "rscripts" / "work.py").write_text(
        "#!/usr/bin/env python3\n# wfe-rscript: 1\n# name: work\n"
    )
    (tmp_path / "def.toml").write_text(GOOD)
    with pytest.raises(SubmitError, match="work.py"):
        submission(tmp_path / "def.toml", user="alice")
