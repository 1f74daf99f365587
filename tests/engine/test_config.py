"""wfe.toml: defaults that work, and one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from wfe.engine.config import DEFAULT_TOML, ConfigError, load_config, parse_config


def test_defaults_work_on_one_machine(tmp_path: Path) -> None:
    """An empty file is a valid configuration bound to loopback."""
    config = parse_config("", root=tmp_path)
    assert config.api.host == "127.0.0.1"
    assert config.agents.local >= 1
    assert config.repository_path == (tmp_path / "wfe.db").resolve()


def test_the_init_template_parses(tmp_path: Path) -> None:
    """What `wfe init` writes is a valid configuration."""
    config = parse_config(DEFAULT_TOML.format(port=9000, local=3, slots=4), root=tmp_path)
    assert (config.api.port, config.agents.local, config.agents.slots) == (9000, 3, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[agents]\nslots = "two"', "wfe.toml: agents.slots: expected an integer"),
        ('[engine]\nrscripts = "scripts"', "wfe.toml: engine.rscripts: expected an array"),
        ('[xmpp]\nagents = "a@example.org"', "wfe.toml: xmpp.agents: expected an array"),
        ('engine = "wfe.db"', "wfe.toml: engine: expected a table"),
        (
            "[engine]\nblocking_threshold = inf",
            "engine.blocking_threshold: expected a finite number",
        ),
        ("[engine]\nblocking_threshold = 0.0", "engine.blocking_threshold must be positive"),
        ("[api]\nmax_message = 0", "api.max_message must be at least 1024 bytes"),
        ("[agents]\nmax_redispatch = -1", "agents.max_redispatch must be 0 or more"),
        ("[agents]\nreconcile_grace = -1.0", "agents.reconcile_grace must be 0 or more"),
        ("[jobs]\nbackoff = -1.0", "jobs.backoff must be 0 or more"),
        ("[jobs]\noverall_timeout = -5.0", "jobs.overall_timeout must be 0 (none) or more"),
        ("[jobs]\nwait_agent_timeout = -5.0", "jobs.wait_agent_timeout must be 0"),
        ('[xmpp]\ntls = "none"', 'xmpp.tls must be "starttls" or "plain"'),
        ('[xmpp]\njid = "not a jid"', "xmpp.jid must be a bare JID"),
        ("[agentz]\n", "wfe.toml: top level: unknown key(s) (agentz)"),
        ("[agents]\nslotz = 1", "wfe.toml: agents: unknown key(s) (slotz)"),
        ("[agents]\nslots = 0", "wfe.toml: agents.slots must be at least 1"),
        (
            "[agents]\nheartbeat = 5.0\nheartbeat_deadline = 1.0",
            "heartbeat_deadline must be longer",
        ),
        ("[engine]\nactions = [1]", "wfe.toml: engine.actions[0]: expected a string"),
        ("[api]\nport = 70000", "api.port must be between 0 and 65535"),
        ("[api\n", "wfe.toml: "),
    ],
)
def test_bad_files_get_one_line(tmp_path: Path, text: str, message: str) -> None:
    """Each problem is refused with one line that names it."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, root=tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_toml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    """A syntax error says where."""
    with pytest.raises(ConfigError, match="line 2"):
        parse_config("[api]\nport = = 1\n", root=tmp_path)


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wfe init"):
        load_config(tmp_path / "wfe.toml")
