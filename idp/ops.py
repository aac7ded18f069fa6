"""Operations endpoints and hooks: liveness, readiness, and one log line per request."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, g, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from idp.keyring import KeyringError
from idp.runtime import current

bp = Blueprint("ops", __name__)
PROBES = frozenset({"/healthz", "/readyz"})
log = logging.getLogger("idp.request")


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers; nothing else is checked, so a load balancer never restarts it for a slow database."""
    return _no_store(jsonify(status="ok"))


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready to serve: the database answers and the keyring is loaded; 503 with a reason otherwise."""
    keyring = current().keyring
    try:
        with current().engine.connect() as connection:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        origin = getattr(exc, "orig", None) or exc
        reason = f"database unreachable: {type(origin).__name__}"
        return _no_store(jsonify(status="unavailable", reason=reason)), 503
    expected = current().schema_revision
    if revision != expected:
        reason = f"database at revision {revision}, this release needs {expected}: run `idp init`"
        return _no_store(jsonify(status="unavailable", reason=reason)), 503
    try:
        keyring.check()
    except KeyringError as exc:
        return _no_store(jsonify(status="unavailable", reason=f"keyring: {exc}")), 503
    return _no_store(jsonify(status="ok")), 200


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def _start_timer() -> None:
    g.request_started = time.perf_counter()


def _log_request(response: Response) -> Response:
    # The path only: query strings carry hints, states and codes that do not belong in logs.
    started = g.get("request_started")
    # Probes every few seconds would drown the log; they show at DEBUG.
    level = logging.DEBUG if request.path in PROBES else logging.INFO
    if not log.isEnabledFor(level):
        return response
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
    log.log(
        level,
        "%s %s",
        request.method,
        request.path,
        extra={"status": response.status_code, "duration_ms": duration_ms, "client_ip": request.remote_addr},
    )
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    if app.config.get("IDP_REQUEST_LOG", True):
        app.before_request(_start_timer)
        app.after_request(_log_request)
