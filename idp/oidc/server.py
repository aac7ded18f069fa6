"""The AuthorizationServer on Authlib: client lookup, error policy, and what grants need from the app."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote

import httpx
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidClientError, UnsupportedTokenTypeError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from flask import g
from flask import request as flask_request
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from werkzeug import Request

from idp.keyring import Keyring
from idp.models import Client, SessionClient, UsedAssertion
from idp.oidc.claims import SCOPES
from idp.oidc.clients import ClientCache, verify_client_secret
from idp.oidc.errors import json_error
from idp.oidc.outbound import allows_local_destinations, outbound_client
from idp.oidc.tokens import FoundCode, VerifiedAccessTokens
from idp.runtime import current, db_session, request_time
from idp.settings import Settings

MAX_ASSERTION_LIFETIME = 3600
# Endpoints other than /token that authenticate clients, and may be an assertion's audience when it is sent there.
ASSERTION_ENDPOINTS = frozenset({"/introspect", "/revoke"})


class OAuthClient(ClientMixin):
    """What Authlib asks of a client, over our Client row."""

    def __init__(self, model: Client, secret_key: bytes) -> None:
        self.model = model
        self._secret_key = secret_key

    @property
    def is_public(self) -> bool:
        return self.model.is_public

    @property
    def client_id(self) -> str:
        return self.model.id

    def get_client_id(self) -> str:
        return self.model.id

    def get_default_redirect_uri(self) -> None:
        # OIDC Core §3.1.2.1: redirect_uri is required, even with one registered.
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scope if the client may have all of it; None makes Authlib answer invalid_scope."""
        requested = (scope or "").split()
        if not requested or any(s not in SCOPES or s not in self.model.scopes for s in requested):
            return None
        return " ".join(dict.fromkeys(requested))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact match, no patterns (RFC 9700 §4.1.3).
        return redirect_uri in self.model.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_client_secret(self.model, client_secret, key=self._secret_key)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.model.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        # A client without the code grant gets unauthorized_client here, not a code it cannot redeem.
        return response_type == "code" and "authorization_code" in self.model.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.model.grant_types


class PrivateKeyJwt(JWTBearerClientAssertion):
    """`private_key_jwt` client authentication (RFC 7523, OIDC Core §9) with the client's registered keys."""

    CLIENT_AUTH_METHOD = "private_key_jwt"
    JWKS_CACHE_SECONDS = 300
    JWKS_TIMEOUT = 5.0

    def __init__(self, issuer: str, *, http: httpx.Client) -> None:
        """`http` fetches clients' jwks_uri: an `outbound_client`, which refuses local destinations outside
        development."""
        super().__init__(leeway=30)
        self.issuer = issuer
        self.http = http
        self._fetched: dict[str, tuple[float, KeySet]] = {}

    def get_audiences(self) -> list[str]:
        # RFC 7523 §3 and OIDC Core §9: the audience identifies this server, by its issuer or its token endpoint.
        # The introspection and revocation endpoints take the same client authentication (RFC 7662 §2.1, RFC 7009
        # §2.1): an assertion may name the one it is sent to, never another.
        audiences = [self.issuer, f"{self.issuer}/token"]
        path = g.get("assertion_endpoint")
        if path in ASSERTION_ENDPOINTS:
            audiences.append(f"{self.issuer}{path}")
        return audiences

    def __call__(self, query_client: Callable[[str], Any], request: OAuth2Request) -> Any:
        # The endpoint the assertion is sent to, for get_audiences (which Authlib calls without the request). The
        # request's URL is the issuer's (IssuerRequest), so the endpoint is what follows it.
        g.assertion_endpoint = request.uri[len(self.issuer) :].partition("?")[0]
        return super().__call__(query_client, request)

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            return False
        exp = claims.get("exp")
        now = request_time()
        # An assertion lives minutes; its jti is remembered until it expires, and an exp far ahead is refused.
        if not isinstance(exp, int) or exp > now.timestamp() + MAX_ASSERTION_LIFETIME:
            return False
        expires = dt.datetime.fromtimestamp(exp, dt.UTC)
        issuer = str(claims.get("iss"))
        used = insert(UsedAssertion).values(jti=f"{issuer}:{jti}"[:255], client_id=issuer, expires_at=expires)
        try:
            # Its own transaction, committed at once: the jti must stay used whatever the request does next
            # (introspection commits nothing, and a refused token request rolls back).
            with current().engine.begin() as connection:
                connection.execute(used)
        except IntegrityError:
            return False
        return True

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        model = client.model
        if model.jwks:
            return KeySet.import_key_set(model.jwks)  # type: ignore[arg-type]  # validated when registered
        if model.jwks_uri:
            cached = self._fetched.get(model.id)
            if cached and time.monotonic() - cached[0] < self.JWKS_CACHE_SECONDS:
                return cached[1]
            try:
                response = self.http.get(model.jwks_uri, timeout=self.JWKS_TIMEOUT)
                response.raise_for_status()
                keys = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError, TypeError, KeyError, JoseError):
                raise InvalidClientError(description="The client's jwks_uri could not be read.") from None
            self._fetched[model.id] = (time.monotonic(), keys)
            return keys
        raise InvalidClientError(description="The client has no keys for private_key_jwt.")


