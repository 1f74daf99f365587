"""Who approves a request: ``[approval]`` of ``wfe.toml`` by namespace, then the definition.

The decision is taken once, at submission, and stored with the request (``approval_required``)
together with the rule that made it (in the ``request.created`` event), so that a later change
of ``wfe.toml`` does not change requests already submitted. The engine's configuration takes
precedence over the definition: ``operator`` means a person approves every request of the
namespace, ``auto`` that the engine approves them at once, and ``definition`` leaves it to the
definition's ``[policy] approval``.
"""

from __future__ import annotations

import attrs

from wfe.engine.config import ApprovalMode, ApprovalSection
from wfe.engine.definitions import Definition


@attrs.frozen(kw_only=True)
class ApprovalDecision:
    """Whether a person must approve a request, and the rule that says so."""

    required: bool
    rule: str  # e.g. 'wfe.toml approval.namespaces."survey.*" = "operator"'

    def as_data(self) -> dict[str, object]:
        """For the ``request.created`` event."""
        return {"required": self.required, "rule": self.rule}


def decide_approval(
    section: ApprovalSection, namespace: str, definition: Definition
) -> ApprovalDecision:
    """The approval a request of ``definition`` submitted in ``namespace`` needs."""
    mode, key = section.rule_for(namespace)
    if mode is ApprovalMode.DEFINITION:
        value = definition.policy.approval.value
        return ApprovalDecision(
            required=definition.approval_required,
            rule=f'definition [policy] approval = "{value}" ({key} = "definition")',
        )
    return ApprovalDecision(
        required=mode is ApprovalMode.OPERATOR, rule=f'wfe.toml {key} = "{mode.value}"'
    )
