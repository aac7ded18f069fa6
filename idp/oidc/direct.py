"""The endpoints services call on every sign-in and API call (token, UserInfo, introspection), answered by a WSGI
layer in front of Flask: the same view functions, in an application context, without the request dispatch around
them (URL routing, the flow cookie, page hooks), which cost about as much as the work itself on these paths."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import OAuth2Error
from flask import Flask
from werkzeug import Request, Response
from werkzeug.exceptions import HTTPException

from idp.keyring import KeyringError
from idp.oidc import views
from idp.oidc.errors import (
    UNAVAILABLE_ERRORS,
    UNAVAILABLE_RETRY_AFTER,
    TemporarilyUnavailableError,
    json_error,
    log_unavailable,
)
from idp.runtime import db_session, reading_only

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

log = logging.getLogger("idp.request")
errors = logging.getLogger("idp")

Answer = Callable[[Request], Response]

# (method, path) → the view function that answers it; anything else (CORS preflights, HEAD) goes on to Flask.
# Requests of these paths only read (UserInfo; introspection, whose client assertions are recorded on a connection of
# their own): their database session needs no transaction (idp.runtime.reading_only).
READ_ONLY_PATHS = frozenset({"/userinfo", "/introspect"})
ENDPOINTS: dict[tuple[str, str], Answer] = {
    ("POST", "/token"): views.token_answer,
    ("GET", "/userinfo"): views.userinfo_answer,
    ("POST", "/userinfo"): views.userinfo_answer,
    ("POST", "/introspect"): views.introspection_answer,
}
# Browser-based public clients (PKCE) call these from their own origin; no cookies are involved.
CORS_PATHS = frozenset({"/token", "/userinfo"})
# What every answer of the app carries (idp.app's after-request hook; these answers never pass through it).
COMMON_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


class DirectEndpoints:
    """WSGI: the protocol's hot endpoints answered here, in an application context of `app` (so the runtime, the
    request's database session and clock work as in a view); any other request passed to the wrapped app."""

    def __init__(self, app: Flask, wrapped: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.wrapped = wrapped
        self.max_content_length = app.config.get("MAX_CONTENT_LENGTH")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        answer = ENDPOINTS.get((environ.get("REQUEST_METHOD", ""), path))
        if answer is None:
            return self.wrapped(environ, start_response)
        started = time.perf_counter()
        received = Request(environ)
        received.max_content_length = self.max_content_length
        with self.app.app_context():
            if path in READ_ONLY_PATHS:
                reading_only()
            response = self._answer(answer, received)
        headers = response.headers
        for name, value in COMMON_HEADERS:
            headers.setdefault(name, value)
        if path in CORS_PATHS:
            headers["Access-Control-Allow-Origin"] = "*"
        if log.isEnabledFor(logging.INFO):
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            extra = {"status": response.status_code, "duration_ms": duration_ms, "client_ip": received.remote_addr}
            log.info("%s %s", received.method, path, extra=extra)
        return response(environ, start_response)

    def _answer(self, answer: Answer, received: Request) -> Response:
        """The view's answer, or the JSON error the app's error handlers would give (never a traceback)."""
        try:
            return answer(received)
        except HTTPException as error:  # a body over the size limit, a form that cannot be read
            return views.json_http_error(error)
        except KeyringError:
            return json_error(TemporarilyUnavailableError(views.KEYRING_RETRY_AFTER))
        except UNAVAILABLE_ERRORS as error:
            log_unavailable(errors, error, received.method, received.path)
            with contextlib.suppress(Exception):
                db_session().rollback()
            return json_error(TemporarilyUnavailableError(UNAVAILABLE_RETRY_AFTER))
        except OAuth2Error as error:
            return json_error(error)
        except Exception:
            errors.exception("unhandled error on %s %s", received.method, received.path)
            with contextlib.suppress(Exception):
                db_session().rollback()
            return json_error(OAuth2Error(error="server_error", status_code=500))
