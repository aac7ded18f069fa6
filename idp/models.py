"""Every table of the IdP as typed SQLAlchemy declarations; queries live in the services."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.db import Base, bool_false, created_at, utcnow, uuid_pk


class Carrier(enum.StrEnum):
    """Korean mobile carriers as the verification agencies name them (docs/carrier.md)."""

    SKT = "SKT"
    KT = "KT"
    LGU = "LGU"
    SKT_MVNO = "SKT_MVNO"
    KT_MVNO = "KT_MVNO"
    LGU_MVNO = "LGU_MVNO"


class Resident(Base):
    """A person who signs in; one per CI (the agencies' connecting information)."""

    __tablename__ = "resident"

    id: Mapped[uuid_pk]
    # HMAC-SHA256(pepper, CI): finds the resident again without storing the CI (docs/carrier.md).
    ci_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    ci_pepper_version: Mapped[int] = mapped_column(default=1)
    # The raw CI, encrypted with IDP_DATA_KEY, kept only when a client is allowed the `kr_ci` scope.
    ci_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    name: Mapped[str | None] = mapped_column(String(200))
    birthdate: Mapped[dt.date | None]
    phone: Mapped[str | None] = mapped_column(String(20), index=True)
    carrier: Mapped[str | None] = mapped_column(String(16))
    verified_at: Mapped[dt.datetime | None]
    verified_by: Mapped[str | None] = mapped_column(String(64))
    locked_at: Mapped[dt.datetime | None]
    created_at: Mapped[created_at]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    sessions: Mapped[list[LoginSession]] = relationship(back_populates="resident", cascade="all, delete-orphan")

    @property
    def is_locked(self) -> bool:
        return self.locked_at is not None


class Client(Base):
    """A relying service registered with the IdP (OpenID Connect client)."""

    __tablename__ = "client"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Keyed SHA-256 of the secret (docs/integration.md section 3.6); None for public and private_key_jwt clients.
    secret_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(32), default="client_secret_basic")
    redirect_uris: Mapped[list[str]] = mapped_column(default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(default=list)
    grant_types: Mapped[list[str]] = mapped_column(default=list)
    scopes: Mapped[list[str]] = mapped_column(default=list)
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    jwks: Mapped[dict[str, Any] | None]
    backchannel_logout_uri: Mapped[str | None] = mapped_column(String(2000))
    subject_type: Mapped[str] = mapped_column(String(16), default="pairwise")
    id_token_signed_response_alg: Mapped[str] = mapped_column(String(16), default="RS256")
    default_acr: Mapped[str | None] = mapped_column(String(200))
    first_party: Mapped[bool_false]
    # Pairwise `sub` values are per sector: the host of the redirect URIs (OIDC Core §8.1).
    sector_identifier: Mapped[str | None] = mapped_column(String(255))
    # RFC 7592: the digest of the registration access token of a dynamically registered client.
    registration_token_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    created_at: Mapped[created_at]
    secret_rotated_at: Mapped[dt.datetime | None]

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"  # noqa: S105  (an auth method, not a secret)


class LoginSession(Base):
    """A resident's signed-in browser session; `sid` travels in ID and logout tokens."""

    __tablename__ = "login_session"

    id: Mapped[uuid_pk]
    # Public: the OIDC `sid` claim. The cookie carries a separate secret, stored only as its digest.
    sid: Mapped[str] = mapped_column(String(64), unique=True)
    secret_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    resident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resident.id", ondelete="CASCADE"), index=True)
    auth_time: Mapped[dt.datetime]
    acr: Mapped[str] = mapped_column(String(200))
    amr: Mapped[list[str]] = mapped_column(default=list)
    # Every authentication event of the session: {"method", "amr", "acr", "at"} (docs/integration.md section 6).
    events: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    client_ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[created_at]
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]

    resident: Mapped[Resident] = relationship(back_populates="sessions")


