"""docs/configuration.md agrees with the parsers of ``wfe.toml`` and ``agent.toml``.

The page is read once: its key tables (``| `key` | ...`` rows under ``### `[section]` `` for
``wfe.toml``, under "General keys" / "XMPP keys" for the agent), its refusal bullets
(``- `key = value` → `message` ``) and its ```` ```toml ```` examples. Everything before the
``## `` heading that names ``agent.toml`` is about ``wfe.toml``; everything after, the agent.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import attrs
import pytest

from wfe.agents import config as agent_config
from wfe.agents.errors import ConfigError as AgentConfigError
from wfe.engine.config import AgentGroup, Config, parse_config
from wfe.engine.errors import ConfigError

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

#: What an ``[xmpp]`` refusal example is checked with (the values are checked only then).
ENGINE_XMPP_BASE = {"enabled": "true", "jid": '"engine@wfe.example.org"'}
#: The keys an XMPP agent needs; an XMPP-key refusal example is checked with the others.
AGENT_XMPP_BASE = {
    "xmpp": "true",
    "jid": '"node17@wfe.example.org"',
    "password_file": '"agent.password"',
    "controllers": '["engine@wfe.example.org"]',
    "trusted_key": '"engine.pub"',
}

_SECTION = re.compile(r"^### `\[([\w.<>]+)\]`")
#: The page's section of agent groups, ``[agents.<name>]``; tried as ``[agents.gpu]``.
GROUP = "agents.<name>"


def header(section: str) -> str:
    """The TOML table header a section's keys are written under."""
    return "[agents.gpu]" if section == GROUP else f"[{section}]"


def part_of(config: Config, section: str) -> Any:
    """The parsed model of ``section`` (the group ``gpu`` for the groups' section)."""
    return config.agents.groups["gpu"] if section == GROUP else getattr(config, section)


_REFUSAL = re.compile(r"^- `(?P<assignment>[^`]+)` → `(?P<message>[^`]+)`$")
_LEADING_KEY = re.compile(r"^[A-Za-z_]+")
_LITERAL = re.compile(r"^`([^`]+)`")


@attrs.frozen(kw_only=True)
class Row:
    part: str  # "engine" (wfe.toml) or "agent"
    section: str | None  # wfe.toml: the table; agent: "general" or "xmpp"
    cells: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.cells[0].strip("`")


@attrs.frozen(kw_only=True)
class Refusal:
    part: str
    section: str | None
    assignment: str
    message: str

    @property
    def key(self) -> str:
        match = _LEADING_KEY.match(self.assignment)
        return match.group() if match else ""


@attrs.frozen(kw_only=True)
class Example:
    part: str
    text: str


@attrs.frozen(kw_only=True)
class Doc:
    rows: tuple[Row, ...]
    refusals: tuple[Refusal, ...]
    examples: tuple[Example, ...]
    console: tuple[str, ...]  # ```console blocks of the agent part


def read_doc(text: str) -> Doc:
    """The tables, refusal bullets and examples of the page, with where each stands."""
    rows: list[Row] = []
    refusals: list[Refusal] = []
    examples: list[Example] = []
    console: list[str] = []
    part, section = "engine", None
    fence: str | None = None
    block: list[str] = []
    for line in text.splitlines():
        if fence is not None:
            if line.startswith("```"):
                if fence == "toml":
                    examples.append(Example(part=part, text="\n".join(block)))
                elif fence == "console" and part == "agent":
                    console.append("\n".join(block))
                fence = None
            else:
                block.append(line)
            continue
        if line.startswith("```"):
            fence, block = line[3:].strip(), []
        elif line.startswith("## "):
            if "`agent.toml`" in line:
                part = "agent"
            section = None
        elif line.startswith("### "):
            match = _SECTION.match(line)
            if part == "engine":
                section = match.group(1) if match else None
            elif "General keys" in line:
                section = "general"
            elif "XMPP keys" in line:
                section = "xmpp"
            else:
                section = None
        elif line.startswith("| `"):
            cells = tuple(c.strip() for c in line.strip().strip("|").split(" | "))
            rows.append(Row(part=part, section=section, cells=cells))
        elif match := _REFUSAL.match(line):
            refusals.append(
                Refusal(
                    part=part,
                    section=section,
                    assignment=match.group("assignment"),
                    message=match.group("message"),
                )
            )
    return Doc(
        rows=tuple(rows),
        refusals=tuple(refusals),
        examples=tuple(examples),
        console=tuple(console),
    )


DOC = read_doc(DOC_PATH.read_text(encoding="utf-8"))


def engine_sections() -> dict[str, set[str]]:
    """Every ``wfe.toml`` section and its keys, from the attrs models the parser builds.

    cattrs refuses a key that is not a field of its section's class; ``[approval]`` is parsed
    by hand, refusing any key but ``ApprovalSection``'s fields.
    """
    sections: dict[str, set[str]] = {}
    for field in attrs.fields(Config):
        if field.name != "root":
            model: Any = type(field.default)  # EngineSection, ApiSection, ...
            # AgentsSection.groups holds the [agents.<name>] tables, a section of their own
            sections[field.name] = {f.name for f in attrs.fields(model)} - {"groups"}
    sections[GROUP] = {f.name for f in attrs.fields(AgentGroup)}
    return sections


