"""``[approval]`` in wfe.toml: a default and per-namespace rules that take precedence over the
definition's ``[policy] approval``; bad config is one line naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.config import DEFAULT_TOML, ApprovalMode, ApprovalSection, parse_config
from wfe.engine.definitions import Definition, build_definition
from wfe.engine.errors import ConfigError
from wfe.engine.requests.approval import decide_approval

from .conftest import HEAD, open_world

# --- the section -------------------------------------------------------------------------------


def test_without_a_section_the_definition_decides(tmp_path: Path) -> None:
    """No [approval]: every namespace follows its definition."""
    section = parse_config("", root=tmp_path).approval
    assert section == ApprovalSection(default=ApprovalMode.DEFINITION, namespaces=())
    assert section.rule_for("anything") == (ApprovalMode.DEFINITION, "approval.default")


def test_the_init_template_has_the_section(tmp_path: Path) -> None:
    """What `wfe init` writes has an [approval] section that parses to the default."""
    text = DEFAULT_TOML.format(port=0, local=1, slots=1)
    assert "[approval]" in text
    assert parse_config(text, root=tmp_path).approval == ApprovalSection()


def test_rules_keep_file_order_in_both_spellings(tmp_path: Path) -> None:
    """Dotted keys under [approval] and an [approval.namespaces] table mean the same."""
    dotted = parse_config(
        '[approval]\ndefault = "auto"\nnamespaces."survey.*" = "operator"\nnamespaces.tests = "auto"\n',
        root=tmp_path,
    ).approval
    table = parse_config(
        '[approval]\ndefault = "auto"\n[approval.namespaces]\n"survey.*" = "operator"\ntests = "auto"\n',
        root=tmp_path,
    ).approval
    assert (
        dotted
        == table
        == ApprovalSection(
            default=ApprovalMode.AUTO,
            namespaces=(("survey.*", ApprovalMode.OPERATOR), ("tests", ApprovalMode.AUTO)),
        )
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[approval]\ndefault = "yes"',
            """wfe.toml: approval.default: expected one of "definition", "operator", "auto", not 'yes'""",
        ),
        (
            '[approval]\nnamespaces."survey.*" = "operater"',
            """wfe.toml: approval.namespaces."survey.*": expected one of "definition", "operator", "auto", not 'operater'""",
        ),
        (
            "[approval]\nnamespaces.tests = true",
            'wfe.toml: approval.namespaces."tests": expected one of',
        ),
        (
            '[approval]\nnamespaces."survey/*" = "auto"',
            """wfe.toml: approval.namespaces."survey/*": a namespace or pattern has letters""",
        ),
        ('[approval]\nnamespaces."" = "auto"', 'wfe.toml: approval.namespaces."": a namespace'),
        (
            '[approval]\nnamespace = { a = "auto" }',
            "wfe.toml: approval: unknown key(s) (namespace)",
        ),
        ('approval = "auto"', "wfe.toml: approval: expected a table"),
        ('[approval]\nnamespaces = "auto"', "wfe.toml: approval.namespaces: expected a table"),
    ],
)
def test_bad_sections_get_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    """Each problem is refused with one line that names the key."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, root=tmp_path)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


# --- which rule applies ------------------------------------------------------------------------

OP, AUTO, DEF = ApprovalMode.OPERATOR, ApprovalMode.AUTO, ApprovalMode.DEFINITION


@pytest.mark.parametrize(
    ("rules", "namespace", "expected"),
    [
        ((("survey.*", OP), ("survey.quick", AUTO)), "survey.quick", (AUTO, "survey.quick")),
        ((("survey.*", OP), ("survey.quick", AUTO)), "survey.deep", (OP, "survey.*")),
        # the pattern with more literal characters wins: 7 against 0, 7 against 5, 3 against 5
        ((("*", AUTO), ("survey.*", OP)), "survey.deep", (OP, "survey.*")),
        ((("survey.*", OP), ("*.deep", AUTO)), "survey.deep", (OP, "survey.*")),
        ((("s*y.*", OP), ("*.deep", AUTO)), "survey.deep", (AUTO, "*.deep")),
        ((("a?", OP), ("?b", AUTO)), "ab", (OP, "a?")),  # a tie: the first in the file
        ((("survey.*", OP),), "survey", (None, "default")),  # "survey.*" needs the dot
        ((("survey.?", OP),), "survey.a", (OP, "survey.?")),
    ],
)
def test_the_most_specific_rule_wins(
    rules: tuple[tuple[str, ApprovalMode], ...],
    namespace: str,
    expected: tuple[ApprovalMode | None, str],
) -> None:
    """An exact name beats any pattern; then the pattern with most literal characters; then
    the first in the file; else the default."""
    section = ApprovalSection(default=DEF, namespaces=rules)
    mode, key = expected
    if mode is None:
        assert section.rule_for(namespace) == (DEF, "approval.default")
    else:
        assert section.rule_for(namespace) == (mode, f'approval.namespaces."{key}"')


NAMES = st.text(alphabet="ab.", min_size=1, max_size=5)
PATTERNS = st.text(alphabet="ab.*?", min_size=1, max_size=5)
MODES = st.sampled_from(list(ApprovalMode))