class AuditEvent(Base):
    """Who did what, when, from where, with what result: never a secret, code, CI or full phone number."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_resident_id_at", "resident_id", "at"),
        # Only carrier verifications' events have a transaction: the index holds those rows alone.
        Index(
            "ix_audit_event_txn",
            "txn",
            postgresql_where=text("txn IS NOT NULL"),
            sqlite_where=text("txn IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    result: Mapped[str] = mapped_column(String(16))
    # No foreign keys: the record outlives a deleted resident or client, without their personal data.
    resident_id: Mapped[uuid.UUID | None]
    client_id: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(45))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The carrier verification an event belongs to (idp.authn.verification.txn_digest, also in `details`): the
    # sign-in that ends the verification finds its events by it, to give them to the resident.
    txn: Mapped[str | None] = mapped_column(String(16))


class CarrierResult(Base):
    """A carrier verification result already used: its `jti`, so a replayed result is refused."""

    __tablename__ = "carrier_result"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    # SHA-256 of the agency's transaction id: enough to match the agency's records, nothing to reuse.
    agency_txn_digest: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class RateLimitCounter(Base):
    """Hits on a guessable secret or costly action in a fixed window; keys are digests, never phone numbers."""

    __tablename__ = "rate_limit_counter"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[dt.datetime]
    count: Mapped[int] = mapped_column(default=0)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    # Lockouts with back-off (lockout.Backoff): no further attempt is judged before this time.
    locked_until: Mapped[dt.datetime | None]


class AuthorizationCode(Base):
    """An authorization code: single use (consumed_at set by compare-and-set), stored only as a digest."""

    __tablename__ = "authorization_code"

    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    # Everything issued from this code shares the grant id, so a replayed code can revoke it all.
    grant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"), index=True)
    resident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resident.id", ondelete="CASCADE"), index=True)
    sid: Mapped[str | None] = mapped_column(String(64))
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(1000))
    nonce: Mapped[str | None] = mapped_column(String(512))
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(8))
    claims: Mapped[dict[str, Any] | None]
    acr: Mapped[str] = mapped_column(String(200))
    amr: Mapped[list[str]] = mapped_column(default=list)
    auth_time: Mapped[dt.datetime]
    created_at: Mapped[created_at]
    expires_at: Mapped[dt.datetime]
    consumed_at: Mapped[dt.datetime | None]


class RefreshToken(Base):
    """A refresh token (digest only). Each use rotates it; using a rotated one revokes its whole grant."""

    __tablename__ = "refresh_token"

    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    grant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"), index=True)
    resident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resident.id", ondelete="CASCADE"), index=True)
    sid: Mapped[str | None] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(1000))
    claims: Mapped[dict[str, Any] | None]
    acr: Mapped[str] = mapped_column(String(200))
    amr: Mapped[list[str]] = mapped_column(default=list)
    auth_time: Mapped[dt.datetime]
    created_at: Mapped[created_at]
    expires_at: Mapped[dt.datetime]
    # The family's absolute end: sliding renewals never pass it (docs/admin.md section 2).
    family_expires_at: Mapped[dt.datetime]
    rotated_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class Grant(Base):
    """What one authorization gave a client for a resident: the tokens issued from one code and its refresh tokens.

    Access tokens are RFC 9068 JWTs and have no row: a token's `jti` names its grant, and the grant's `revoked_at`
    (or a `RevokedAccessToken` for the token alone) says whether it still holds."""

    __tablename__ = "token_grant"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"), index=True)
    resident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resident.id", ondelete="CASCADE"), index=True)
    # The `userinfo` member of the `claims` request parameter, which UserInfo answers (OIDC Core §5.5).
    claims: Mapped[dict[str, Any] | None]
    created_at: Mapped[created_at]
    # When no token of the grant can be alive any more (the refresh family's end plus an access token's life).
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    revoked_at: Mapped[dt.datetime | None]


class RevokedAccessToken(Base):
    """One access token revoked on its own (RFC 7009); kept until the token would have expired anyway."""

    __tablename__ = "revoked_access_token"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class CacheGeneration(Base):
    """A counter per cached kind of row (`client`): a change bumps it in the same transaction, and every process
    drops its cached copies when it sees a new value (oidc/clients.py `ClientCache`)."""

    __tablename__ = "cache_generation"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Consent(Base):
    """The scopes a resident granted a client; asked again only for scopes not yet granted."""

    __tablename__ = "consent"
    __table_args__ = (UniqueConstraint("resident_id", "client_id"),)

    id: Mapped[uuid_pk]
    resident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resident.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"), index=True)
    scopes: Mapped[list[str]] = mapped_column(default=list)
    granted_at: Mapped[created_at]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class InitialAccessToken(Base):
    """Lets a relying service register itself (RFC 7591 §3); minted by an admin, stored as a digest."""

    __tablename__ = "initial_access_token"

    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[created_at]
    expires_at: Mapped[dt.datetime]
    uses_left: Mapped[int] = mapped_column(default=1)


class LogoutDelivery(Base):
    """A back-channel logout token to deliver; retried until delivered or given up, never dropped silently."""

    __tablename__ = "logout_delivery"

    id: Mapped[uuid_pk]
    client_id: Mapped[str] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"), index=True)
    sid: Mapped[str] = mapped_column(String(64))
    sub: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[created_at]
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(index=True)
    delivered_at: Mapped[dt.datetime | None]
    given_up_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(300))


class SessionClient(Base):
    """A client that received tokens in a login session: who must hear of its logout (back-channel)."""

    __tablename__ = "session_client"
    __table_args__ = (UniqueConstraint("session_id", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("login_session.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"))
    sub: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[created_at]


class UsedAssertion(Base):
    """A client assertion's jti already accepted (RFC 7523 §3 item 7): the same assertion is refused again."""

    __tablename__ = "used_assertion"

    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class Passkey(Base):
    """A resident's WebAuthn credential (discoverable, user-verifying)."""

    __tablename__ = "passkey"

    id: Mapped[uuid_pk]
    resident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resident.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary(1023), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    # WebAuthn counters are 32-bit unsigned: more than PostgreSQL's signed INTEGER holds.
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    aaguid: Mapped[str] = mapped_column(String(36))
    transports: Mapped[list[str]] = mapped_column(default=list)
    # WebAuthn §6.1.3: backup eligibility says synced (multi-device) or device-bound; backup state may change.
    backup_eligible: Mapped[bool_false]
    backed_up: Mapped[bool_false]
    # Registered with verified attestation from an allowed authenticator model (docs/integration.md section 6: phrh).
    attested: Mapped[bool_false]
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[created_at]
    last_used_at: Mapped[dt.datetime | None]
    # Set when the signature counter went backwards: the credential may have been cloned and is refused.
    suspected_clone_at: Mapped[dt.datetime | None]
    # Added on the recovery path (a carrier-only sign-in while the resident had a passkey or an authenticator app):
    # until then it counts as that sign-in, not as a passkey, so a swapped SIM is not a passkey-level sign-in.
    provisional_until: Mapped[dt.datetime | None]

    @property
    def is_synced(self) -> bool:
        return self.backup_eligible

    def is_provisional(self, now: dt.datetime) -> bool:
        return self.provisional_until is not None and self.provisional_until > now

    @property
    def is_hardware_bound(self) -> bool:
        return self.attested and not self.backup_eligible


