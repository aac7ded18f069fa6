"""Tokens: ID tokens, RFC 9068 JWT access tokens, refresh-token families (rotate, revoke on reuse)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from idp.db import load
from idp.keyring import LoadedKeys, SigningKey
from idp.models import AccessToken, AuthorizationCode, Client, RefreshToken, Resident
from idp.oidc.claims import pairwise_sub
from idp.settings import Settings

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105  RFC 9068 §2.1 (a media type, not a secret)
ID_TOKEN_TYPE = "JWT"  # noqa: S105  (a media type, not a secret)
CLOCK_LEEWAY = 30
MAX_TOKEN_LENGTH = 4096


class TokenInvalidError(Exception):
    """A presented token is malformed, forged, expired, of the wrong type or revoked."""


@dataclass(frozen=True, slots=True)
class Authentication:
    """How the resident signed in, carried from the code to every token of the grant."""

    resident: Resident
    sub: str  # the subject the grant's client sees (`subject_for`), computed once per request
    sid: str | None
    acr: str
    amr: list[str]
    auth_time: dt.datetime


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None = None


def digest(value: str) -> bytes:
    """Codes and refresh tokens are stored as SHA-256 digests: 256 random bits need no slow hash."""
    return hashlib.sha256(value.encode()).digest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def subject_for(client: Client, resident_id: uuid.UUID, settings: Settings) -> str:
    """The `sub` this client sees: pairwise per sector by default, the resident id where an admin allowed it."""
    if client.subject_type == "public":
        return str(resident_id)
    sector = client.sector_identifier or client.id
    return pairwise_sub(sector, str(resident_id), settings.pairwise_secret)


def _epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


# -- access tokens -------------------------------------------------------------------------------------------------


def issue_access_token(
    db: Session,
    keys: LoadedKeys,
    settings: Settings,
    *,
    client: Client,
    scope: str,
    now: dt.datetime,
    authentication: Authentication | None = None,
    grant_id: uuid.UUID | None = None,
    userinfo_claims: dict[str, Any] | None = None,
) -> tuple[str, int]:
    """Sign an RFC 9068 access token and remember its jti (for introspection and revocation)."""
    jti = secrets.token_urlsafe(24)
    expires_in = settings.access_token_ttl
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        # The requesting service is the resource server of its own APIs (RFC 9068 §3, no resource indicators).
        "aud": client.id,
        "client_id": client.id,
        "iat": _epoch(now),
        "exp": _epoch(now) + expires_in,
        "jti": jti,
        "scope": scope,
    }
    if authentication is not None:
        claims["sub"] = authentication.sub
        claims["auth_time"] = _epoch(authentication.auth_time)
        claims["acr"] = authentication.acr
        claims["amr"] = authentication.amr
    else:
        claims["sub"] = client.id  # client credentials: the service acts for itself (RFC 9068 §2.2)
    token = keys.active(settings.access_token_alg).sign(claims, typ=ACCESS_TOKEN_TYPE)
    # A plain INSERT rather than the unit of work: the token endpoint's hot path, and nothing reads the row back.
    db.execute(
        insert(AccessToken).values(
            jti=jti,
            grant_id=grant_id,
            client_id=client.id,
            resident_id=authentication.resident.id if authentication else None,
            scope=scope,
            claims=userinfo_claims,
            issued_at=now,
            expires_at=now + dt.timedelta(seconds=expires_in),
        )
    )
    return token, expires_in


def verify_access_token(token: str, keys: LoadedKeys, settings: Settings, *, now: dt.datetime) -> dict[str, Any]:
    """The claims of an access token this IdP signed, checked offline (signature, typ, iss, exp).

    Raises:
        TokenInvalidError: anything wrong with it.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise TokenInvalidError("malformed token")
    try:
        decoded = jwt.decode(token, keys.public_keys, registry=keys.verifier)
    except (JoseError, ValueError, TypeError) as exc:
        raise TokenInvalidError(f"bad token: {type(exc).__name__}") from None
    if decoded.header.get("typ") != ACCESS_TOKEN_TYPE:
        raise TokenInvalidError("not an access token")
    claims = decoded.claims
    if claims.get("iss") != settings.issuer:
        raise TokenInvalidError("issued elsewhere")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp + CLOCK_LEEWAY < _epoch(now):
        raise TokenInvalidError("expired")
    if not isinstance(claims.get("jti"), str):
        raise TokenInvalidError("no jti")
    return claims


def find_access_token(db: Session, jti: str) -> AccessToken | None:
    return load(db, AccessToken, jti)


# -- ID tokens -------------------------------------------------------------------------------------------------------


def issue_id_token(
    keys: LoadedKeys,
    settings: Settings,
    *,
    client: Client,
    authentication: Authentication,
    claims: dict[str, Any],
    now: dt.datetime,
    nonce: str | None = None,
    access_token: str | None = None,
) -> str:
    """Sign an ID token with the client's algorithm (RS256 unless it registered another)."""
    key = keys.active(client.id_token_signed_response_alg)
    payload: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": authentication.sub,
        "aud": client.id,
        "iat": _epoch(now),
        "exp": _epoch(now) + settings.id_token_ttl,
        "auth_time": _epoch(authentication.auth_time),
        "acr": authentication.acr,
        "amr": authentication.amr,
    }
    if authentication.sid:
        payload["sid"] = authentication.sid
    if nonce:
        payload["nonce"] = nonce
    if access_token:
        payload["at_hash"] = half_hash(access_token, key)
    payload.update(claims)
    return key.sign(payload, typ=ID_TOKEN_TYPE)