@given(st.lists(st.tuples(PATTERNS, MODES), max_size=6, unique_by=lambda r: r[0]), NAMES, MODES)
def test_the_chosen_rule_matches_and_none_is_more_specific(
    rules: list[tuple[str, ApprovalMode]], namespace: str, default: ApprovalMode
) -> None:
    """Whatever the rules, the one chosen matches the namespace, no matching rule is more
    specific, and the default applies only when none matches."""
    import fnmatch

    section = ApprovalSection(default=default, namespaces=tuple(rules))
    mode, key = section.rule_for(namespace)
    matching = [(p, m) for p, m in rules if fnmatch.fnmatchcase(namespace, p)]
    if not matching:
        assert (mode, key) == (default, "approval.default")
        return
    chosen = key.removeprefix('approval.namespaces."').removesuffix('"')
    assert (chosen, mode) in matching

    def specificity(pattern: str) -> tuple[bool, int]:
        return pattern == namespace, len(re.sub(r"[*?]", "", pattern))

    assert specificity(chosen) == max(specificity(p) for p, _ in matching)


@given(st.lists(st.tuples(PATTERNS, MODES), max_size=6, unique_by=lambda r: r[0]), MODES)
def test_a_written_section_reads_back_the_same(
    rules: list[tuple[str, ApprovalMode]], default: ApprovalMode
) -> None:
    """Any section written as TOML parses back to the same rules in the same order."""
    lines = ["[approval]", f'default = "{default.value}"']
    lines += [f'namespaces.{json.dumps(p)} = "{m.value}"' for p, m in rules]
    section = parse_config("\n".join(lines), root=Path("/")).approval
    assert section == ApprovalSection(default=default, namespaces=tuple(rules))


# --- the decision ------------------------------------------------------------------------------


def definition(approval: str | None) -> Definition:
    data: dict[str, Any] = {
        "workflow": {"name": "t", "namespace": "survey.deep"},
        "stages": [{"name": "a", "rscript": "noop"}],
    }
    if approval is not None:
        data["policy"] = {"approval": approval}
    return build_definition(data)


@pytest.mark.parametrize("written", [None, "required", "none"])
@pytest.mark.parametrize("mode", list(ApprovalMode))
def test_the_configuration_takes_precedence_over_the_definition(
    mode: ApprovalMode, written: str | None
) -> None:
    """operator: a person always approves; auto: the engine always does; definition: the
    definition's policy (required when it says nothing). The rule is named."""
    section = ApprovalSection(namespaces=(("survey.*", mode),))
    decision = decide_approval(section, "survey.deep", definition(written))
    if mode is ApprovalMode.DEFINITION:
        assert decision.required is (written != "none")
        assert decision.rule == (
            f'definition [policy] approval = "{written or "required"}"'
            ' (approval.namespaces."survey.*" = "definition")'
        )
    else:
        assert decision.required is (mode is ApprovalMode.OPERATOR)
        assert decision.rule == f'wfe.toml approval.namespaces."survey.*" = "{mode.value}"'


# --- through the engine ------------------------------------------------------------------------

APPROVAL = """
[approval]
default = "auto"
namespaces."survey.*" = "operator"
namespaces."survey.quick" = "definition"
"""

ONE_STAGE = (
    HEAD
    + """
[[stages]]
name = "a"
rscript = "work"
consumes = "query"
"""
)


async def test_the_engine_applies_the_namespace_rules(tmp_path: Path) -> None:
    """In an engine with [approval]: a request in survey.* waits for an operator although
    its definition needs no approval; one in another namespace is approved by the engine
    although its definition requires a person; survey.quick follows its definition. The
    rule is recorded with the request and shown by `wfe request`."""
    async with open_world(tmp_path, agents=0, extra_config=APPROVAL) as world:
        relaxed = world.definition(ONE_STAGE)  # approval = "none"
        strict = world.definition(
            ONE_STAGE.replace('approval = "none"', 'approval = "required"'), "strict.toml"
        )
        gated = await world.submit(relaxed, namespace="survey.deep")
        quick = await world.submit(strict, namespace="survey.quick")
        auto = await world.submit(strict, namespace="tests")
        assert [r["approval_required"] for r in (gated, quick, auto)] == [True, True, False]
        # the requests are stepped in id order: once the last is approved, all were looked at.
        # It fails next (no catalog entry matches its query), maybe before the wait begins:
        # a state passed through answers the wait.
        await world.wait(auto["id"], "approved", "running", "checking", "completed")
        assert (await world.detail(gated["id"]))["state"] == "submitted"
        assert (await world.detail(quick["id"]))["state"] == "submitted"

        approved = await world.call("approve", request=gated["id"])
        assert (approved["from"], approved["state"]) == ("submitted", "approved")

        detail = await world.detail(auto["id"])
        created = next(h for h in detail["history"] if h["kind"] == "request.created")
        assert created["approval"] == {
            "required": False,
            "rule": 'wfe.toml approval.default = "auto"',
        }
        approvals = [
            (h["verb"], h["actor"]) for h in detail["history"] if h["kind"] == "request.state"
        ]
        assert ("approve", "engine") in approvals

        code, out, err = await world.wfe("request", gated["id"])
        assert code == 0, err
        assert (
            '  approval by an operator: wfe.toml approval.namespaces."survey.*" = "operator"\n'
            in out
        )
        code, out, err = await world.wfe("request", quick["id"])
        assert (
            '  approval by an operator: definition [policy] approval = "required"'
            ' (approval.namespaces."survey.quick" = "definition")\n' in out
        )
