"""The protocol's error model: Authlib's OAuth2Error classes, the few OpenID and RFC 6750 cases Authlib lacks, and
the one place an error becomes a JSON answer (pages for residents are rendered by idp.web)."""

from __future__ import annotations

import json
import logging
import re

from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6750 import InvalidTokenError
from flask import Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

BEARER_REALM = "idp"
# Errors that mean a backing service (the database, Redis for limits) cannot be reached right now: not a bug, so
# 503 with Retry-After and one log line; the pool reconnects by itself once it is back.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    SQLAlchemyTimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
)
UNAVAILABLE_RETRY_AFTER = 5


def log_unavailable(log: logging.Logger, error: Exception, method: str, path: str) -> None:
    """One warning line for a backing service out of reach: the cause's first line only, so the statement and its
    parameters (codes, tokens) stay out of the log."""
    cause = getattr(error, "orig", None) or error
    summary = (str(cause).splitlines() or [""])[0][:200]
    log.warning("database unavailable on %s %s: %s: %s", method, path, type(cause).__name__, summary)


# RFC 6749 §5.2: error_description is printable ASCII without `"` and `\` (Authlib refuses anything else).
UNFIT_FOR_DESCRIPTION = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def error_description(text: str) -> str:
    """`text` fit for error_description: characters RFC 6749 §5.2 bars (a name or URI of the client's) become ?."""
    return UNFIT_FOR_DESCRIPTION.sub("?", text)


class UnmetAuthenticationRequirementsError(OAuth2Error):
    """An essential `acr` that cannot be met: OpenID Connect Core §5.5.1.1 (the error code of the OpenID Connect
    Core errata set, https://openid.net/specs/openid-connect-core-1_0.html#AuthError)."""

    error = "unmet_authentication_requirements"


class BearerTokenMissingError(InvalidTokenError):
    """No access token at all: RFC 6750 §3.1 says the challenge then carries no error code."""

    error = "invalid_request"
    description = "A bearer access token is required."

    def __init__(self) -> None:
        super().__init__(realm=BEARER_REALM)

    def get_headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", f'Bearer realm="{BEARER_REALM}"')]


class BearerTokenInvalidError(InvalidTokenError):
    """The access token is malformed, forged, expired or revoked (RFC 6750 §3.1 `invalid_token`, 401)."""

    def __init__(self, description: str) -> None:
        super().__init__(description, realm=BEARER_REALM)

    def get_headers(self) -> list[tuple[str, str]]:
        # The description stays in the body: a challenge of the code alone is what clients parse (RFC 6750 §3).
        return [("WWW-Authenticate", f'Bearer realm="{BEARER_REALM}", error="{self.error}"')]


class InsufficientScopeError(OAuth2Error):
    """The access token lacks a scope the resource needs (RFC 6750 §3.1 `insufficient_scope`, 403)."""

    error = "insufficient_scope"
    status_code = 403

    def get_headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", f'Bearer realm="{BEARER_REALM}", error="{self.error}"')]


class TemporarilyUnavailableError(OAuth2Error):
    """The IdP cannot answer now (no signing keys, no database) and says when to try again (RFC 6749 §4.1.2.1)."""

    error = "temporarily_unavailable"
    status_code = 503

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after

    def get_headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class MethodNotOfferedError(OAuth2Error):
    """An RFC 7592 method this provider does not offer (updates): 405 with the methods it does."""

    error = "invalid_request"
    status_code = 405

    def __init__(self, description: str, *, allow: str) -> None:
        super().__init__(description)
        self.allow = allow

    def get_headers(self) -> list[tuple[str, str]]:
        return [("Allow", self.allow)]


def json_error(error: OAuth2Error) -> Response:
    """The error as API clients get it: `{"error", "error_description"?}`, its status and headers, never cached."""
    body: dict[str, str] = {"error": str(error.error)}
    if error.description:
        body["error_description"] = str(error.description)
    response = Response(json.dumps(body), status=error.status_code or 400, mimetype="application/json")
    for name, value in error.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def json_response(body: object, status: int = 200) -> Response:
    """A protocol answer as JSON, never cached (it carries tokens or a resident's claims)."""
    response = Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response
