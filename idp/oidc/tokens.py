"""Tokens: ID tokens, RFC 9068 JWT access tokens, refresh-token families (rotate, revoke on reuse)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, cast

from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import Table, and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idp.db import load
from idp.keyring import LoadedKeys, SigningKey
from idp.models import (
    AuthorizationCode,
    Client,
    Grant,
    LoginSession,
    RefreshToken,
    Resident,
    RevokedAccessToken,
    SessionClient,
)
from idp.oidc.claims import pairwise_sub
from idp.settings import Settings

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105  RFC 9068 §2.1 (a media type, not a secret)
ID_TOKEN_TYPE = "JWT"  # noqa: S105  (a media type, not a secret)
CLOCK_LEEWAY = 30
MAX_TOKEN_LENGTH = 4096
JTI_MAX_LENGTH = 64  # RevokedAccessToken.jti


class TokenInvalidError(Exception):
    """A presented token is malformed, forged, expired, of the wrong type or revoked."""


@dataclass(frozen=True, slots=True)
class Authentication:
    """How the resident signed in, carried from the code to every token of the grant."""

    resident: Resident | ResidentClaims
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


def new_jti(grant_id: uuid.UUID | None) -> str:
    """A fresh `jti` (RFC 7519 §4.1.7) that names the token's grant, so a token needs no row of its own: UserInfo
    and introspection find the grant from the token, and revoking the grant revokes the token."""
    nonce = secrets.token_urlsafe(16)
    return f"{grant_id.hex}.{nonce}" if grant_id is not None else nonce


def grant_of(jti: str) -> uuid.UUID | None:
    """The grant a `jti` of `new_jti` names; None for a token without one (client credentials)."""
    named, dot, _ = jti.partition(".")
    if not dot or len(named) != 32:
        return None
    try:
        return uuid.UUID(hex=named)
    except ValueError:
        return None


def issue_access_token(
    keys: LoadedKeys,
    settings: Settings,
    *,
    client: Client,
    scope: str,
    now: dt.datetime,
    authentication: Authentication | None = None,
    grant_id: uuid.UUID | None = None,
) -> tuple[str, int]:
    """Sign an RFC 9068 access token. Nothing is stored: its `jti` names the grant that revocation is kept for."""
    expires_in = settings.access_token_ttl
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        # The requesting service is the resource server of its own APIs (RFC 9068 §3, no resource indicators).
        "aud": client.id,
        "client_id": client.id,
        "iat": _epoch(now),
        "exp": _epoch(now) + expires_in,
        "jti": new_jti(grant_id),
        "scope": scope,
    }
    if authentication is not None:
        claims["sub"] = authentication.sub
        claims["auth_time"] = _epoch(authentication.auth_time)
        claims["acr"] = authentication.acr
        claims["amr"] = authentication.amr
    else:
        claims["sub"] = client.id  # client credentials: the service acts for itself (RFC 9068 §2.2)
    return keys.active(settings.access_token_alg).sign(claims, typ=ACCESS_TOKEN_TYPE), expires_in


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
    jti = claims.get("jti")
    if not isinstance(jti, str) or len(jti) > JTI_MAX_LENGTH:
        raise TokenInvalidError("no jti")
    if not isinstance(claims.get("client_id"), str):
        raise TokenInvalidError("no client_id")
    return claims


VERIFIED_TOKENS_LIMIT = 10_000  # tokens remembered per process before the memory starts over


class VerifiedAccessTokens:
    """Access tokens this process has verified, by their exact text: a service that presents one token on every
    call of its API (introspection, UserInfo) costs one signature check, not one per call.

    Only the offline checks are remembered (signature, typ, iss; `exp` is checked again at every use), never whether
    the token still holds: revocation is looked up on every request. Everything is forgotten when the keyring
    changes, so a token of a withdrawn key is checked again, and refused."""

    def __init__(self, *, limit: int = VERIFIED_TOKENS_LIMIT) -> None:
        self.limit = limit
        self._keys: LoadedKeys | None = None
        self._claims: dict[str, dict[str, Any]] = {}

    def verify(self, token: str, keys: LoadedKeys, settings: Settings, *, now: dt.datetime) -> dict[str, Any]:
        """`verify_access_token`, remembered; the claims returned are shared: read them, never change them.

        Raises:
            TokenInvalidError: anything wrong with it.
        """
        if keys is not self._keys:
            self._claims = {}
            self._keys = keys
        claims = self._claims.get(token)
        if claims is None:
            claims = verify_access_token(token, keys, settings, now=now)
            if len(self._claims) >= self.limit:
                self._claims = {}
            self._claims[token] = claims
        elif claims["exp"] + CLOCK_LEEWAY < _epoch(now):
            raise TokenInvalidError("expired")
        return claims


# -- grants and revocation ------------------------------------------------------------------------------------------


def record_grant(
    db: Session,
    settings: Settings,
    *,
    grant_id: uuid.UUID,
    client: Client,
    resident_id: uuid.UUID,
    claims: dict[str, Any] | None,
    refreshable: bool,
    now: dt.datetime,
) -> None:
    """Remember the grant a code's first exchange starts: what its access tokens' revocation is kept for."""
    lifetime = settings.refresh_token_absolute_ttl if refreshable else 0
    db.execute(
        INSERT_GRANT,
        {
            "id": grant_id,
            "client_id": client.id,
            "resident_id": resident_id,
            "claims": (claims or {}).get("userinfo"),
            "created_at": now,
            # An access token issued at the family's last moment lives one access-token lifetime more.
            "expires_at": now + dt.timedelta(seconds=lifetime + settings.access_token_ttl),
        },
    )


@dataclass(frozen=True, slots=True)
class ResidentClaims:
    """The columns of a resident that UserInfo answers from (an `oidc.claims.ClaimsSource`)."""

    id: uuid.UUID
    name: str | None
    birthdate: dt.date | None
    phone: str | None
    verified_at: dt.datetime | None
    verified_by: str | None
    ci_encrypted: bytes | None
    locked_at: dt.datetime | None

    @property
    def is_locked(self) -> bool:
        return self.locked_at is not None


@dataclass(frozen=True, slots=True)
class TokenHolder:
    """Who a resident's access token speaks for, as UserInfo needs it: the resident and the grant's claims request."""

    resident: ResidentClaims
    claims: dict[str, Any] | None


_resident, _grant, _revoked = Resident.__table__.c, Grant.__table__.c, RevokedAccessToken.__table__.c
# One statement each, built once, on the tables (no ORM objects): UserInfo and introspection are on every service's
# hot path.
TOKEN_HOLDER = (
    select(
        *(_resident[name] for name in ResidentClaims.__slots__),
        _grant.claims,
        _grant.revoked_at,
        _revoked.jti,
    )
    .select_from(Grant.__table__)
    .join(Resident.__table__, _resident.id == _grant.resident_id)
    .outerjoin(RevokedAccessToken.__table__, _revoked.jti == bindparam("jti"))
    .where(_grant.id == bindparam("grant_id"), _grant.client_id == bindparam("client_id"))
)
GRANT_STATE = (
    select(_grant.revoked_at, _revoked.jti)
    .select_from(Grant.__table__)
    .outerjoin(RevokedAccessToken.__table__, _revoked.jti == bindparam("jti"))
    .where(_grant.id == bindparam("grant_id"), _grant.client_id == bindparam("client_id"))
)
TOKEN_REVOKED = select(_revoked.jti).where(_revoked.jti == bindparam("jti"))
# Plain INSERTs on the tables (no unit of work, no statement built per call): nothing reads these rows back.
INSERT_GRANT = insert(cast(Table, Grant.__table__))
INSERT_REFRESH_TOKEN = insert(cast(Table, RefreshToken.__table__))
INSERT_CODE = insert(cast(Table, AuthorizationCode.__table__))
HOLDER_COLUMNS = len(ResidentClaims.__slots__)


def token_holder(db: Session, claims: dict[str, Any]) -> TokenHolder | None:
    """The resident a verified access token speaks for; None when it has no resident (client credentials), or its
    grant or the token itself was revoked (or the resident or client deleted)."""
    grant_id = grant_of(claims["jti"])
    if grant_id is None:
        return None
    found = db.execute(
        TOKEN_HOLDER, {"grant_id": grant_id, "client_id": claims["client_id"], "jti": claims["jti"]}
    ).first()
    if found is None:
        return None
    resident, (requested, revoked_at, revoked_jti) = found[:HOLDER_COLUMNS], found[HOLDER_COLUMNS:]
    if revoked_at is not None or revoked_jti is not None:
        return None
    return TokenHolder(ResidentClaims(*resident), requested)


def access_token_holds(db: Session, claims: dict[str, Any]) -> bool:
    """Whether a verified access token still holds: its grant (if any) and the token itself not revoked."""
    jti = claims["jti"]
    grant_id = grant_of(jti)
    if grant_id is None:
        # Only a service's own token (client credentials: `sub` is the client) is issued without a grant.
        return claims.get("sub") == claims["client_id"] and db.execute(TOKEN_REVOKED, {"jti": jti}).first() is None
    found = db.execute(GRANT_STATE, {"grant_id": grant_id, "client_id": claims["client_id"], "jti": jti}).first()
    return found is not None and found[0] is None and found[1] is None


def revoke_access_token(db: Session, claims: dict[str, Any], *, now: dt.datetime) -> None:
    """Revoke one access token (RFC 7009 §2.1) until it would have expired; revoking it twice is harmless."""
    jti = claims["jti"]
    if db.get(RevokedAccessToken, jti) is not None:
        return
    expires_at = dt.datetime.fromtimestamp(claims["exp"] + CLOCK_LEEWAY, dt.UTC)
    try:
        with db.begin_nested():
            db.add(RevokedAccessToken(jti=jti, expires_at=max(expires_at, now)))
    except IntegrityError:
        pass  # revoked by a parallel request: the same outcome


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


@dataclass(frozen=True, slots=True)
class CodeRow:
    """An authorization code's row (`AuthorizationCode`'s columns), as its exchange reads it."""

    digest: bytes
    grant_id: uuid.UUID
    client_id: str
    resident_id: uuid.UUID
    sid: str | None
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    claims: dict[str, Any] | None
    acr: str
    amr: list[str]
    auth_time: dt.datetime
    created_at: dt.datetime
    expires_at: dt.datetime
    consumed_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class RefreshRow:
    """A refresh token's row (`RefreshToken`'s columns), as the refresh grant reads it."""

    digest: bytes
    grant_id: uuid.UUID
    client_id: str
    resident_id: uuid.UUID
    sid: str | None
    scope: str
    claims: dict[str, Any] | None
    acr: str
    amr: list[str]
    auth_time: dt.datetime
    created_at: dt.datetime
    expires_at: dt.datetime
    family_expires_at: dt.datetime
    rotated_at: dt.datetime | None
    revoked_at: dt.datetime | None


_code, _refresh = cast(Table, AuthorizationCode.__table__), cast(Table, RefreshToken.__table__)
_login, _link = cast(Table, LoginSession.__table__), cast(Table, SessionClient.__table__)
CODE_COLUMNS = tuple(_code.c[name] for name in CodeRow.__slots__)
REFRESH_COLUMNS = tuple(_refresh.c[name] for name in RefreshRow.__slots__)
RESIDENT_COLUMNS = tuple(_resident[name] for name in ResidentClaims.__slots__)

# Statements on the token endpoint's path, built once, on the tables (no ORM objects). A code is looked up, checked
# (client, redirect URI, PKCE), then spent by a compare-and-set; a refresh token's compare-and-set returns the row it
# used. With the code come its resident and whether its login session already knows the client (for logout): what
# the exchange needs, in one statement.
FIND_CODE = (
    select(*CODE_COLUMNS, *RESIDENT_COLUMNS, _login.c.id, _link.c.id)
    .select_from(_code)
    .join(Resident.__table__, _resident.id == _code.c.resident_id)
    .outerjoin(_login, _login.c.sid == _code.c.sid)
    .outerjoin(_link, and_(_link.c.session_id == _login.c.id, _link.c.client_id == _code.c.client_id))
    .where(_code.c.digest == bindparam("token_digest"))
)
SPEND_CODE = (
    update(_code)
    .where(_code.c.digest == bindparam("token_digest"), _code.c.consumed_at.is_(None))
    .values(consumed_at=bindparam("used_at"))
)
ROTATE_REFRESH_TOKEN = (
    update(_refresh)
    .where(
        _refresh.c.digest == bindparam("token_digest"),
        _refresh.c.client_id == bindparam("asking_client"),
        _refresh.c.rotated_at.is_(None),
        _refresh.c.revoked_at.is_(None),
    )
    .values(rotated_at=bindparam("used_at"))
    .returning(*REFRESH_COLUMNS)
)
FIND_REFRESH_TOKEN = (
    select(*REFRESH_COLUMNS, *RESIDENT_COLUMNS)
    .select_from(_refresh)
    .join(Resident.__table__, _resident.id == _refresh.c.resident_id)
    .where(_refresh.c.digest == bindparam("token_digest"))
)
CODE_WIDTH, REFRESH_WIDTH, RESIDENT_WIDTH = len(CODE_COLUMNS), len(REFRESH_COLUMNS), len(RESIDENT_COLUMNS)


def save_code(db: Session, row: dict[str, Any]) -> None:
    """Store a new authorization code (its digest and what it grants), as the code grant decided it."""
    db.execute(INSERT_CODE, row)


@dataclass(frozen=True, slots=True)
class FoundCode:
    """A code as its exchange needs it: the row, its resident, and its login session's link to the client."""

    code: CodeRow
    resident: ResidentClaims
    login_session_id: uuid.UUID | None  # None when the session ended and was purged
    client_known: bool  # the session already records the client (SessionClient)