def doc_keys(part: str, section: str | None) -> list[str]:
    return [row.key for row in DOC.rows if row.part == part and row.section == section]


def agent_parser_groups() -> dict[str, list[argparse.Action]]:
    """The flags of ``wfe agent``: "xmpp" for the XMPP argument group, "general" the rest."""
    parser = agent_config.build_parser()
    groups: dict[str, list[argparse.Action]] = {"general": [], "xmpp": []}
    for group in parser._action_groups:
        name = "xmpp" if (group.title or "").startswith("XMPP") else "general"
        groups[name] += [
            a for a in group._group_actions if a.dest not in (argparse.SUPPRESS, "help", "config")
        ]
    return groups


def agent_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Any:
    """``load_config`` of an ``agent.toml`` holding ``text``, named as the page names it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "agent.toml").write_text(text, encoding="utf-8")
    return agent_config.load_config(["--config", "agent.toml"])


# --- wfe.toml ------------------------------------------------------------------------------


def test_the_page_documents_every_section_the_parser_has() -> None:
    """Each section of ``Config`` has its ``### `[name]` `` table, and there is no other."""
    documented = {row.section for row in DOC.rows if row.part == "engine"}
    assert documented == set(engine_sections())


@pytest.mark.parametrize("section", sorted(engine_sections()))
def test_each_section_lists_exactly_the_keys_the_parser_accepts(section: str) -> None:
    """A section's table names every key of its model, once, and no key the parser refuses."""
    keys = doc_keys("engine", section)
    assert sorted(keys) == sorted(engine_sections()[section])
    assert len(keys) == len(set(keys))


def test_the_parser_refuses_a_key_the_page_does_not_list(tmp_path: Path) -> None:
    """The key sets compared above are what the parser enforces: a key beside them is refused."""
    for section in engine_sections():
        name = header(section).strip("[]")
        with pytest.raises(ConfigError, match=rf"{name}: unknown key\(s\) \(nonesuch\)"):
            parse_config(f"{header(section)}\nnonesuch = 1", root=tmp_path)


ENGINE_ROWS = [row for row in DOC.rows if row.part == "engine"]


@pytest.mark.parametrize("row", ENGINE_ROWS, ids=lambda r: f"{r.section}.{r.key}")
def test_each_documented_default_is_the_parsers(row: Row, tmp_path: Path) -> None:
    """The default column opens with a TOML value; written out, it is what an empty file gets."""
    match = _LITERAL.match(row.cells[2])
    assert match is not None, f"{row.section}.{row.key}: default should start with `value`"
    section = str(row.section)
    written = parse_config(f"{header(section)}\n{row.key} = {match.group(1)}", root=tmp_path)
    default = (
        AgentGroup() if section == GROUP else part_of(parse_config("", root=tmp_path), section)
    )
    assert getattr(part_of(written, section), row.key) == getattr(default, row.key)


ENGINE_REFUSALS = [r for r in DOC.refusals if r.part == "engine"]


@pytest.mark.parametrize("section", sorted(engine_sections()))
def test_every_key_has_a_documented_refusal(section: str) -> None:
    """Each key shows at least one bad value and the error it gets."""
    shown = {r.key for r in ENGINE_REFUSALS if r.section == section}
    assert set(doc_keys("engine", section)) <= shown


@pytest.mark.parametrize("refusal", ENGINE_REFUSALS, ids=lambda r: f"{r.section}:{r.assignment}")
def test_each_documented_error_is_the_parsers(refusal: Refusal, tmp_path: Path) -> None:
    """A quoted bad value is refused with exactly the quoted line (outside a section's part of
    the page, the value is a whole file)."""
    if refusal.section is None:
        text = refusal.assignment + "\n"
    else:
        lines = [header(refusal.section)]
        if refusal.section == "xmpp":
            lines += [f"{k} = {v}" for k, v in ENGINE_XMPP_BASE.items() if k != refusal.key]
            if refusal.key == "enabled":
                lines = lines[:1]
        text = "\n".join([*lines, refusal.assignment])
    with pytest.raises(ConfigError) as error:
        parse_config(text, root=tmp_path)
    assert str(error.value) == refusal.message


ENGINE_EXAMPLES = [e for e in DOC.examples if e.part == "engine"]


@pytest.mark.parametrize("example", ENGINE_EXAMPLES, ids=lambda e: str(ENGINE_EXAMPLES.index(e)))
def test_each_wfe_toml_example_parses(example: Example, tmp_path: Path) -> None:
    """Every TOML example for wfe.toml is a valid configuration."""
    parse_config(example.text, root=tmp_path)


