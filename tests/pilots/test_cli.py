"""``wfe pilots``'s command line (engine/cli/pilots.py): what it refuses before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from wfe.engine.cli.main import main


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    assert main(["init", str(tmp_path), "--port", "0", "--local", "0"]) == 0
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    (accounts / "pilot-1@wfe.localhost").write_text("secret\n")
    return tmp_path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "--accounts DIR is required: one file per pilot XMPP account"),
        (["--accounts", "{empty}"], "expected a directory of files named by each pilot"),
        (["--accounts", "{accounts}", "--walltime", "60"], "walltime must be at least 120"),
        (["--accounts", "{accounts}", "--max", "-1"], "max pilots must be 0 or more, not -1"),
        (["--accounts", "{accounts}", "--interval", "0"], "--interval must be positive, not 0"),
        (["--accounts", "{accounts}"], "no controller JID: give --controller or set [xmpp] jid"),
    ],
)
def test_bad_factory_settings_stop_it_with_one_line(
    workspace: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A factory set up wrongly exits 1 with one line naming the setting, submitting nothing."""
    (workspace / "empty").mkdir()
    filled = [o.format(accounts=workspace / "accounts", empty=workspace / "empty") for o in options]
    code = main(["pilots", "--config", str(workspace / "wfe.toml"), *filled])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("wfe: error: ") and message in err, err
    assert err.count("\n") == 1
    assert not (workspace / "pilots").exists()
