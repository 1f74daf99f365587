"""Load a workflow definition: read, merge includes, check, and fingerprint it.

``load_definition(path)`` is what ``wfe validate`` and ``wfe submit`` call; it blocks on
file reads and one or two ``git`` subprocesses, so async code runs it in a thread.
``build_definition(expanded)`` does the checking part on data alone; the engine uses it
to rebuild a stored definition, and ``build_definition(d.expanded)`` gives back ``d``'s
stages, query and sha256 exactly.

Every error is a ``DefinitionError`` with one line: syntax and include problems name the
file (``pipeline.toml:12: ...``); problems in the merged result name the main file and
the path (``pipeline.toml: stages[1].max_inputs: expected an integer``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from wfe.engine.definitions.config import apply_overlay, split_config, testbed_namespace
from wfe.engine.definitions.convert import structure_document, structure_stage_defaults
from wfe.engine.definitions.errors import DefinitionError, InvalidDefinition
from wfe.engine.definitions.merge import deep_merge, expand_includes, plain
from wfe.engine.definitions.model import Definition, GitInfo
from wfe.engine.definitions.query import compile_query
from wfe.engine.definitions.validate import check_document

NAMESPACE_REQUIRED = 'namespace is required: add `namespace = "..."` under [workflow]'


def load_definition(
    path: str | os.PathLike[str], *, overlay: str | os.PathLike[str] | None = None
) -> Definition:
    """Load the definition in ``path`` with its includes, and the ``overlay`` file (the
    seed's ``testbed.toml``) over them when given. Raises ``DefinitionError``."""
    shown = os.path.normpath(path)
    merged, files = expand_includes(Path(shown))
    if overlay is not None:
        merged = apply_overlay(merged, overlay)
    try:
        definition = build_definition(merged, sources=tuple(str(f) for f in files))
    except DefinitionError as exc:
        raise type(exc)(f"{shown}: {exc}") from None
    return attrs.evolve(definition, git=git_info(files[-1], files))


def build_definition(
    expanded: Mapping[str, Any],
    *,
    sources: tuple[str, ...] = (),
    git: GitInfo | None = None,
) -> Definition:
    """Check merged definition data and build the ``Definition``. Pure.

    ``expanded`` must have its includes resolved already. Raises ``InvalidDefinition``
    (or its subclasses ``DagError``, ``QueryError``) with a path-style line.
    """
    if not isinstance(expanded, Mapping):
        raise InvalidDefinition("expected a table at the top level")
    data: dict[str, Any] = plain(dict(expanded))
    if "includes" in data:
        raise InvalidDefinition("includes: put `includes = [...]` under [workflow]")
    workflow = data.get("workflow")
    if workflow is None:
        raise InvalidDefinition(
            "workflow: required: add a [workflow] table with name and namespace"
        )
    if not isinstance(workflow, dict):
        raise InvalidDefinition("workflow: expected a table")
    if "includes" in workflow:
        raise InvalidDefinition(
            "workflow.includes: unresolved (load the file with load_definition)"
        )
    own, config = split_config(data)
    if "testbed" in own:  # the seed's instance table: its namespace is the one
        workflow = {**workflow, "namespace": testbed_namespace(own.pop("testbed"))}
    namespace = workflow.get("namespace")
    if namespace is None or (isinstance(namespace, str) and not namespace.strip()):
        raise InvalidDefinition(NAMESPACE_REQUIRED)

    raw = {**own, "workflow": workflow}
    query_data = raw.pop("query", None)
    defaults = raw.pop("stage_defaults", None)
    if defaults is not None:
        structure_stage_defaults(defaults)
        if isinstance(raw.get("stages"), list):
            raw["stages"] = [
                deep_merge(defaults, stage) if isinstance(stage, dict) else stage
                for stage in raw["stages"]
            ]
    document = structure_document(raw)
    query = compile_query(query_data) if query_data is not None else None
    check_document(
        document.stages,
        document.params,
        has_query=query is not None,
        standing=document.workflow.trigger.standing,
    )
    return Definition(
        workflow=document.workflow,
        policy=document.policy,
        params=document.params,
        query=query,
        stages=document.stages,
        reactors=document.reactors,
        expanded=data,
        config=config,
        sha256=hashlib.sha256(canonical_json(data)).hexdigest(),
        sources=sources,
        git=git,
    )


def canonical_json(data: Any) -> bytes:
    """The bytes the sha256 of a definition is taken over: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def git_info(path: Path, sources: tuple[Path, ...] = ()) -> GitInfo | None:
    """HEAD commit and repo-relative path of ``path`` if it is in a git work tree.

    ``dirty`` is true when ``path`` or any of ``sources`` inside the same work tree is
    modified or untracked. None outside a work tree, without commits, or without git.
    """
    directory = path.resolve().parent
    try:
        top = Path(_git(directory, "rev-parse", "--show-toplevel")).resolve()
        commit = _git(directory, "rev-parse", "--verify", "--quiet", "HEAD")
        inside = [
            f.resolve().relative_to(top).as_posix()
            for f in (*sources, path)
            if f.resolve().is_relative_to(top)
        ]
        status = _git(top, "status", "--porcelain", "--", *inside)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    if not commit:
        return None
    return GitInfo(
        commit=commit,
        path=path.resolve().relative_to(top).as_posix(),
        dirty=bool(status.strip()),
    )


def _git(directory: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(
        ["git", "-C", str(directory), *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=30,
    )
    return done.stdout.strip()
