"""XMPP settings of the engine ([xmpp] in wfe.toml) and of the agent (--xmpp ...): no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from wfe.agents.config import XMPP_HEARTBEAT
from wfe.agents.config import load_config as load_agent_config
from wfe.agents.errors import ConfigError as AgentConfigError
from wfe.agents.main import main as agent_main
from wfe.agents.xmpp_connector import XmppConnector, xmpp_connector
from wfe.engine.config import parse_config
from wfe.engine.errors import ConfigError
from wfe.engine.transports.xmpp_link import ENGINE_RESOURCE, xmpp_settings
from wfe.protocols.xmpp import is_loopback

ENGINE = '[xmpp]\nenabled = true\njid = "engine@wfe.example.org"\n'


def test_xmpp_is_off_by_default() -> None:
    """Without [xmpp] the engine serves no XMPP agents, and nothing about XMPP is checked."""
    config = parse_config("", root=Path("/w"))
    assert config.xmpp.enabled is False and config.xmpp.tls == "starttls"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[xmpp]\nenabled = true\njid = "engine"\n',
            "xmpp.jid must be a bare JID like engine@wfe.example.org",
        ),
        (ENGINE + 'tls = "none"\n', 'xmpp.tls must be "starttls" or "plain", not \'none\''),
        (
            ENGINE + 'tls = "plain"\n',
            "xmpp.tls = \"plain\" is allowed only with a loopback host, not 'wfe.example.org'",
        ),
        (
            ENGINE + 'tls = "plain"\nhost = "10.0.0.5"\n',
            "allowed only with a loopback host, not '10.0.0.5'",
        ),
        (ENGINE + 'agents = ["node17"]\n', "xmpp.agents: 'node17' is not a bare JID"),
        (ENGINE + "max_stanza = 1000\n", "xmpp.max_stanza must be at least 16384 bytes"),
        (ENGINE + "port = 0\n", "xmpp.port must be between 1 and 65535"),
        ('[xmpp]\nenabled = "yes"\n', "xmpp.enabled: expected true or false"),
        (ENGINE + "secure = true\n", "xmpp: unknown key(s) (secure)"),
    ],
)
def test_bad_engine_xmpp_settings_are_one_line_errors(toml: str, message: str) -> None:
    """Each bad [xmpp] setting is refused with one line naming it."""
    with pytest.raises(ConfigError) as caught:
        parse_config(toml, root=Path("/w"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_plaintext_is_accepted_on_loopback(tmp_path: Path) -> None:
    """tls = "plain" is fine with a loopback host; the settings read the password file."""
    config = parse_config(
        ENGINE + 'tls = "plain"\nhost = "127.0.0.1"\nport = 5299\n', root=tmp_path
    )
    (tmp_path / "xmpp.password").write_text("s3cret\n")
    (tmp_path / "xmpp.password").chmod(0o600)
    settings = xmpp_settings(config)
    assert (settings.jid, settings.password, settings.host, settings.port) == (
        "engine@wfe.example.org",
        "s3cret",
        "127.0.0.1",
        5299,
    )
    assert settings.resource == ENGINE_RESOURCE and settings.tls == "plain"


def test_the_host_defaults_to_the_jid_domain(tmp_path: Path) -> None:
    """Without xmpp.host the engine connects to its JID's domain."""
    (tmp_path / "xmpp.password").write_text("pw")
    assert xmpp_settings(parse_config(ENGINE, root=tmp_path)).host == "wfe.example.org"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "xmpp.password_file: {root}/xmpp.password: no such file"),
        ({"xmpp.password": "\n"}, "the first line (the password) is empty"),
        ({"xmpp.password": "pw"}, "xmpp.ca_file: {root}/ca.pem: no such file"),
    ],
)
def test_unusable_password_or_ca_files_are_config_errors(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    """A missing or empty password file, or a missing CA file, is one line naming the file."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = parse_config(ENGINE + 'ca_file = "ca.pem"\n', root=tmp_path)
    with pytest.raises(
        ConfigError, match=message.format(root=tmp_path).replace("(", r"\(").replace(")", r"\)")
    ):
        xmpp_settings(config)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("wfe.localhost", True),
        ("10.0.0.1", False),
        ("example.org", False),
        ("localhost.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    """Loopback means localhost names and loopback addresses, decided without DNS."""
    assert is_loopback(host) is loopback


def agent_args(tmp_path: Path, *more: str) -> list[str]:
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "engine.pub").write_text("not read by load_config")
    return [
        "--xmpp",
        "--jid",
        "Node17@WFE.example.org",
        "--password-file",
        str(tmp_path / "pw"),
        "--controller",
        "engine@wfe.example.org",
        "--trusted-key",
        str(tmp_path / "engine.pub"),
        "--spool",
        str(tmp_path / "spool"),
        *more,
    ]


def test_an_xmpp_agent_is_named_by_its_jid_and_heartbeats_often(tmp_path: Path) -> None:
    """In XMPP mode the agent's name defaults to its JID (lower case) and its heartbeat to 2 s."""
    config = load_agent_config(agent_args(tmp_path))
    assert config.name == config.jid == "node17@wfe.example.org"
    assert config.heartbeat == XMPP_HEARTBEAT
    assert config.controllers == ("engine@wfe.example.org",) and config.tls == "starttls"
    connector = xmpp_connector(config)
    assert isinstance(connector, XmppConnector)
    assert connector.settings.host == "wfe.example.org" and connector.settings.password == "pw"
    assert connector.max_dispatch_age == 300.0


def test_agent_toml_takes_the_xmpp_keys(tmp_path: Path) -> None:
    """agent.toml accepts the XMPP settings with the flags' names."""
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "agent.toml").write_text(
        "xmpp = true\n"
        'jid = "node1@wfe.example.org"\n'
        'password_file = "pw"\n'
        'server = "127.0.0.1"\n'
        "port = 5300\n"
        'controllers = ["engine@wfe.example.org"]\n'
        'tls = "plain"\n'
        'trusted_key = "engine.pub"\n'
        "max_dispatch_age = 0\n"
    )
    config = load_agent_config(["--config", str(tmp_path / "agent.toml")])
    assert (config.server, config.port, config.tls, config.max_dispatch_age) == (
        "127.0.0.1",
        5300,
        "plain",
        0.0,
    )
    assert config.password_file == tmp_path / "pw"
    assert xmpp_connector(config).max_dispatch_age is None


