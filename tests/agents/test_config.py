"""The agent's settings: bad values are one line naming where they came from."""

from __future__ import annotations

import math
import os
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

from wfe.agents.config import AgentConfig, load_config
from wfe.agents.errors import ConfigError

#: What an XMPP agent needs, as flags and as the file's lines.
XMPP_FLAGS = [
    "--xmpp",
    "--jid",
    "node17@wfe.example.org",
    "--password-file",
    "pw",
    "--controller",
    "engine@wfe.example.org",
    "--trusted-key",
    "engine.pub",
]
XMPP_LINES = [
    "xmpp = true",
    'jid = "node17@wfe.example.org"',
    'password_file = "pw"',
    'controllers = ["engine@wfe.example.org"]',
    'trusted_key = "engine.pub"',
]


def from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *lines: str) -> AgentConfig:
    """``load_config`` of ``agent.toml`` (given by that relative name) holding ``lines``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent.toml").write_text("\n".join(lines) + "\n")
    return load_config(["--config", "agent.toml"])


def refusal(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(ConfigError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("key", ["heartbeat", "give_up_after", "max_dispatch_age"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_of_seconds_must_be_finite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    """nan and ±inf are refused for every number of seconds, from the file (named, with the
    key) and from a flag alike."""
    message = refusal(from_file, tmp_path, monkeypatch, f"{key} = {value}", 'socket = "s"')
    assert message == f"agent.toml: {key} must be a finite number, not {float(value)}"
    flag = "--" + key.replace("_", "-")
    message = refusal(load_config, ["--socket", "s", f"{flag}={value}"])
    assert message == f"{key} must be a finite number, not {float(value)}"


@given(st.floats())
def test_any_heartbeat_in_the_file_is_taken_or_refused_naming_the_file(
    tmp_path_factory: pytest.TempPathFactory, seconds: float
) -> None:
    """A heartbeat the file gives is used if it is a positive finite number; otherwise the
    error names the file and the key."""
    directory = tmp_path_factory.mktemp("heartbeat")
    path = directory / "agent.toml"
    path.write_text(f'socket = "s"\nheartbeat = {seconds!r}\n')
    try:
        config = load_config(["--config", str(path)])
    except ConfigError as exc:
        assert not (math.isfinite(seconds) and seconds > 0)
        assert str(exc).startswith(f"{path}: heartbeat must be ")
    else:
        assert math.isfinite(seconds) and seconds > 0 and config.heartbeat == seconds


@pytest.mark.parametrize(
    ("line", "flags", "in_file", "as_flag"),
    [
        (
            "slots = 0",
            ["--slots", "0"],
            "agent.toml: slots must be at least 1, not 0",
            "slots must be at least 1, not 0",
        ),
        (
            'name = "a b"',
            ["--name", "a b"],
            "agent.toml: name 'a b' must be non-empty and contain no spaces",
            "agent name 'a b' must be non-empty and contain no spaces",
        ),
        (
            'log_level = "loud"',
            ["--log-level", "loud"],
            "agent.toml: log_level 'loud' is not one of DEBUG, INFO, WARNING, ERROR",
            "log level 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR",
        ),
        (
            "memory = -5",
            ["--memory", "-5"],
            "agent.toml: memory must be a positive number of bytes, not -5",
            "memory must be a positive number of bytes, not -5",
        ),
    ],
)
def test_an_error_names_the_file_only_when_the_value_came_from_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    line: str,
    flags: list[str],
    in_file: str,
    as_flag: str,
) -> None:
    """The same bad value is named after the file when the file gave it, and without the file
    when a flag gave it, even with a config file in use."""
    assert refusal(from_file, tmp_path, monkeypatch, line, 'socket = "s"') == in_file
    assert refusal(load_config, ["--config", "agent.toml", *flags]) == as_flag


def test_a_flag_that_overrides_a_bad_file_value_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value the file gives but a flag replaces is never checked or named."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent.toml").write_text('socket = "s"\nslots = 0\nheartbeat = nan\n')
    config = load_config(["--config", "agent.toml", "--slots", "3", "--heartbeat", "1.5"])
    assert (config.slots, config.heartbeat) == (3, 1.5)


@pytest.mark.parametrize(
    ("drop", "in_file", "as_flag"),
    [
        (
            "jid",
            "agent.toml: jid is required (the agent's bare JID, like agent-1@wfe.example.org)",
            "xmpp: --jid is required (the agent's bare JID, like agent-1@wfe.example.org)",
        ),
        (
            "password_file",
            "agent.toml: password_file is required (a file holding the JID's password)",
            "xmpp: --password-file is required (a file holding the JID's password)",
        ),
        (
            "controllers",
            "agent.toml: controllers must list at least one controller JID to obey",
            "xmpp: give at least one --controller JID (controllers = [...]) to obey",
        ),
        (
            "trusted_key",
            "agent.toml: trusted_key is required (the engine's public key, engine.pub)",
            "xmpp: --trusted-key is required (the engine's public key, engine.pub)",
        ),
    ],
)
def test_a_missing_xmpp_setting_is_named_as_the_mode_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: str, in_file: str, as_flag: str
) -> None:
    """With ``xmpp = true`` in the file a missing setting is named by its key, after the file;
    with ``--xmpp`` by its flag."""
    lines = [line for line in XMPP_LINES if not line.startswith(drop)]
    assert refusal(from_file, tmp_path, monkeypatch, *lines) == in_file
    flag = "--" + drop.replace("_", "-").removesuffix("s")
    at = XMPP_FLAGS.index(flag)
    assert refusal(load_config, [*XMPP_FLAGS[:at], *XMPP_FLAGS[at + 2 :]]) == as_flag


@pytest.mark.parametrize(
    ("file_lines", "flags", "message"),
    [
        (
            [*XMPP_LINES, 'socket = "s"'],
            [],
            "agent.toml: give either socket (local transport) or xmpp = true, not both",
        ),
        (
            ['socket = "s"'],
            XMPP_FLAGS,
            "agent.toml: give either socket (local transport) or --xmpp, not both",
        ),
        (
            XMPP_LINES,
            ["--socket", "s"],
            "agent.toml: give either --socket (local transport) or xmpp = true, not both",
        ),
        (
            [],
            [*XMPP_FLAGS, "--socket", "s"],
            "give either --socket (local transport) or --xmpp, not both",
        ),
    ],
)
def test_both_transports_are_named_as_each_was_given(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    file_lines: list[str],
    flags: list[str],
    message: str,
) -> None:
    """socket and xmpp together: each is named as it was given, after the file if one was."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent.toml").write_text("\n".join(file_lines) + "\n")
    assert refusal(load_config, ["--config", "agent.toml", *flags]) == message


