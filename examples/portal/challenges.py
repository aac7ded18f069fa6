"""Reading an API's `WWW-Authenticate: Bearer …` answer (RFC 6750 §3, RFC 9470 §3), so the front end knows
whether to sign the resident in again, and with which `acr_values` and `max_age`."""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 9110 §11.2: auth-param = token BWS "=" BWS ( token / quoted-string ), separated by commas.
_HTTP_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105  (RFC 9110 §5.6.2 token characters, not a secret)
_PARAM = re.compile(rf'\s*({_HTTP_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_HTTP_TOKEN})\s*(?:,|$)')
_ESCAPED = re.compile(r"\\(.)")
MAX_HEADER_LENGTH = 4096  # an answer from our own API; anything longer is not a challenge we act on


@dataclass(frozen=True, slots=True)
class BearerChallenge:
    """What a Bearer challenge asks for; `acr_values` and `max_age` only in RFC 9470 step-up challenges."""

    error: str | None
    error_description: str | None
    acr_values: tuple[str, ...]
    max_age: int | None

    @property
    def wants_step_up(self) -> bool:
        """RFC 9470 §3: the token is valid but the sign-in behind it is too weak or too old."""
        return self.error == "insufficient_user_authentication"


def parse_bearer_challenge(header: str | None) -> BearerChallenge | None:
    """The Bearer challenge in a `WWW-Authenticate` value, or None when there is none or it cannot be read."""
    if not header or len(header) > MAX_HEADER_LENGTH:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None:
            return None
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = _ESCAPED.sub(r"\1", value[1:-1])
        params.setdefault(name, value)
        position = match.end()
    max_age = params.get("max_age", "")
    return BearerChallenge(
        error=params.get("error"),
        error_description=params.get("error_description"),
        acr_values=tuple(params.get("acr_values", "").split()),
        max_age=int(max_age) if max_age.isdigit() and len(max_age) <= 9 else None,
    )