def test_the_examples_cover_one_machine_and_xmpp(tmp_path: Path) -> None:
    """There is an example with local agents only, and one serving XMPP agents."""
    configs = [parse_config(e.text, root=tmp_path) for e in ENGINE_EXAMPLES]
    assert any(c.agents.local > 0 and not c.xmpp.enabled for c in configs)
    assert any(c.xmpp.enabled and c.xmpp.agents for c in configs)


# --- agent.toml ----------------------------------------------------------------------------


def test_the_agent_tables_list_exactly_the_keys_the_file_parser_accepts() -> None:
    """General and XMPP tables together name every key ``agent.toml`` may hold, once; the
    XMPP table holds the flags of the parser's XMPP group."""
    general, xmpp = doc_keys("agent", "general"), doc_keys("agent", "xmpp")
    assert sorted(general + xmpp) == sorted(agent_config._KEYS)
    assert sorted(f.name for f in attrs.fields(agent_config.AgentConfig)) == sorted(
        agent_config._KEYS
    )
    assert sorted(xmpp) == sorted(a.dest for a in agent_parser_groups()["xmpp"])


def test_each_agent_key_names_its_flag() -> None:
    """Every ``wfe agent`` flag appears in the flag column of the key it sets."""
    rows = {row.key: row for row in DOC.rows if row.part == "agent"}
    for actions in agent_parser_groups().values():
        for action in actions:
            flag = max(action.option_strings, key=len)
            assert action.dest in rows, f"{flag} sets {action.dest}, which the page lacks"
            assert f"`{flag}`" in rows[action.dest].cells[1], action.dest


AGENT_ROWS = [row for row in DOC.rows if row.part == "agent"]


@pytest.mark.parametrize("row", AGENT_ROWS, ids=lambda r: r.key)
def test_each_documented_agent_default_is_the_parsers(
    row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A default written as a value is what no setting gets; one written "none" is None."""
    default = getattr(agent_load(tmp_path, monkeypatch, ""), row.key)
    cell = row.cells[3]
    match = _LITERAL.match(cell)
    if match is not None:
        written = agent_load(tmp_path, monkeypatch, f"{row.key} = {match.group(1)}")
        assert getattr(written, row.key) == default
    elif cell.startswith("none"):
        assert default is None
    else:  # computed (host name, CPU count, state directory): described in words
        assert default is not None


AGENT_REFUSALS = [r for r in DOC.refusals if r.part == "agent"]


def test_every_agent_key_has_a_documented_refusal() -> None:
    """Each agent key shows at least one bad value and the error it gets."""
    assert {row.key for row in AGENT_ROWS} <= {r.key for r in AGENT_REFUSALS}


@pytest.mark.parametrize("refusal", AGENT_REFUSALS, ids=lambda r: r.assignment)
def test_each_documented_agent_error_is_the_parsers(
    refusal: Refusal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quoted bad value in ``agent.toml`` is refused with exactly the quoted line (an XMPP
    key together with the other keys an XMPP agent needs)."""
    lines = []
    if refusal.section == "xmpp" and refusal.key != "xmpp":
        lines = [f"{k} = {v}" for k, v in AGENT_XMPP_BASE.items() if k != refusal.key]
    with pytest.raises(AgentConfigError) as error:
        agent_load(tmp_path, monkeypatch, "\n".join([*lines, refusal.assignment]))
    assert str(error.value) == refusal.message


AGENT_EXAMPLES = [e for e in DOC.examples if e.part == "agent"]


@pytest.mark.parametrize("example", AGENT_EXAMPLES, ids=lambda e: str(AGENT_EXAMPLES.index(e)))
def test_each_agent_toml_example_loads(
    example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every TOML example for agent.toml is a configuration ``wfe agent`` starts with."""
    config = agent_load(tmp_path, monkeypatch, example.text)
    assert config.socket is not None or config.xmpp


def test_the_command_line_example_says_what_the_xmpp_file_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flags shown "on the command line" give the settings of the XMPP agent.toml."""
    assert DOC.console, "the agent part should show a wfe agent command line"
    argv = shlex.split(DOC.console[-1].replace("\\\n", " "))
    assert argv[:3] == ["$", "wfe", "agent"]
    by_flags = agent_config.load_config(argv[3:])
    [by_file] = [
        agent_load(tmp_path, monkeypatch, e.text) for e in AGENT_EXAMPLES if "xmpp = true" in e.text
    ]
    for field in attrs.fields(agent_config.AgentConfig):
        flag_value, file_value = getattr(by_flags, field.name), getattr(by_file, field.name)
        if field.name in ("spool", "workdir"):  # computed from the environment
            continue
        if isinstance(file_value, Path):  # the file's are relative to it, the flags' absolute
            assert isinstance(flag_value, Path) and flag_value.name == file_value.name
        else:
            assert flag_value == file_value, field.name


def test_the_init_template_points_here() -> None:
    """What ``wfe init`` writes names this page, and the page exists."""
    from wfe.engine.config import DEFAULT_TOML

    assert "docs/configuration.md" in DEFAULT_TOML
    assert DOC.rows and DOC.refusals and DOC.examples