def find_code(db: Session, code: str, client_id: str, *, now: dt.datetime) -> CodeRow | None:
    """The code issued to this client (see `find_code_for_exchange`)."""
    found = find_code_for_exchange(db, code, client_id, now=now)
    return found.code if found is not None else None


def find_code_for_exchange(db: Session, code: str, client_id: str, *, now: dt.datetime) -> FoundCode | None:
    """The code issued to this client, to check before `spend_code` uses it: nothing is written here, so a
    request that fails the checks (a wrong redirect URI or PKCE verifier) neither spends the code nor revokes
    what it issued.

    Returns None for an unknown code, one issued to another client, or one that expired unused.
    """
    if not code or len(code) > 256:
        return None
    row = db.execute(FIND_CODE, {"token_digest": digest(code)}).first()
    if row is None:
        return None
    record = CodeRow(*row[:CODE_WIDTH])
    resident = ResidentClaims(*row[CODE_WIDTH : CODE_WIDTH + RESIDENT_WIDTH])
    login_id, link_id = row[CODE_WIDTH + RESIDENT_WIDTH :]
    if record.client_id != client_id:
        return None
    if record.consumed_at is None and record.expires_at <= now:
        return None
    return FoundCode(record, resident, login_id, link_id is not None)


def spend_code(db: Session, record: CodeRow, *, now: dt.datetime) -> bool:
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
        INSERT_REFRESH_TOKEN,
        {
            "digest": digest(token),
            "grant_id": grant_id,
            "client_id": client.id,
            "resident_id": authentication.resident.id,
            "sid": authentication.sid,
            "scope": scope,
            "claims": claims,
            "acr": authentication.acr,
            "amr": authentication.amr,
            "auth_time": authentication.auth_time,
            "created_at": now,
            "expires_at": min(family_end, now + dt.timedelta(seconds=settings.refresh_token_ttl)),
            "family_expires_at": family_end,
        },
    )
    return token