class WebAuthnChallenge(Base):
    """A WebAuthn challenge: single use (compare-and-set), bound to the browser flow that asked, 5 minutes."""

    __tablename__ = "webauthn_challenge"

    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))
    resident_id: Mapped[uuid.UUID | None]
    binding: Mapped[bytes] = mapped_column(LargeBinary(32))
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    consumed_at: Mapped[dt.datetime | None]


class TotpDevice(Base):
    """A resident's TOTP authenticator app (RFC 6238): one per resident, counted once a code confirmed it."""

    __tablename__ = "totp_device"

    id: Mapped[uuid_pk]
    resident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resident.id", ondelete="CASCADE"), unique=True)
    # The shared secret, encrypted with IDP_DATA_KEY (docs/admin.md section 2).
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    confirmed_at: Mapped[dt.datetime | None]
    # The last time step a code was accepted for: later codes must be for a later step (replay guard).
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)
    last_used_at: Mapped[dt.datetime | None]
    created_at: Mapped[created_at]

    @property
    def is_confirmed(self) -> bool:
        return self.confirmed_at is not None


class RecoveryCode(Base):
    """A single-use recovery code for a resident who lost their TOTP app; only a keyed digest is stored."""

    __tablename__ = "recovery_code"
    __table_args__ = (UniqueConstraint("resident_id", "digest"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    resident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resident.id", ondelete="CASCADE"), index=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[created_at]
    used_at: Mapped[dt.datetime | None]
