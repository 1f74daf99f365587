"""wfe: a workflow engine for science and operations data processing.

The one import name of the distribution. Its parts live in the repository's top-level folders,
linked here: ``wfe.engine`` (the engine process, its console and CLI), ``wfe.agents`` (the agent
on a worker host), ``wfe.protocols`` (the sans-IO protocol both speak), ``wfe.links`` (the
transport code both use) and ``wfe.rscripts`` (RScript headers and results). See
``docs/decisions.md`` for why the folders are linked rather than moved.
"""

from __future__ import annotations

__version__ = "0.1.0"
