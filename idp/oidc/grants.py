"""Authlib grants adapted to our storage: authorization code (with OIDC and S256-only PKCE), refresh, client
credentials. Only lookups and storage here; no HTTP and no commits."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, InvalidScopeError, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode

from idp.authn.sessions import session_assurance
from idp.db import load
from idp.models import LoginSession, Resident
from idp.oidc import tokens
from idp.oidc.claims import AUTH_METHODS, id_token_claims
from idp.oidc.server import IdpAuthorizationServer, OAuthClient
from idp.runtime import db_session, request_time


@dataclass(frozen=True, slots=True)
class AuthorizedResident:
    """The grant user of an authorization request: the resident and the login session they are in."""

    resident: Resident
    session: LoginSession


class CodeRecord:
    """What Authlib asks of an authorization code, over our row."""

    def __init__(self, found: tokens.FoundCode) -> None:
        self.found = found
        self.row = found.code

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return int(self.row.auth_time.timestamp())

    def get_acr(self) -> str:
        return self.row.acr

    def get_amr(self) -> list[str]:
        return list(self.row.amr)

    @property
    def code_challenge(self) -> str | None:
        return self.row.code_challenge

    @property
    def code_challenge_method(self) -> str | None:
        return self.row.code_challenge_method


class RefreshRecord:
    """What Authlib asks of a refresh token, over our row."""

    def __init__(self, row: tokens.RefreshRow) -> None:
        self.row = row

    def get_scope(self) -> str:
        return self.row.scope

    def check_client(self, client: OAuthClient) -> bool:
        return self.row.client_id == client.get_client_id()


def _server(grant: grants.BaseGrant) -> IdpAuthorizationServer:
    server: IdpAuthorizationServer = grant.server
    return server


def _issue(
    grant: grants.BaseGrant,
    *,
    scope: str,
    authentication: tokens.Authentication | None,
    grant_id: uuid.UUID | None,
    claims: dict[str, Any] | None,
    include_refresh_token: bool,
    family_expires_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The token response of any grant: a JWT access token, and a refresh token when the grant may have one."""
    server = _server(grant)
    client: OAuthClient = grant.request.client
    now = request_time()
    access_token, expires_in = tokens.issue_access_token(
        server.keyring.current(),
        server.settings,
        client=client.model,
        scope=scope,
        now=now,
        authentication=authentication,
        grant_id=grant_id,
    )
    token: dict[str, Any] = {
        "token_type": "Bearer",
        "access_token": access_token,
        "expires_in": expires_in,
        "scope": scope,
    }
    if include_refresh_token and authentication is not None and grant_id is not None:
        token["refresh_token"] = tokens.issue_refresh_token(
            db_session(),
            server.settings,
            client=client.model,
            authentication=authentication,
            scope=scope,
            grant_id=grant_id,
            claims=claims,
            now=now,
            family_expires_at=family_expires_at,
        )
    return token