def half_hash(value: str, key: SigningKey) -> str:
    """OIDC Core §3.1.3.6 at_hash: the left half of the hash that matches the signing algorithm."""
    algorithm = hashlib.sha512 if key.alg == "EdDSA" else hashlib.sha256
    digest_bytes = algorithm(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest_bytes[: len(digest_bytes) // 2]).rstrip(b"=").decode()


# -- authorization codes --------------------------------------------------------------------------------------------


# Statements on the token endpoint's path, built once. A code is looked up, checked (client, redirect URI, PKCE),
# then spent by a compare-and-set; a refresh token's compare-and-set returns the row it used.
FIND_CODE = select(AuthorizationCode).where(AuthorizationCode.digest == bindparam("token_digest"))
SPEND_CODE = (
    update(AuthorizationCode)
    .where(AuthorizationCode.digest == bindparam("token_digest"), AuthorizationCode.consumed_at.is_(None))
    .values(consumed_at=bindparam("used_at"))
    .execution_options(synchronize_session=False)
)
ROTATE_REFRESH_TOKEN = (
    update(RefreshToken)
    .where(
        RefreshToken.digest == bindparam("token_digest"),
        RefreshToken.client_id == bindparam("asking_client"),
        RefreshToken.rotated_at.is_(None),
        RefreshToken.revoked_at.is_(None),
    )
    .values(rotated_at=bindparam("used_at"))
    .returning(RefreshToken)
    .execution_options(synchronize_session=False)
)


def find_code(db: Session, code: str, client_id: str, *, now: dt.datetime) -> AuthorizationCode | None:
    """The code issued to this client, to check before `spend_code` uses it: nothing is written here, so a
    request that fails the checks (a wrong redirect URI or PKCE verifier) neither spends the code nor revokes
    what it issued.

    Returns None for an unknown code, one issued to another client, or one that expired unused.
    """
    if not code or len(code) > 256:
        return None
    record = db.scalars(FIND_CODE, {"token_digest": digest(code)}).first()
    if record is None or record.client_id != client_id:
        return None
    if record.consumed_at is None and record.expires_at <= now:
        return None
    return record


def spend_code(db: Session, record: AuthorizationCode, *, now: dt.datetime) -> bool:
    """Use the checked code once (a compare-and-set); False when it was used already, which revokes what it issued.

    Only the client itself gets here with a used code (its verifier and redirect URI passed): a replay, so the code
    may be stolen (RFC 6749 §4.1.2, RFC 9700 §4.5).
    """
    spent = db.execute(SPEND_CODE, {"token_digest": record.digest, "used_at": now})
    if spent.rowcount == 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        return True
    revoke_grant(db, record.grant_id, now=now)
    return False


# -- refresh tokens -------------------------------------------------------------------------------------------------


def issue_refresh_token(
    db: Session,
    settings: Settings,
    *,
    client: Client,
    authentication: Authentication,
    scope: str,
    grant_id: uuid.UUID,
    claims: dict[str, Any] | None,
    now: dt.datetime,
    family_expires_at: dt.datetime | None = None,
) -> str:
    """A new refresh token of the grant's family: sliding lifetime, never past the family's absolute end."""
    family_end = family_expires_at or now + dt.timedelta(seconds=settings.refresh_token_absolute_ttl)
    token = new_secret()
    db.execute(
        insert(RefreshToken).values(
            digest=digest(token),
            grant_id=grant_id,
            client_id=client.id,
            resident_id=authentication.resident.id,
            sid=authentication.sid,
            scope=scope,
            claims=claims,
            acr=authentication.acr,
            amr=authentication.amr,
            auth_time=authentication.auth_time,
            created_at=now,
            expires_at=min(family_end, now + dt.timedelta(seconds=settings.refresh_token_ttl)),
            family_expires_at=family_end,
        )
    )
    return token


def rotate_refresh_token(db: Session, token: str, client_id: str, *, now: dt.datetime) -> RefreshToken | None:
    """Use a refresh token once (compare-and-set). A token already rotated means theft: revoke the family.

    Returns None for unknown, expired, revoked or reused tokens and tokens of another client.
    """
    if not token or len(token) > 256:
        return None
    key = digest(token)
    record = db.scalars(ROTATE_REFRESH_TOKEN, {"token_digest": key, "asking_client": client_id, "used_at": now}).first()
    if record is None:
        used = db.get(RefreshToken, key)
        if used is not None and used.client_id == client_id and used.revoked_at is None:
            # RFC 9700 §4.14.2: reuse of a rotated refresh token revokes the whole family.
            revoke_grant(db, used.grant_id, now=now)
        return None
    if record.expires_at <= now:
        return None
    return record


def revoke_grant(db: Session, grant_id: uuid.UUID, *, now: dt.datetime) -> None:
    """Revoke every access and refresh token issued under the grant."""
    db.execute(
        update(RefreshToken)
        .where(RefreshToken.grant_id == grant_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    db.execute(
        update(AccessToken)
        .where(AccessToken.grant_id == grant_id, AccessToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def revoke_client_grants(db: Session, *, resident_id: uuid.UUID, client_id: str, now: dt.datetime) -> None:
    """Revoke a client's refresh and access tokens for a resident (consent withdrawn)."""
    db.execute(
        update(RefreshToken)
        .where(
            RefreshToken.resident_id == resident_id,
            RefreshToken.client_id == client_id,
            RefreshToken.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    db.execute(
        update(AccessToken)
        .where(
            AccessToken.resident_id == resident_id,
            AccessToken.client_id == client_id,
            AccessToken.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def find_refresh_token(db: Session, token: str) -> RefreshToken | None:
    if not token or len(token) > 256:
        return None
    return load(db, RefreshToken, digest(token))
