"""The oidc blueprint: discovery and the JWKS (the protocol endpoints join it in later issues)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from idp.keyring import KeyringError
from idp.oidc.published import PublishedDocuments

bp = Blueprint("oidc", __name__)


@bp.get("/.well-known/openid-configuration")
@bp.get("/.well-known/oauth-authorization-server")
@bp.get("/jwks")
def published() -> Response:
    """Reached only when the WSGI layer in front of Flask passed the request on (the keyring did not load)."""
    documents: PublishedDocuments = current_app.extensions["idp.published"]
    document = documents.document(request.path)
    response = Response(document.body)
    for name, value in document.headers:
        response.headers[name] = value
    return response


@bp.errorhandler(KeyringError)
def keyring_unavailable(error: KeyringError) -> Response:
    """No keys to publish or sign with: a temporary condition for clients, and a reason on /readyz for admins."""
    response = Response('{"error":"temporarily_unavailable"}', status=503, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Retry-After"] = "5"
    return response


def json_http_error(error: HTTPException) -> Response:
    """An HTTP error as `{"error": …}` for API clients (resident-facing pages get HTML instead)."""
    code = (error.name or "error").lower().replace(" ", "_")
    response = Response(f'{{"error":"{code}"}}', status=error.code or 500, mimetype="application/json")
    for name, value in error.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    return response