def test_the_slots_default_is_the_cpu_count_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AgentConfig's own default for slots is what load_config gives without a setting."""
    direct = AgentConfig(name="n", spool=tmp_path / "spool", workdir=tmp_path / "work")
    loaded = from_file(tmp_path, monkeypatch, 'socket = "s"')
    assert direct.slots == loaded.slots == (os.cpu_count() or 1)


def test_reactors_come_from_the_file_relative_to_it_or_from_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[reactors]`` paths are taken relative to agent.toml, ``--reactor TOPIC=SCRIPT``
    relative to the current directory; the namespace comes with them."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "stf.sh").write_text("true\n")
    config = from_file(
        tmp_path,
        monkeypatch,
        'socket = "s"',
        'namespace = "daq"',
        "[reactors]",
        'stf_gen = "scripts/stf.sh"',
    )
    assert config.namespace == "daq"
    assert config.reactors == {"stf_gen": tmp_path / "scripts" / "stf.sh"}
    flags = load_config(["--socket", "s", "--reactor", "end_run=scripts/stf.sh"])
    assert flags.reactors == {"end_run": tmp_path / "scripts" / "stf.sh"}


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--reactor", "stf_gen"], "--reactor 'stf_gen': expected TOPIC=SCRIPT"),
        (
            ["--reactor", "9lives=stf.sh"],
            "--reactor: topic '9lives': letters, digits, '_', '.', '-', starting with a letter"
            " (at most 64)",
        ),
        (
            ["--reactor", "stf_gen=missing.sh"],
            "--reactor stf_gen: {cwd}/missing.sh is not a readable file",
        ),
    ],
)
def test_a_bad_reactor_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], problem: str
) -> None:
    """A reactor without a script, with a bad topic, or naming no file is refused in one line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stf.sh").write_text("true\n")
    assert refusal(load_config, ["--socket", "s", *flags]) == problem.format(cwd=tmp_path)
