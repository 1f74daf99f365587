"""wfe: a workflow engine for science and operations data processing.

The one import name of the distribution. Its parts live in the repository's top-level folders,
linked here: ``wfe.engine`` (the engine process, its console and CLI), ``wfe.agents`` (the agent
on a worker host), ``wfe.protocols`` (the sans-IO protocol both speak), ``wfe.links`` (the
transport code both use) and ``wfe.rscripts`` (RScript headers and results). See
``docs/decisions.md`` for why the folders are linked rather than moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from wfe.work import Work as Work

__all__ = ["Work", "__version__"]


def __getattr__(name: str) -> Any:
    """``wfe.Work`` (the work queue's Python API, ``wfe.work``), loaded on first use so that
    ``import wfe`` stays light."""
    if name == "Work":
        from wfe.work import Work

        return Work
    raise AttributeError(f"module 'wfe' has no attribute {name!r}")
