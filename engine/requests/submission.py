"""Checking a submission before anything is stored (``RequestService.submit``): the user
name, the git information, the definition, its parameters, the namespace, the scripts
and the approval policy, each refused with a one-line error."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from wfe.engine.config import ApprovalSection
from wfe.engine.definitions import GitInfo, build_definition, resolve_params
from wfe.engine.repository import requests as store
from wfe.engine.requests import scripts
from wfe.engine.requests.approval import decide_approval
from wfe.engine.requests.errors import SubmitError
from wfe.protocols.errors import ProtocolError
from wfe.protocols.request import check_user_name

if TYPE_CHECKING:
    from wfe.rscripts.loader import ScriptLibrary


def git_info(git: Mapping[str, Any] | None) -> GitInfo | None:
    """The definition's git information as sent, or None; ``SubmitError`` if malformed."""
    if not git:
        return None
    try:
        return GitInfo(commit=str(git["commit"]), path=str(git["path"]), dirty=bool(git["dirty"]))
    except (KeyError, TypeError):
        raise SubmitError("git: expected commit, path and dirty") from None


def check_submission(
    *,
    expanded: Mapping[str, Any],
    user: str,
    sources: Collection[str],
    git: Mapping[str, Any] | None,
    scripts_text: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None,
    namespace: str | None,
    priority: int | None,
    by: str | None,
    approval: ApprovalSection,
    type_priority: Mapping[str, int],
    library: ScriptLibrary,
    action_known: Callable[[str], bool],
) -> store.Submission:
    """What ``RequestService.submit`` stores; raises ``DefinitionError`` / ``SubmitError``
    (one line) on anything wrong. ``priority`` None: the priority ``type_priority`` (wfe.toml's
    ``[request_types] priority``) gives the definition's ``type``, else 0."""
    try:
        check_user_name(user)
    except ProtocolError as exc:
        raise SubmitError(str(exc)) from None
    gitinfo = git_info(git)
    definition = build_definition(expanded, sources=tuple(str(s) for s in sources), git=gitinfo)
    resolved = resolve_params(definition, dict(params or {}))
    kind = definition.workflow.type
    if kind is not None and kind not in type_priority:
        known = ", ".join(sorted(type_priority)) or "none"
        raise SubmitError(
            f"workflow.type {kind!r} is not a request type of this engine (known: {known};"
            " add it to [request_types] priority in wfe.toml)"
        )
    if priority is None:
        priority = 0 if kind is None else type_priority[kind]
    namespace = definition.namespace if namespace is None else namespace
    if not namespace or not all(c.isalnum() or c in "_.-" for c in namespace):
        raise SubmitError(f"namespace {namespace!r}: use letters, digits, '_', '.' and '-'")
    bundled = scripts.parse_bundled(scripts_text or {})
    stored, from_library = scripts.check_submission(
        definition,
        resolved,
        namespace=namespace,
        bundled=bundled,
        library=library,
        action_known=action_known,
    )
    return store.Submission(
        definition=definition,
        scripts=stored,
        library_scripts=from_library,
        user=user,
        namespace=namespace,
        params=resolved,
        priority=priority,
        approval=decide_approval(approval, namespace, definition),
        by=by or user,
    )