def may_refresh(client: OAuthClient, scope: str) -> bool:
    """A refresh token when the client may use the grant and `offline_access` was granted (OIDC Core §11)."""
    return client.check_grant_type("refresh_token") and "offline_access" in scope.split()


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    def generate_authorization_code(self) -> str:
        # 256 random bits in one read of the system's generator (tokens.new_secret), where Authlib's default asks
        # it once per character: 48 system calls on every /authorize, each letting the server's other threads in.
        return tokens.new_secret()

    def save_authorization_code(self, code: str, request: Any) -> None:
        user: AuthorizedResident = request.user
        payload = request.payload.data
        now = request_time()
        session = user.session
        max_age = payload.get("max_age")
        acr, amr = session_assurance(
            session,
            max_age=int(max_age) if max_age else None,
            issuer=_server(self).settings.issuer,
            now=now,
        )
        tokens.save_code(
            db_session(),
            {
                "digest": tokens.digest(code),
                "grant_id": uuid.uuid4(),
                "client_id": request.client.get_client_id(),
                "resident_id": user.resident.id,
                "sid": session.sid,
                "redirect_uri": request.payload.redirect_uri,
                "scope": request.scope,
                "nonce": payload.get("nonce"),
                "code_challenge": payload.get("code_challenge"),
                "code_challenge_method": payload.get("code_challenge_method"),
                # Parsed once, when /authorize checked the request (oidc/authorization.py).
                "claims": request.claims_requested,
                "acr": acr,
                "amr": amr,
                "auth_time": session.auth_time,
                "created_at": now,
                "expires_at": now + dt.timedelta(seconds=_server(self).settings.code_ttl),
            },
        )

    def query_authorization_code(self, code: str, client: OAuthClient) -> CodeRecord | None:
        found = tokens.find_code_for_exchange(db_session(), code, client.get_client_id(), now=request_time())
        return CodeRecord(found) if found is not None else None

    def create_token_response(self) -> Any:
        # The code is spent only now, after the client, its redirect URI and the PKCE verifier were checked
        # (validate_token_request and its hooks): whoever saw a code without the verifier cannot burn it.
        if not tokens.spend_code(db_session(), self.request.authorization_code.row, now=request_time()):
            raise InvalidGrantError("Invalid 'code' in request.")
        return super().create_token_response()

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        """Nothing to delete: the code was spent by a compare-and-set before the tokens were made."""

    def authenticate_user(self, authorization_code: CodeRecord) -> tokens.ResidentClaims | None:
        return authorization_code.found.resident

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        row = self.request.authorization_code.row
        client = self.request.client.model
        authentication = tokens.Authentication(
            resident=user,
            sub=tokens.subject_for(client, user.id, _server(self).settings),
            sid=row.sid,
            acr=row.acr,
            amr=list(row.amr),
            auth_time=row.auth_time,
        )
        self.request.authentication = authentication
        _server(self).remember_session_client(self.request.authorization_code.found, client, authentication.sub)
        refreshable = may_refresh(self.request.client, row.scope)
        tokens.record_grant(
            db_session(),
            _server(self).settings,
            grant_id=row.grant_id,
            client=client,
            resident_id=user.id,
            claims=row.claims,
            refreshable=refreshable,
            now=request_time(),
        )
        return _issue(
            self,
            scope=row.scope,
            authentication=authentication,
            grant_id=row.grant_id,
            claims=row.claims,
            include_refresh_token=refreshable,
        )


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True

    def _validate_request_token(self, client: OAuthClient) -> RefreshRecord:
        presented = self.request.form.get("refresh_token")
        if presented is None:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        # Checks that leave the token usable come first: a request with a wider scope, or for a locked
        # resident, must not spend it.
        found = tokens.find_refresh_token_and_resident(db_session(), presented)
        if found is not None and found[0].client_id == client.get_client_id():
            known, resident = found
            self._validate_token_scope(RefreshRecord(known))
            if resident.is_locked:
                raise InvalidGrantError("The resident can no longer be signed in.")
            # Kept for authenticate_user: the session's identity map holds objects weakly, and would query again.
            self.checked_resident = resident
        row = tokens.rotate_refresh_token(db_session(), presented, client.get_client_id(), now=request_time())
        if row is None:
            raise InvalidGrantError()
        return RefreshRecord(row)

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        raise NotImplementedError("looked up and rotated in _validate_request_token")

    def authenticate_user(self, refresh_token: RefreshRecord) -> Resident | tokens.ResidentClaims | None:
        resident: Resident | tokens.ResidentClaims | None = getattr(self, "checked_resident", None)
        if resident is None or resident.id != refresh_token.row.resident_id:
            resident = load(db_session(), Resident, refresh_token.row.resident_id)
        return None if resident is None or resident.is_locked else resident

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        """Nothing more: the old token was marked rotated by a compare-and-set when it was looked up."""

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        old: tokens.RefreshRow = self.request.refresh_token.row
        authentication = tokens.Authentication(
            resident=user,
            sub=tokens.subject_for(self.request.client.model, user.id, _server(self).settings),
            sid=old.sid,
            acr=old.acr,
            amr=list(old.amr),
            auth_time=old.auth_time,
        )
        granted = scope or old.scope
        token = _issue(
            self,
            scope=granted,
            authentication=authentication,
            grant_id=old.grant_id,
            claims=old.claims,
            include_refresh_token=False,
        )
        # The new refresh token keeps the grant's full scope (RFC 6749 §6): a narrowed request narrows
        # this access token only.
        token["refresh_token"] = tokens.issue_refresh_token(
            db_session(),
            _server(self).settings,
            client=self.request.client.model,
            authentication=authentication,
            scope=old.scope,
            grant_id=old.grant_id,
            claims=old.claims,
            now=request_time(),
            family_expires_at=old.family_expires_at,
        )
        if "openid" in granted.split():
            # OIDC Core §12.2: a refreshed ID token keeps the original authentication's claims.
            server = _server(self)
            token["id_token"] = tokens.issue_id_token(
                server.keyring.current(),
                server.settings,
                client=self.request.client.model,
                authentication=authentication,
                claims=id_token_claims(user, granted, old.claims, self.request.client.model, server.settings),
                now=request_time(),
                access_token=token["access_token"],
            )
        return token

    def _validate_token_scope(self, token: RefreshRecord) -> None:
        # A refresh may narrow the scope, never widen it (RFC 6749 §6).
        scope = self.request.payload.scope
        if scope and not set(scope.split()) <= set(token.get_scope().split()):
            raise InvalidScopeError()


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def validate_requested_scope(self) -> None:
        # Only scopes an admin allowed this client (Authlib passes the request through unchecked).
        super().validate_requested_scope()
        requested = self.request.payload.scope
        if requested and self.request.client.get_allowed_scope(requested) is None:
            raise InvalidScopeError()

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        # Service-to-service: no resident, so no refresh token and no ID token. Without a scope in the
        # request, the client gets what it was registered for (RFC 6749 §3.3).
        requested = (scope or " ".join(self.request.client.model.scopes)).split()
        granted = " ".join(s for s in requested if s not in ("openid", "offline_access"))
        return _issue(self, scope=granted, authentication=None, grant_id=None, claims=None, include_refresh_token=False)


