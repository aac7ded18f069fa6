"""The flow cookie's shape: what each member the views read must look like (the login-session cookie belongs to
idp.oidc.interaction)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask, session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

from idp.authn.assurance import AuthEvent
from idp.authn.carrier import CarrierErrorCode
from idp.oidc.interaction import FLOW_MEMBERS as INTERACTION_MEMBERS
from idp.oidc.interaction import is_moment, is_text

# -- the flow cookie ------------------------------------------------------------------------------------------------
# Flask's signed session carries a browser's flow between pages. Only the app writes it, but an older release wrote
# other shapes and a leaked key writes any: each member the views read is checked for the shape they write before
# any view (or Flask-WTF's CSRF check) reads it, and dropped otherwise, as if the flow had ended.


def _record(value: object, **members: Callable[[object], bool]) -> bool:
    """A mapping holding each of `members`, each of its shape (other keys are left alone)."""
    return isinstance(value, dict) and all(name in value and check(value[name]) for name, check in members.items())


def _carrier_flow(value: object) -> bool:
    if not _record(value, txn=is_text, phone=is_text, binding=is_text, expires_at=is_moment):
        return False
    assert isinstance(value, dict)
    return value.get("method") in ("sms", "app") and (value.get("match") is None or is_text(value["match"]))


def _auth_event(value: object) -> bool:
    try:
        AuthEvent.from_json(value)  # type: ignore[arg-type]  # whatever the cookie holds: checked by parsing
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return _record(value, at=is_moment)


def _uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


CARRIER_ERROR_CODES = frozenset(code.value for code in CarrierErrorCode)
FLOW_MEMBERS: dict[str, Callable[[object], bool]] = {
    # Flask-WTF's raw token (hex), compared with hmac.compare_digest, which refuses non-ASCII text.
    "csrf_token": lambda value: isinstance(value, str) and value.isascii(),
    "locale": is_text,
    "next": is_text,
    "webauthn": is_text,  # idp.web.passkeys BINDING
    "welcome": lambda value: isinstance(value, bool),
    "carrier": _carrier_flow,  # idp.web.login FLOW_KEY
    # Why a carrier verification ended (an agency error code, or the resident's "cancelled"), its method, and what
    # the resident typed (Fernet-encrypted; idp.web.login reads it back only within its TTL).
    "carrier_failure": lambda value: isinstance(value, str) and value in CARRIER_ERROR_CODES | {"cancelled"},
    "carrier_method": lambda value: value in ("sms", "app"),
    "carrier_typed": is_text,
    "carrier_retry": lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
    # What the last destructive action on /account did, shown once (idp.web.account report / take_report).
    "account_report": lambda value: _record(
        value, kind=is_text, subject=is_text, count=lambda n: isinstance(n, int) and not isinstance(n, bool)
    ),
    "second_factor": lambda value: _record(value, resident=_uuid, event=_auth_event, expires_at=is_moment),
    # What idp.oidc.interaction keeps here (the authorization requests waiting, a raw CI waiting for consent).
    **INTERACTION_MEMBERS,
}


class FlowJson:
    """The flow cookie's payload as plain JSON: every member is a JSON value (FLOW_MEMBERS), so Flask's tagged JSON,
    which walks every value to tag tuples, bytes and dates, does work for nothing on every request. What it wrote
    for JSON values reads back the same."""

    @staticmethod
    def dumps(value: object) -> str:
        return json.dumps(value, separators=(",", ":"))

    @staticmethod
    def loads(text: str | bytes) -> Any:
        return json.loads(text)


class FlowCookie(SecureCookieSessionInterface):
    """Flask's signed cookie session (the flow cookie), its payload plain JSON (`FlowJson`), with its signing
    serializer built once per key instead of twice per request (to open the cookie and to sign it again)."""

    serializer = FlowJson()  # type: ignore[assignment]  # Flask's TaggedJSONSerializer has the same two methods

    def __init__(self) -> None:
        self._built: tuple[tuple[object, ...], URLSafeTimedSerializer | None] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, *(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        built = self._built
        if built is None or built[0] != keys:
            built = self._built = (keys, super().get_signing_serializer(app))
        return built[1]


def drop_malformed_flow_members() -> None:
    """Before every request: forget members of the flow cookie that are not of the shape the views write."""
    if not session:  # no flow cookie (every protocol request): nothing to look through
        return
    for name, shaped in FLOW_MEMBERS.items():
        if name in session and not shaped(session[name]):
            session.pop(name)