@pytest.mark.parametrize(
    ("more", "drop", "message"),
    [
        ((), "--trusted-key", "xmpp: --trusted-key is required"),
        ((), "--controller", "xmpp: give at least one --controller JID"),
        ((), "--password-file", "xmpp: --password-file is required"),
        (
            ("--tls", "plain"),
            None,
            "tls plain is allowed only with a loopback server, not 'wfe.example.org'",
        ),
        (
            ("--socket", "/tmp/s"),
            None,
            "give either --socket (local transport) or --xmpp, not both",
        ),
        (("--controller", "engine"), None, "controller 'engine' is not a bare JID"),
        (("--max-dispatch-age", "-1"), None, "max_dispatch_age must not be negative"),
    ],
)
def test_bad_agent_xmpp_settings_are_refused(
    tmp_path: Path, more: tuple[str, ...], drop: str | None, message: str
) -> None:
    """Each missing or unsafe XMPP option is a ConfigError naming it."""
    args = agent_args(tmp_path, *more)
    if drop is not None:
        at = args.index(drop)
        del args[at : at + 2]
    with pytest.raises(AgentConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_agent_config(args)


def test_the_agent_command_prints_a_config_error_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`wfe agent --xmpp` with an unsafe setting exits 2 and prints one line."""
    assert agent_main(agent_args(tmp_path, "--tls", "plain")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wfe agent: xmpp: tls plain is allowed only")


def test_a_missing_password_file_is_reported_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent reads its password file before it starts: a missing one is one line, exit 2."""
    args = agent_args(tmp_path)
    (tmp_path / "pw").unlink()
    assert agent_main(args) == 2
    assert (
        capsys.readouterr().err
        == f"wfe agent: password file: {tmp_path / 'pw'}: no such file (write the XMPP password there, mode 0600)\n"
    )