class OpenIDCodeFlow(OpenIDCode):
    """The OIDC half of the code grant: the ID token, signed by the keyring with the client's algorithm."""

    def __init__(self, server: IdpAuthorizationServer) -> None:
        super().__init__(require_nonce=False)
        # Authlib calls encode_id_token without the grant: the server it belongs to is given here, once.
        self.server = server

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        # Codes are single use, so a nonce cannot be replayed through this server; the client checks its own.
        return False

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        server = self.server
        row = request.authorization_code.row
        client = request.client.model
        return tokens.issue_id_token(
            server.keyring.current(),
            server.settings,
            client=client,
            authentication=request.authentication,
            claims=id_token_claims(request.user, row.scope, row.claims, client, server.settings),
            now=request_time(),
            nonce=row.nonce,
            access_token=token.get("access_token"),
        )


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only (`plain` is refused: RFC 9700 §2.1.1), required for public clients."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_verifier(self, grant: grants.BaseGrant, result: Any) -> None:
        # Authlib's table of comparisons still holds `plain`: a code whose row names any other method than S256
        # is refused here too, not only at /authorize.
        code = grant.request.authorization_code
        method = self.get_authorization_code_challenge_method(code)
        if self.get_authorization_code_challenge(code) and method not in (None, "S256"):
            raise InvalidGrantError(description="Code challenge failed.")
        super().validate_code_verifier(grant, result)

    def validate_code_challenge(self, grant: grants.BaseGrant, redirect_uri: str) -> None:
        request = grant.request
        data = request.payload.data
        # PKCE is required for public clients: RFC 9700 §2.1.1.
        if request.client.is_public and not data.get("code_challenge"):
            raise InvalidRequestError("Public clients must send a PKCE 'code_challenge' (S256).")
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only 'code_challenge_method=S256' is supported.")
        super().validate_code_challenge(grant, redirect_uri)