class IssuerRequest(FlaskOAuth2Request):
    """Authlib's view of a Flask request, at the issuer's URL rather than one built from the Host header."""

    def __init__(self, request: Request, issuer: str) -> None:
        OAuth2Request.__init__(self, method=request.method, uri=issuer + request.full_path, headers=request.headers)
        self._request = request
        self.payload = FlaskOAuth2Payload(request)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """The client id and secret of an HTTP Basic `Authorization` header (RFC 6749 §2.3.1: form-encoded, then
    base64 of UTF-8 `id:secret`); None for anything else, so a malformed header authenticates nobody."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError both are
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    return unquote(client_id), unquote(secret)


def authenticate_client_secret_basic(query_client: Callable[[str], Any], request: Any) -> Any:
    """`client_secret_basic` over `basic_credentials`: Authlib's own parser raises on bytes that are not UTF-8."""
    credentials = basic_credentials(request.headers.get("Authorization"))
    if credentials is None:
        return None
    client_id, secret = credentials
    client = query_client(client_id)
    if client is None:
        raise InvalidClientError(status_code=401, description="The client does not exist on this server.")
    return client if client.check_client_secret(secret) else None


_session_client = cast(Table, SessionClient.__table__)
LINK_SESSION_CLIENT = {
    "postgresql": postgresql.insert(_session_client).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(_session_client).on_conflict_do_nothing(),
}


class IdpAuthorizationServer(AuthorizationServer):
    """Authlib's server with our client lookup; tokens are stored where they are issued (oidc/tokens.py)."""

    def __init__(self, settings: Settings, keyring: Keyring, secret_key: bytes) -> None:
        super().__init__()
        self.settings = settings
        self.keyring = keyring
        self.secret_key = secret_key
        self.scopes_supported = list(SCOPES)
        self.clients = ClientCache(check_interval=settings.client_cache_interval)
        self.verified_tokens = VerifiedAccessTokens()
        jwks_fetcher = outbound_client(allow_local=allows_local_destinations(settings))
        self.register_client_auth_method(
            PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(settings.issuer, http=jwks_fetcher)
        )
        self.register_client_auth_method("client_secret_basic", authenticate_client_secret_basic)

    def create_oauth2_request(self, request: Any) -> FlaskOAuth2Request:
        # Authlib checks the request URL's transport (https, or http on loopback) and raises outside its error
        # handling: a Host header of the client's choosing made that a 500. The URL this server answers at is the
        # issuer's, whatever Host says (production issuers are https; settings refuse others). The request is the
        # one given (idp.oidc.direct answers without Flask's request context) or Flask's.
        received = request if isinstance(request, Request) else flask_request
        return IssuerRequest(received, self.settings.issuer)

    def query_client(self, client_id: str) -> OAuthClient | None:
        model = self.cached_client(client_id)
        return OAuthClient(model, self.secret_key) if model is not None else None

    def cached_client(self, client_id: str) -> Client | None:
        """The client for protocol checks, from this process's cache (a change is seen within a second)."""
        return self.clients.get(db_session(), client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Nothing here: access and refresh tokens were recorded as they were issued."""

    def handle_error_response(self, request: Any, error: OAuth2Error) -> Any:
        if isinstance(error, InvalidClientError):
            # RFC 6749 §5.2: invalid_client is 401 with a challenge for the scheme the client may use.
            error.status_code = 401
        elif isinstance(error, UnsupportedTokenTypeError):
            # Authlib inherits 401 here; the client authenticated fine, the request is what is wrong.
            error.status_code = 400
        if error.redirect_uri:
            # An authorization response (access_denied): Authlib's redirect to the client.
            return super().handle_error_response(request, error)
        response = json_error(error)
        if isinstance(error, InvalidClientError):
            response.headers["WWW-Authenticate"] = 'Basic realm="idp", error="invalid_client"'
        return response

    def remember_session_client(self, found: FoundCode, client: Client, sub: str) -> None:
        """Record that the client took part in the code's login session (as `sub`), so that logout reaches it."""
        if found.login_session_id is None or found.client_known:
            return
        session = db_session()
        # Two token requests of one session may race here; the unique constraint keeps one row, and the second
        # INSERT does nothing (rather than fail and need a savepoint around it: three more round trips).
        link = LINK_SESSION_CLIENT[session.get_bind().dialect.name]
        session.execute(link, {"session_id": found.login_session_id, "client_id": client.id, "sub": sub})
