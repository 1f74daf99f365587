"""How a definition's RScripts reach the engine, and how a submission is checked.

A definition's own scripts live in ``rscripts/`` beside the definition file. ``wfe submit``
reads the ones its stages name (``bundle``) and sends their text with the definition, so
the engine needs no access to the submitter's files. The engine stores each by content
(``rscript_texts``, keyed by sha256) and registers it in the controller's script library
under its own name, ``<namespace>/<name>@<first 12 hex of sha256>``: two versions of a
script never collide, a definition can't replace a library script, and a request always
runs the exact text it was submitted with. A stage naming a script that is not bundled
uses the engine's library (the shipped scripts and the configured folders).

``check_submission`` refuses, before anything is stored: an unknown script or action, a
bundled script whose header is bad, a stage parameter the script does not accept, and a
stage that consumes inputs with a script that declares no ``inputs`` parameter.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wfe.engine.definitions import INPUTS_PARAM, Definition, stage_params
from wfe.engine.requests.errors import SubmitError
from wfe.rscripts.errors import RScriptError
from wfe.rscripts.header import validate_params
from wfe.rscripts.loader import RScript, ScriptLibrary

#: The folder beside a definition file that holds its RScripts.
SCRIPTS_FOLDER = "rscripts"

#: The parameter through which the engine tells a script where to write its products
#: (passed only to scripts that declare it).
OUTPUT_DIR_PARAM = "output_dir"


def script_key(namespace: str, name: str, sha256: str) -> str:
    """The library name of a bundled script."""
    return f"{namespace}/{name}@{sha256[:12]}"


def bundle(definition: Definition, definition_path: str | os.PathLike[str]) -> dict[str, str]:
    """``{name: text}`` of the scripts in ``rscripts/`` beside the definition file that its
    stages name. Blocking (file reads). Raises ``SubmitError`` for a named script that is
    there but can't be read."""
    folder = Path(definition_path).resolve().parent / SCRIPTS_FOLDER
    wanted = {s.rscript for s in definition.stages if s.rscript is not None}
    if not folder.is_dir() or not wanted:
        return {}
    library = ScriptLibrary.scan([folder], shipped=False)
    for problem in library.errors:
        if any(f"{os.sep}{name}." in problem or repr(name) in problem for name in wanted):
            raise SubmitError(problem)
    return {name: library.get(name).text for name in sorted(wanted) if name in library}


def parse_bundled(texts: Mapping[str, Any]) -> dict[str, RScript]:
    """Parse the bundled texts; a script's header name must be the name it was sent under."""
    scripts = {}
    for name, text in texts.items():
        if not isinstance(text, str):
            raise SubmitError(f"{SCRIPTS_FOLDER}/{name}: expected the script's text")
        try:
            script = RScript.from_text(text, source=f"{SCRIPTS_FOLDER}/{name}")
        except RScriptError as exc:
            raise SubmitError(str(exc)) from None
        if script.name != name:
            raise SubmitError(
                f"{SCRIPTS_FOLDER}/{name}: header name is {script.name!r}, not {name!r}"
            )
        scripts[name] = script
    return scripts


def check_submission(
    definition: Definition,
    params: Mapping[str, Any],
    *,
    namespace: str,
    bundled: Mapping[str, RScript],
    library: ScriptLibrary,
    action_known: Callable[[str], bool],
) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
    """Check every stage against its script or action; return the scripts to store
    (``{name: (key, sha256, text)}``) and those taken from the engine's library
    (``{name: name}``). Raises ``SubmitError`` naming the stage."""
    stored: dict[str, tuple[str, str, str]] = {}
    from_library: dict[str, str] = {}
    for topic, reactor in definition.reactors.items():
        if not action_known(reactor):
            raise SubmitError(f"reactors.{topic}: unknown action {reactor!r}")
    for stage in definition.stages:
        if stage.action is not None:
            if not action_known(stage.action):
                raise SubmitError(f"stage {stage.name!r}: unknown action {stage.action!r}")
            continue
        name = stage.rscript
        assert name is not None
        if name in bundled:
            script = bundled[name]
            stored[name] = (script_key(namespace, name, script.sha256), script.sha256, script.text)
        elif name in library:
            script = library.get(name)
            from_library[name] = name
        else:
            raise SubmitError(
                f"stage {stage.name!r}: unknown RScript {name!r}"
                f" (not in {SCRIPTS_FOLDER}/ beside the definition, nor in the engine's library)"
            )
        trial = dict(stage_params(definition, stage.name, params))
        if INPUTS_PARAM in trial:
            raise SubmitError(f"stage {stage.name!r}: params.{INPUTS_PARAM} is set by the engine")
        if stage.consumes is not None:
            if script.header.param(INPUTS_PARAM) is None:
                raise SubmitError(
                    f"stage {stage.name!r} consumes inputs but RScript {name!r} declares no"
                    f" `{INPUTS_PARAM}` parameter"
                )
            trial[INPUTS_PARAM] = []
        if script.header.param(OUTPUT_DIR_PARAM) is not None and OUTPUT_DIR_PARAM not in trial:
            trial[OUTPUT_DIR_PARAM] = "/"
        try:
            validate_params(script.header, trial)
        except RScriptError as exc:
            raise SubmitError(f"stage {stage.name!r}: {exc}") from None
    return stored, from_library


def register(
    library: ScriptLibrary, entries: Mapping[str, tuple[str, str, str]] | list[tuple[str, str, str]]
) -> int:
    """Register stored scripts ``(key, sha256, text)`` in ``library``; returns how many.

    A text whose sha256 does not match is skipped (the repository was tampered with).
    """
    items = list(entries.values()) if isinstance(entries, Mapping) else list(entries)
    count = 0
    for key, sha, text in items:
        if key in library or hashlib.sha256(text.encode("utf-8")).hexdigest() != sha:
            continue
        library.add(RScript.from_text(text, source=key), name=key)
        count += 1
    return count
