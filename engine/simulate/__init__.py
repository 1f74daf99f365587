"""Simulated executions (``wfe simulate``): a definition's workflow action on a clock of its own.

``clock.py`` (the virtual scheduler and the real-time clock), ``execution.py`` (what one
execution records as it runs), ``service.py`` (start, wait, show). docs/simulation.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wfe.engine.definitions import Definition

#: The action domain of a workflow's code when ``[workflow] action`` does not name it.
WORKFLOWS_DOMAIN = "workflows"


def workflow_action(definition: Definition) -> str:
    """The workflow as code, the action ``wfe simulate`` runs: ``[workflow] action``, or
    ``workflows.<name>`` (``name = "stf_datataking"`` runs ``workflows.stf_datataking``)."""
    return definition.workflow.action or f"{WORKFLOWS_DOMAIN}.{definition.name}"