def rotate_refresh_token(db: Session, token: str, client_id: str, *, now: dt.datetime) -> RefreshRow | None:
    """Use a refresh token once (compare-and-set). A token already rotated means theft: revoke the family.

    Returns None for unknown, expired, revoked or reused tokens and tokens of another client.
    """
    if not token or len(token) > 256:
        return None
    key = digest(token)
    row = db.execute(ROTATE_REFRESH_TOKEN, {"token_digest": key, "asking_client": client_id, "used_at": now}).first()
    if row is None:
        used = db.get(RefreshToken, key)
        if used is not None and used.client_id == client_id and used.revoked_at is None:
            # RFC 9700 §4.14.2: reuse of a rotated refresh token revokes the whole family.
            revoke_grant(db, used.grant_id, now=now)
        return None
    record = RefreshRow(*row)
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
        update(Grant)
        .where(Grant.id == grant_id, Grant.revoked_at.is_(None))
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
        update(Grant)
        .where(Grant.resident_id == resident_id, Grant.client_id == client_id, Grant.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def find_refresh_token(db: Session, token: str) -> RefreshToken | None:
    if not token or len(token) > 256:
        return None
    return load(db, RefreshToken, digest(token))


def find_refresh_token_and_resident(db: Session, token: str) -> tuple[RefreshRow, ResidentClaims] | None:
    """A refresh token and its resident, in one statement (the refresh grant checks both before rotating)."""
    if not token or len(token) > 256:
        return None
    row = db.execute(FIND_REFRESH_TOKEN, {"token_digest": digest(token)}).first()
    if row is None:
        return None
    return RefreshRow(*row[:REFRESH_WIDTH]), ResidentClaims(*row[REFRESH_WIDTH:])
