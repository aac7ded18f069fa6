"""The oidc blueprint: discovery and the JWKS (the protocol endpoints join it in later issues)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from idp.keyring import Keyring
from idp.oidc.discovery import MetadataCache
from idp.settings import Settings

bp = Blueprint("oidc", __name__)


def _keyring() -> Keyring:
    keyring: Keyring = current_app.extensions["idp.keyring"]
    return keyring


@bp.get("/.well-known/openid-configuration")
@bp.get("/.well-known/oauth-authorization-server")
def discovery() -> Response:
    cache: MetadataCache = current_app.extensions["idp.metadata"]
    body = cache.body(_keyring().current())
    return _public_json(body, "application/json", max_age=_settings().jwks_max_age)


@bp.get("/jwks")
def jwks() -> Response:
    keys = _keyring().current()
    if request.if_none_match.contains_weak(keys.etag.strip('"')):
        response = Response(status=304)
        response.set_etag(keys.etag.strip('"'))
        return _cors(_cache(response, _settings().jwks_max_age))
    response = _public_json(keys.jwks_json, "application/jwk-set+json", max_age=_settings().jwks_max_age)
    response.set_etag(keys.etag.strip('"'))
    return response


def _settings() -> Settings:
    settings: Settings = current_app.extensions["idp.settings"]
    return settings


def _public_json(body: bytes, mimetype: str, *, max_age: int) -> Response:
    return _cors(_cache(Response(body, mimetype=mimetype), max_age))


def _cache(response: Response, max_age: int) -> Response:
    # Shorter than the time a `next` key is published before it signs (DESIGN section 5).
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    return response


def _cors(response: Response) -> Response:
    # Browser-based relying services read discovery and keys from another origin (OIDC Discovery §4).
    response.headers["Access-Control-Allow-Origin"] = "*"
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
