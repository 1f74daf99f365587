"""Roles and token names."""

from __future__ import annotations

import pytest

from wfe.engine.console.tokens import Role, TokenError, check_name, digest


def test_roles_are_ordered_and_names_checked() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.parse("Operator") is Role.OPERATOR
    with pytest.raises(TokenError, match="unknown role 'root': expected viewer, operator or admin"):
        Role.parse("root")
    assert check_name("ci.bot@site-1") == "ci.bot@site-1"
    for bad in ("", "-x", "a b", "x" * 65, "bootstrap"):
        with pytest.raises(TokenError):
            check_name(bad)
    assert digest("s") == "043a718774c572bd8a25adbeb1bfcd5c0256ae11cecf9f9c3f925d0e52beaf89"
