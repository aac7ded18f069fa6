"""Dynamic client registration (RFC 7591) and its management protocol (RFC 7592), behind initial access
tokens that an admin mints with `idp clients registration-token`; without one, registration is closed."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

from authlib.oauth2.rfc7591 import InvalidClientMetadataError, InvalidRedirectURIError
from sqlalchemy.orm import Session

from idp.audit import SUCCESS, record_event
from idp.models import Client
from idp.oidc.clients import (
    ClientInvalidError,
    ClientRedirectUriInvalidError,
    ClientSpec,
    client_to_json,
    consume_initial_access_token,
    create_client,
    delete_client,
    find_client,
)
from idp.oidc.errors import BearerTokenInvalidError, error_description

MAX_METADATA_FIELDS = 40


def _list(metadata: dict[str, Any], name: str) -> tuple[str, ...]:
    value = metadata.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidClientMetadataError(error_description(f"'{name}' must be a list of strings."))
    return tuple(value)


def _text(metadata: dict[str, Any], name: str) -> str | None:
    value = metadata.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidClientMetadataError(error_description(f"'{name}' must be a string."))
    return value


def spec_from_metadata(metadata: dict[str, Any]) -> ClientSpec:
    """RFC 7591 §2 metadata to a ClientSpec; what a service may not choose (first-party, public subjects,
    restricted scopes) is not read from it."""
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_FIELDS:
        raise InvalidClientMetadataError("The body must be a JSON object of client metadata.")
    response_types = _list(metadata, "response_types") or ("code",)
    if set(response_types) != {"code"}:
        raise InvalidClientMetadataError("Only response_type 'code' is supported.")
    auth_method = _text(metadata, "token_endpoint_auth_method")
    scope = _text(metadata, "scope")
    jwks = metadata.get("jwks")
    if jwks is not None and not isinstance(jwks, dict):
        raise InvalidClientMetadataError("'jwks' must be a JWK Set object.")
    return ClientSpec(
        name=_text(metadata, "client_name") or "",
        redirect_uris=_list(metadata, "redirect_uris"),
        post_logout_redirect_uris=_list(metadata, "post_logout_redirect_uris"),
        public=auth_method == "none",
        auth_method=auth_method,
        jwks_uri=_text(metadata, "jwks_uri"),
        jwks=jwks,
        grant_types=_list(metadata, "grant_types") or None,
        scopes=tuple(scope.split()) if scope else None,
        backchannel_logout_uri=_text(metadata, "backchannel_logout_uri"),
        id_token_alg=_text(metadata, "id_token_signed_response_alg"),
        default_acr=(_list(metadata, "default_acr_values") or (None,))[0],
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def register_client(
    db: Session,
    initial_token: str | None,
    metadata: dict[str, Any],
    *,
    secret_key: bytes,
    issuer: str,
    now: dt.datetime,
    signing_algorithms: list[str],
    allow_local_server_uris: bool = False,
) -> dict[str, Any]:
    """Register a client with an initial access token; the RFC 7591 §3.2.1 response body. Back-channel logout and
    jwks_uri URLs on this machine or a private network are accepted only with `allow_local_server_uris`
    (development).

    Raises:
        BearerTokenInvalidError: no or a spent initial access token (401).
        InvalidClientMetadataError, InvalidRedirectURIError: metadata that does not validate (400).
    """
    if not initial_token or not consume_initial_access_token(db, initial_token, now=now):
        raise BearerTokenInvalidError("A valid initial access token is required.")
    spec = spec_from_metadata(metadata)
    if spec.id_token_alg and spec.id_token_alg not in signing_algorithms:
        # Every token request would fail for want of a key: refuse now (RFC 7591 §3.2.2).
        raise InvalidClientMetadataError(
            error_description(f"ID tokens cannot be signed with {spec.id_token_alg} here.")
        )
    try:
        created = create_client(
            db, spec, secret_key=secret_key, issuer=issuer, now=now, allow_local_server_uris=allow_local_server_uris
        )
    except ClientRedirectUriInvalidError as exc:
        raise InvalidRedirectURIError(error_description(str(exc))) from None
    except ClientInvalidError as exc:
        raise InvalidClientMetadataError(error_description(str(exc))) from None
    registration_token = secrets.token_urlsafe(32)
    created.client.registration_token_digest = _digest(registration_token)
    record_event(db, "client.registered", result=SUCCESS, client_id=created.client.id)
    body = client_to_json(created.client)
    body.update(
        client_id_issued_at=int(now.timestamp()),
        registration_access_token=registration_token,
        registration_client_uri=f"{issuer}/register/{created.client.id}",
    )
    if created.secret:
        body.update(client_secret=created.secret, client_secret_expires_at=0)
    return body


def client_for_registration_token(db: Session, client_id: str, token: str | None) -> Client:
    """The client an RFC 7592 request manages, if the registration access token is its own.

    Raises:
        BearerTokenInvalidError: otherwise (401, never saying whether the client exists).
    """
    client = find_client(db, client_id) if client_id and len(client_id) <= 128 else None
    expected = client.registration_token_digest if client is not None else None
    if not token or expected is None or not hmac.compare_digest(_digest(token), expected):
        raise BearerTokenInvalidError("The registration access token is not valid.")
    assert client is not None
    return client


def read_registration(client: Client, *, issuer: str) -> dict[str, Any]:
    body = client_to_json(client)
    body["registration_client_uri"] = f"{issuer}/register/{client.id}"
    return body


def delete_registration(db: Session, client: Client) -> None:
    record_event(db, "client.deregistered", result=SUCCESS, client_id=client.id)
    delete_client(db, client)
