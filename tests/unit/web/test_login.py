"""safe_next: the only targets a sign-in may continue to are paths on this server."""

from __future__ import annotations

import pytest

from idp.web.login import safe_next


@pytest.mark.parametrize(
    "target",
    [
        "/account",
        "/account/passkeys",
        "/authorize?response_type=code&client_id=abc&redirect_uri=https%3A%2F%2Frp.example.kr%2Fcb",
        "/login/totp?kind=recovery",
    ],
)
def test_paths_on_this_server_are_kept(target: str) -> None:
    assert safe_next(target) == target


@pytest.mark.parametrize(
    "target",
    [
        None,
        "",
        "account",
        "https://evil.example/phish",
        "//evil.example/phish",
        "/\\evil.example/phish",
        "\\\\evil.example",
        # Browsers drop tabs and newlines anywhere in a URL, so these become //evil.example/phish.
        "/\t/evil.example/phish",
        "/\n/evil.example/phish",
        "/\r/evil.example/phish",
        "/\r\n/evil.example",
        "\t//evil.example",
        # Leading spaces and C0 controls are stripped by URL parsers, the rest must not reach a header.
        " //evil.example",
        "/\x00/evil.example",
        "/\x0b/evil.example",
        "/\x7f/evil.example",
        "/account\nSet-Cookie: x=1",
        "javascript:alert(1)",
        "/ /evil.example",
        "/\u3000/evil.example",
        "/" + "a" * 9000,
    ],
)
def test_anything_else_is_refused(target: str | None) -> None:
    assert safe_next(target) is None
