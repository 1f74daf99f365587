"""RScripts shipped with wfe, and the loader that reads and validates their headers."""

from __future__ import annotations

from wfe.rscripts.errors import (
    HeaderError,
    LibraryError,
    ParamError,
    ResultError,
    RScriptError,
    UnknownRScript,
)
from wfe.rscripts.header import (
    INTERPRETERS,
    MISSING,
    Interpreter,
    ParamSpec,
    ParamType,
    Requirements,
    ScriptHeader,
    format_header,
    format_size,
    parse_header,
    parse_size,
    validate_params,
)
from wfe.rscripts.loader import MAX_SCRIPT_BYTES, SHIPPED_DIR, RScript, ScriptLibrary, read_script
from wfe.rscripts.results import PRODUCT_TYPES, Product, ScriptResult, check_result, load_result

__all__ = [
    "INTERPRETERS",
    "MAX_SCRIPT_BYTES",
    "MISSING",
    "PRODUCT_TYPES",
    "SHIPPED_DIR",
    "HeaderError",
    "Interpreter",
    "LibraryError",
    "ParamError",
    "ParamSpec",
    "ParamType",
    "Product",
    "RScript",
    "RScriptError",
    "Requirements",
    "ResultError",
    "ScriptHeader",
    "ScriptLibrary",
    "ScriptResult",
    "UnknownRScript",
    "check_result",
    "format_header",
    "format_size",
    "load_result",
    "parse_header",
    "parse_size",
    "read_script",
    "validate_params",
]
