"""Token introspection (RFC 7662), revocation (RFC 7009) and UserInfo (OIDC Core §5.3) over our token store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from idp.models import RefreshToken
from idp.oidc import tokens
from idp.oidc.claims import resident_claims
from idp.oidc.clients import find_client
from idp.oidc.errors import BearerTokenInvalidError, BearerTokenMissingError, InsufficientScopeError
from idp.oidc.server import IdpAuthorizationServer, OAuthClient
from idp.runtime import db_session, request_time

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


@dataclass(frozen=True, slots=True)
class KnownAccessToken:
    """A verified access token that still holds, in the shape Authlib's endpoints ask for: its claims say it all."""

    claims: dict[str, Any]

    def check_client(self, client: OAuthClient) -> bool:
        return bool(self.claims["client_id"] == client.get_client_id())

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def get_expires_in(self) -> int:
        return int(self.claims["exp"] - request_time().timestamp())

    def is_expired(self) -> bool:
        return bool(self.claims["exp"] <= request_time().timestamp())

    def is_revoked(self) -> bool:
        return False  # found only while it holds (tokens.access_token_holds)


@dataclass(frozen=True, slots=True)
class KnownRefreshToken:
    """A refresh token found in the store by its digest."""

    row: RefreshToken

    def check_client(self, client: OAuthClient) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope

    def get_expires_in(self) -> int:
        return int((self.row.expires_at - request_time()).total_seconds())

    def is_expired(self) -> bool:
        return self.row.expires_at <= request_time()

    def is_revoked(self) -> bool:
        return self.row.revoked_at is not None or self.row.rotated_at is not None


KnownToken = KnownAccessToken | KnownRefreshToken


def find_token(server: IdpAuthorizationServer, value: str, hint: str | None) -> KnownToken | None:
    """An access token (a JWT we signed whose grant and jti are not revoked) or a refresh token (by its digest)."""
    order = ("refresh_token", "access_token") if hint == "refresh_token" else ("access_token", "refresh_token")
    for kind in order:
        if kind == "access_token" and value.count(".") == 2:
            try:
                claims = server.verified_tokens.verify(
                    value, server.keyring.current(), server.settings, now=request_time()
                )
            except tokens.TokenInvalidError:
                continue
            if tokens.access_token_holds(db_session(), claims):
                return KnownAccessToken(claims)
        elif kind == "refresh_token":
            refresh = tokens.find_refresh_token(db_session(), value)
            if refresh is not None:
                return KnownRefreshToken(refresh)
    return None


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> KnownToken | None:
        return find_token(self.server, token_string, token_type_hint)

    def check_permission(self, token: KnownToken, client: OAuthClient, request: Any) -> bool:
        # A token of another client is reported inactive (RFC 7662 §2.2 lets the server decide).
        return token.check_client(client)

    def introspect_token(self, token: KnownToken) -> dict[str, Any]:
        issuer = self.server.settings.issuer
        if isinstance(token, KnownAccessToken):
            claims = token.claims
            payload: dict[str, Any] = {"active": True, "client_id": claims["client_id"], "scope": token.get_scope()}
            payload |= {"token_type": "Bearer", "exp": claims["exp"], "iss": issuer}
            for name in ("sub", "aud", "iat", "jti", "auth_time", "acr", "amr"):
                if name in claims:
                    payload[name] = claims[name]
            return payload
        row = token.row
        payload = {"active": True, "client_id": row.client_id, "scope": row.scope, "token_type": "refresh_token"}
        payload |= {"exp": int(row.expires_at.timestamp()), "iss": issuer, "iat": int(row.created_at.timestamp())}
        client = find_client(db_session(), row.client_id)
        if client is not None:
            payload["sub"] = tokens.subject_for(client, row.resident_id, self.server.settings)
        return payload


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = [*AUTH_METHODS, "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> KnownToken | None:
        return find_token(self.server, token_string, token_type_hint)

    def revoke_token(self, token: KnownToken, request: Any) -> None:
        now = request_time()
        if isinstance(token, KnownRefreshToken):
            # RFC 7009 §2.1: revoking a refresh token revokes the access tokens of its grant too.
            tokens.revoke_grant(db_session(), token.row.grant_id, now=now)
        else:
            tokens.revoke_access_token(db_session(), token.claims, now=now)


def userinfo(server: IdpAuthorizationServer, bearer: str | None) -> dict[str, Any]:
    """The resident's claims for a valid access token with the openid scope.

    Raises:
        BearerTokenMissingError, BearerTokenInvalidError, InsufficientScopeError: the RFC 6750 §3.1 answers.
    """
    if not bearer:
        raise BearerTokenMissingError
    now = request_time()
    try:
        claims = server.verified_tokens.verify(bearer, server.keyring.current(), server.settings, now=now)
    except tokens.TokenInvalidError:
        raise BearerTokenInvalidError("The access token is invalid or expired.") from None
    holder = tokens.token_holder(db_session(), claims)
    if holder is None:
        raise BearerTokenInvalidError("The access token is revoked or not for a resident.")
    scope = str(claims.get("scope", ""))
    if "openid" not in scope.split():
        raise InsufficientScopeError("The access token lacks the openid scope.")
    resident = holder.resident
    if resident.is_locked:
        raise BearerTokenInvalidError("The resident is locked.")
    client = server.cached_client(claims["client_id"])
    if client is None:
        raise BearerTokenInvalidError("The access token's client is gone.")
    body = {"sub": claims["sub"]}
    body.update(
        resident_claims(
            resident,
            scope=scope,
            claims_request={"userinfo": holder.claims} if holder.claims else None,
            member="userinfo",
            client=client,
            settings=server.settings,
            include_scope_claims=True,
        )
    )
    return body
