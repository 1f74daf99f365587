"""Errors raised while loading and checking a workflow definition.

Every message is one line, ready to print: it names the file (for syntax and include
problems) or the path inside the definition (``stages[1].max_inputs: expected an
integer``), and where it helps, the fix.
"""

from __future__ import annotations

from wfe.engine.errors import EngineError


class DefinitionError(EngineError, ValueError):
    """Base class: the definition cannot be used. Nothing was stored."""


class DefinitionSyntaxError(DefinitionError):
    """A file is not valid TOML (or not UTF-8); the message has ``file:line:``."""


class IncludeError(DefinitionError):
    """An include names a missing file, or includes form a cycle."""


class InvalidDefinition(DefinitionError):
    """An unknown key, a value of the wrong type, or a rule broken (``path: problem``)."""


class DagError(InvalidDefinition):
    """The stages do not form a DAG: a cycle, a duplicate, or an unknown stage named."""


class QueryError(InvalidDefinition):
    """The input query has a bad rule (unknown op, missing field, unusable value)."""


class ParamError(DefinitionError):
    """Request parameters do not fit the definition's ``[params]`` schema."""


class UnknownRScript(DefinitionError, LookupError):
    """A stage names an RScript (or action) that is not known."""
