"""Token introspection (RFC 7662), revocation (RFC 7009) and UserInfo (OIDC Core §5.3) over our token store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from sqlalchemy import bindparam, select

from idp.models import AccessToken, Client, RefreshToken, Resident
from idp.oidc import tokens
from idp.oidc.claims import resident_claims
from idp.oidc.errors import BearerTokenInvalidError, BearerTokenMissingError, InsufficientScopeError
from idp.oidc.server import IdpAuthorizationServer, OAuthClient
from idp.runtime import db_session, request_time

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


@dataclass(frozen=True, slots=True)
class KnownToken:
    """An access or refresh token found in the store, in the shape Authlib's endpoints ask for."""

    kind: str
    row: AccessToken | RefreshToken
    claims: dict[str, Any] | None = None

    def check_client(self, client: OAuthClient) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope

    def get_expires_in(self) -> int:
        return int((self.row.expires_at - request_time()).total_seconds())

    def is_expired(self) -> bool:
        return self.row.expires_at <= request_time()

    def is_revoked(self) -> bool:
        if self.row.revoked_at is not None:
            return True
        return isinstance(self.row, RefreshToken) and self.row.rotated_at is not None


def find_token(server: IdpAuthorizationServer, value: str, hint: str | None) -> KnownToken | None:
    """An access token (a JWT we signed, known by its jti) or a refresh token (known by its digest)."""
    order = ("refresh_token", "access_token") if hint == "refresh_token" else ("access_token", "refresh_token")
    for kind in order:
        if kind == "access_token" and value.count(".") == 2:
            try:
                claims = tokens.verify_access_token(
                    value, server.keyring.current(), server.settings, now=request_time()
                )
            except tokens.TokenInvalidError:
                continue
            row = tokens.find_access_token(db_session(), claims["jti"])
            if row is not None:
                return KnownToken("access_token", row, claims)
        elif kind == "refresh_token":
            refresh = tokens.find_refresh_token(db_session(), value)
            if refresh is not None:
                return KnownToken("refresh_token", refresh)
    return None


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> KnownToken | None:
        return find_token(self.server, token_string, token_type_hint)

    def check_permission(self, token: KnownToken, client: OAuthClient, request: Any) -> bool:
        # A token of another client is reported inactive (RFC 7662 §2.2 lets the server decide).
        return token.check_client(client)

    def introspect_token(self, token: KnownToken) -> dict[str, Any]:
        row = token.row
        payload: dict[str, Any] = {
            "active": True,
            "client_id": row.client_id,
            "scope": row.scope,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "exp": int(row.expires_at.timestamp()),
            "iss": self.server.settings.issuer,
        }
        if token.claims is not None:
            for name in ("sub", "aud", "iat", "jti", "auth_time", "acr", "amr"):
                if name in token.claims:
                    payload[name] = token.claims[name]
        elif isinstance(row, RefreshToken):
            client = db_session().get(Client, row.client_id)
            if client is not None:
                payload["sub"] = tokens.subject_for(client, row.resident_id, self.server.settings)
            payload["iat"] = int(row.created_at.timestamp())
        return payload


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = [*AUTH_METHODS, "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> KnownToken | None:
        return find_token(self.server, token_string, token_type_hint)

    def revoke_token(self, token: KnownToken, request: Any) -> None:
        now = request_time()
        row = token.row
        if isinstance(row, RefreshToken):
            # RFC 7009 §2.1: revoking a refresh token revokes the access tokens of its grant too.
            tokens.revoke_grant(db_session(), row.grant_id, now=now)
        elif row.revoked_at is None:
            row.revoked_at = now


# One statement, built once, for the token, its resident and its client: UserInfo is on every service's hot path.
USERINFO_ROWS = (
    select(AccessToken, Resident, Client)
    .join(Resident, Resident.id == AccessToken.resident_id)
    .join(Client, Client.id == AccessToken.client_id)
    .where(AccessToken.jti == bindparam("jti"))
)


def userinfo(server: IdpAuthorizationServer, bearer: str | None) -> dict[str, Any]:
    """The resident's claims for a valid access token with the openid scope.

    Raises:
        BearerTokenMissingError, BearerTokenInvalidError, InsufficientScopeError: the RFC 6750 §3.1 answers.
    """
    if not bearer:
        raise BearerTokenMissingError
    now = request_time()
    try:
        claims = tokens.verify_access_token(bearer, server.keyring.current(), server.settings, now=now)
    except tokens.TokenInvalidError:
        raise BearerTokenInvalidError("The access token is invalid or expired.") from None
    found = db_session().execute(USERINFO_ROWS, {"jti": claims["jti"]}).first()
    if found is None or found[0].revoked_at is not None:
        raise BearerTokenInvalidError("The access token is revoked or not for a resident.")
    row, resident, client = found
    if "openid" not in row.scope.split():
        raise InsufficientScopeError("The access token lacks the openid scope.")
    if resident.is_locked:
        raise BearerTokenInvalidError("The resident is locked.")
    body = {"sub": claims["sub"]}
    body.update(
        resident_claims(
            resident,
            scope=row.scope,
            claims_request={"userinfo": row.claims} if row.claims else None,
            member="userinfo",
            client=client,
            settings=server.settings,
            include_scope_claims=True,
        )
    )
    return body
