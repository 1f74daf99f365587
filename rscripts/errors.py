"""Errors raised by ``rscripts``: every message is one line that names the script and the rule."""

from __future__ import annotations


class RScriptError(Exception):
    """Base class of every error raised by ``rscripts``."""


class HeaderError(RScriptError, ValueError):
    """A script header that cannot be parsed: names the source, the line and the problem."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


class ParamError(RScriptError, ValueError):
    """Parameters that do not fit a script's declared parameters."""

    def __init__(self, script: str, problem: str) -> None:
        super().__init__(f"{script}: {problem}")
        self.script = script
        self.problem = problem


class ResultError(RScriptError, ValueError):
    """A result (the JSON a script wrote to ``$WFE_RESULT``) that breaks the result schema."""

    def __init__(self, script: str, problem: str) -> None:
        super().__init__(f"{script}: result {problem}")
        self.script = script
        self.problem = problem


class UnknownRScript(RScriptError, LookupError):
    """No RScript of that name in the library."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown RScript {name!r} (known: {listing})")
        self.name = name
        self.known = known


class LibraryError(RScriptError):
    """Loading a script library found bad files; ``errors`` holds one line per problem."""

    def __init__(self, errors: tuple[str, ...]) -> None:
        more = len(errors) - 1
        tail = f" (and {more} more problem{'s' if more != 1 else ''})" if more else ""
        super().__init__(f"{errors[0]}{tail}")
        self.errors = errors
