"""The catalog: registering files with size, checksum and metadata, and the finder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from wfe.engine.definitions import compile_query
from wfe.engine.repository import Repository, open_repository
from wfe.engine.requests import catalog
from wfe.engine.requests.errors import CatalogError


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    async with open_repository(tmp_path / "wfe.db") as repository:
        yield repository


async def add(repo: Repository, paths: list[Path], **metadata: object) -> list[dict[str, object]]:
    entries = await catalog.describe_files([str(p) for p in paths], metadata)
    return await repo.write(catalog.add_entries(entries))


async def test_files_are_registered_with_size_checksum_and_metadata(
    repo: Repository, tmp_path: Path
) -> None:
    """A sidecar gives metadata, --meta overrides it; adding again refreshes the entry."""
    raw = tmp_path / "raw_1.csv"
    await trio.Path(raw).write_text("1,2,3\n")
    await trio.Path(tmp_path / "raw_1.csv.meta.json").write_text(
        json.dumps({"kind": "raw", "run": 7})
    )
    [entry] = await add(repo, [raw], run=8, detector="A")
    assert entry == {
        "path": str(raw),
        "size": 6,
        "sha256": hashlib.sha256(b"1,2,3\n").hexdigest(),
        "metadata": {"kind": "raw", "run": 8, "detector": "A"},
        "new": True,
    }
    await trio.Path(raw).write_text("1,2,3,4\n")
    [again] = await add(repo, [raw])
    assert (again["new"], again["size"], again["metadata"]) == (False, 8, {"kind": "raw", "run": 7})
    listed = await repo.read(catalog.list_entries())
    assert [(e.path, e.size) for e in listed] == [(str(raw), 8)]
    kinds = [e.kind for e in await repo.events_since(0)]
    assert kinds == ["catalog.added", "catalog.updated"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.csv", "missing.csv: no such file"),
        (lambda d: d, "not a regular file (give files, e.g. DIR/*.csv)"),
        (lambda d: Path("relative.csv"), "relative.csv: give an absolute path"),
    ],
)
async def test_a_bad_path_refuses_the_whole_call(
    repo: Repository, tmp_path: Path, make: object, message: str
) -> None:
    """One bad path: a one-line error, and nothing of the call is stored."""
    good = tmp_path / "good.csv"
    await trio.Path(good).write_text("x\n")
    with pytest.raises(CatalogError) as info:
        await catalog.describe_files([str(good), str(make(tmp_path))])  # type: ignore[operator]
    assert message in str(info.value)
    assert await repo.read(catalog.list_entries()) == []


async def test_a_bad_sidecar_is_refused(repo: Repository, tmp_path: Path) -> None:
    """A sidecar that is not a JSON object is named."""
    raw = tmp_path / "a.csv"
    await trio.Path(raw).write_text("x\n")
    await trio.Path(tmp_path / "a.csv.meta.json").write_text("[1, 2]")
    with pytest.raises(CatalogError, match=r"a.csv.meta.json: metadata must be a JSON object"):
        await catalog.describe_files([str(raw)])


async def test_the_finder_matches_metadata_and_file_facts(repo: Repository, tmp_path: Path) -> None:
    """Queries see metadata plus path, name and size (metadata wins); entries come in
    path order, keyed ``catalog:<path>``."""
    files = []
    for name, run in (("b.csv", 101), ("a.csv", 100), ("c.dat", 99)):
        path = tmp_path / name
        await trio.Path(path).write_text("x" * run)
        files.append(path)
    await add(repo, files, kind="raw")
    await trio.Path(tmp_path / "named.csv").write_text("y")
    await add(repo, [tmp_path / "named.csv"], name="overridden", kind="raw")

    async def find(*rules: dict[str, object]) -> list[str]:
        found = await repo.read(catalog.find(compile_query({"where": list(rules)})))
        return [Path(path).name for _, path, _ in found]

    assert await find() == ["a.csv", "b.csv", "c.dat", "named.csv"]
    assert await find({"field": "name", "op": "glob", "value": "*.csv"}) == ["a.csv", "b.csv"]
    assert await find({"field": "size", "op": "gte", "value": 100}) == ["a.csv", "b.csv"]
    assert await find({"field": "name", "op": "eq", "value": "overridden"}) == ["named.csv"]
    [(key, path, meta)] = await repo.read(
        catalog.find(compile_query({"where": [{"field": "size", "op": "eq", "value": 99}]}))
    )
    assert (key, meta) == (f"catalog:{tmp_path / 'c.dat'}", {"kind": "raw"})
