"""Passkeys (WebAuthn Level 3) on py_webauthn: options, verification, single-use challenges, clone detection."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    parse_attestation_object,
    parse_authentication_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AttestationFormat,
    AttestationObject,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from webauthn.registration.verify_registration_response import VerifiedRegistration

from idp.audit import FAILURE, SUCCESS, record_event
from idp.authn.assurance import AuthEvent, Method
from idp.authn.attestation import ZERO_AAGUID, AttestationPolicy, claimed_aaguid, has_certificate_chain
from idp.authn.sessions import RECENT_SIGN_IN
from idp.authn.totp import has_totp
from idp.models import LoginSession, Passkey, Resident, WebAuthnChallenge

CHALLENGE_TTL = dt.timedelta(minutes=5)  # WebAuthn Level 3 recommends 5-10 minute ceremonies with user verification
CEREMONY_TIMEOUT_MS = 120_000
MAX_RESPONSE_BYTES = 64 * 1024
REGISTER = "register"
AUTHENTICATE = "authenticate"
NAME_MAX = 100
MAX_CREDENTIAL_ID = 1023  # WebAuthn Level 3 §7.1 step 18
# Sign-ins that vouch for a new passkey at once when the resident already has a passkey or an authenticator app:
# one of those, not a recovery code nor the carrier alone (what someone who took over the phone number has).
VOUCHING_METHODS = frozenset({Method.PASSKEY, Method.PASSKEY_HARDWARE, Method.TOTP})


class PasskeyRejectedError(Exception):
    """A WebAuthn ceremony failed; `reason` names why for the audit log (never shown raw to residents)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PasskeyClonedError(PasskeyRejectedError):
    """The signature counter went backwards: two authenticators hold this credential."""


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


# A plain INSERT built once (no unit of work): every passkey sign-in stores a challenge.
INSERT_CHALLENGE = insert(cast(Table, WebAuthnChallenge.__table__))


_CHALLENGES = cast(Table, WebAuthnChallenge.__table__)
# Single use, for this flow and purpose: a compare-and-set built once (one for the sign-in's challenges, which name
# no resident, one for a resident's own). Whether it still lives is read back, not asked in the WHERE: with
# `expires_at > now` there, PostgreSQL took the expiry index (its statistics never know the newest expiries) and
# read every live challenge instead of the one the digest names (bench/signins.py --explain, 1,000,000 residents).
_CONSUME = (
    update(_CHALLENGES)
    .where(
        _CHALLENGES.c.digest == bindparam("of_digest"),
        _CHALLENGES.c.purpose == bindparam("of_purpose"),
        _CHALLENGES.c.binding == bindparam("of_binding"),
        _CHALLENGES.c.consumed_at.is_(None),
    )
    .values(consumed_at=bindparam("at"))
    .returning(_CHALLENGES.c.expires_at)
)
CONSUME_CHALLENGE = _CONSUME.where(_CHALLENGES.c.resident_id.is_(None))
CONSUME_RESIDENTS_CHALLENGE = _CONSUME.where(_CHALLENGES.c.resident_id == bindparam("of_resident"))
# The passkey an assertion names, with its resident (who signs in): one statement, built once.
FIND_PASSKEY = (
    select(Passkey, Resident)
    .join(Resident, Resident.id == Passkey.resident_id)
    .where(Passkey.credential_id == bindparam("credential_id"))
)
_PASSKEYS = cast(Table, Passkey.__table__)
RECORD_USE = (
    update(_PASSKEYS)
    .where(_PASSKEYS.c.id == bindparam("passkey"))
    .values(sign_count=bindparam("count"), backed_up=bindparam("synced"), last_used_at=bindparam("at"))
)


def _store_challenge(
    db: Session, challenge: bytes, *, purpose: str, resident_id: uuid.UUID | None, binding: str, now: dt.datetime
) -> None:
    db.execute(
        INSERT_CHALLENGE,
        {
            "digest": _digest(challenge),
            "purpose": purpose,
            "resident_id": resident_id,
            "binding": _digest(binding.encode()),
            "expires_at": now + CHALLENGE_TTL,
        },
    )


def _consume_challenge(
    db: Session,
    client_data_challenge: bytes,
    *,
    purpose: str,
    resident_id: uuid.UUID | None,
    binding: str,
    now: dt.datetime,
) -> None:
    """Use the challenge the response answers, once, for this flow and purpose.

    Raises:
        PasskeyRejectedError: unknown, expired, replayed, or issued to another flow.
    """
    parameters = {
        "of_digest": _digest(client_data_challenge),
        "of_purpose": purpose,
        "of_binding": _digest(binding.encode()),
        "at": now,
    }
    if resident_id is None:
        consumed = db.execute(CONSUME_CHALLENGE, parameters)
    else:
        consumed = db.execute(CONSUME_RESIDENTS_CHALLENGE, {**parameters, "of_resident": resident_id})
    expires_at = consumed.scalar()
    if expires_at is None or expires_at <= now:  # unknown, used, another flow's; or expired (now used up too)
        raise PasskeyRejectedError("challenge_unknown_expired_or_used")


def _client_data_challenge(response: dict[str, Any]) -> bytes:
    """The challenge the browser signed, read from clientDataJSON (checked again by py_webauthn)."""
    try:
        client_data = json.loads(base64url_to_bytes(response["response"]["clientDataJSON"]))
        return base64url_to_bytes(client_data["challenge"])
    except (KeyError, TypeError, ValueError):
        raise PasskeyRejectedError("malformed_client_data") from None


def _parse(response_json: str) -> dict[str, Any]:
    if len(response_json.encode()) > MAX_RESPONSE_BYTES:
        raise PasskeyRejectedError("oversized_response")
    try:
        data = json.loads(response_json)
    except ValueError:
        raise PasskeyRejectedError("malformed_json") from None
    if not isinstance(data, dict):
        raise PasskeyRejectedError("malformed_json")
    return data


# -- registration ----------------------------------------------------------------------------------------------------


def registration_options(
    db: Session,
    resident: Resident,
    *,
    rp_id: str,
    rp_name: str,
    binding: str,
    policy: AttestationPolicy,
    now: dt.datetime,
) -> str:
    """Creation options (JSON) for a new passkey: discoverable, user-verifying, existing ones excluded."""
    existing = db.scalars(select(Passkey.credential_id).where(Passkey.resident_id == resident.id)).all()
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=rp_name,
        user_id=resident.id.bytes,
        user_name=resident.phone or str(resident.id),
        user_display_name=resident.name or "",
        timeout=CEREMONY_TIMEOUT_MS,
        # Ask for attestation whenever it can count: required, or a metadata file lists models that reach phrh.
        attestation=(
            AttestationConveyancePreference.DIRECT
            if policy.require_attestation or policy.roots_by_aaguid
            else AttestationConveyancePreference.NONE
        ),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            require_resident_key=True,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=credential) for credential in existing],
    )
    _store_challenge(db, options.challenge, purpose=REGISTER, resident_id=resident.id, binding=binding, now=now)
    return options_to_json(options)


def register_passkey(
    db: Session,
    resident: Resident,
    response_json: str,
    *,
    rp_id: str,
    origin: str,
    binding: str,
    policy: AttestationPolicy,
    name: str,
    now: dt.datetime,
    provisional_until: dt.datetime | None = None,
) -> Passkey:
    """Verify a registration response and store the passkey; nothing is stored from a failed ceremony.

    `provisional_until` (from `recovery_wait_until`) makes it count as the sign-in that added it until then.

    Raises:
        PasskeyRejectedError: why the response was refused.
    """
    response = _parse(response_json)
    challenge = _client_data_challenge(response)
    _consume_challenge(db, challenge, purpose=REGISTER, resident_id=resident.id, binding=binding, now=now)
    attestation = _attestation_object(response)
    # Only the claimed model's roots: a chain to model A's root must not vouch for model B.
    roots = policy.roots_for(claimed_aaguid(attestation))
    try:
        verified = _verify_registration(response, challenge, rp_id=rp_id, origin=origin, roots=roots)
    except PasskeyRejectedError:
        if not roots:
            raise
        # Refused with the model's roots. If the response is sound without them, its attestation chains
        # elsewhere: that counts as no attestation (refused below only when attestation is required).
        verified = _verify_registration(response, challenge, rp_id=rp_id, origin=origin, roots=())
        roots = ()
    if len(verified.credential_id) > MAX_CREDENTIAL_ID:
        raise PasskeyRejectedError("credential_id_too_long")
    aaguid = str(uuid.UUID(verified.aaguid)) if verified.aaguid else ZERO_AAGUID
    # Attested means a certificate chain to a root the deployment trusts for this model: "none" and self
    # attestation (no x5c) prove nothing about the authenticator.
    attested = attestation.fmt != AttestationFormat.NONE and has_certificate_chain(
        attestation, roots=roots, aaguid=uuid.UUID(aaguid).bytes
    )
    if policy.require_attestation and not attested:
        raise PasskeyRejectedError("attestation_required")
    if db.scalar(select(Passkey.id).where(Passkey.credential_id == verified.credential_id)) is not None:
        raise PasskeyRejectedError("credential_already_registered")
    transports = response.get("response", {}).get("transports") or []
    passkey = Passkey(
        resident_id=resident.id,
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=aaguid,
        transports=[t for t in transports if t in {item.value for item in AuthenticatorTransport}],
        backup_eligible=verified.credential_device_type is CredentialDeviceType.MULTI_DEVICE,
        backed_up=verified.credential_backed_up,
        attested=attested,
        name=clean_name(name),
        created_at=now,
        provisional_until=provisional_until,
    )
    db.add(passkey)
    db.flush()
    # The recovery path is on record with the time the passkey starts to count in full.
    waiting: dict[str, Any] = {"provisional_until": provisional_until.isoformat()} if provisional_until else {}
    record_event(
        db, "passkey.registered", result=SUCCESS, resident_id=resident.id, synced=passkey.backup_eligible, **waiting
    )
    return passkey


def recovery_wait_until(
    db: Session, login: LoginSession, *, wait: dt.timedelta, now: dt.datetime
) -> dt.datetime | None:
    """Until when a passkey added now in `login` counts only as the sign-in that added it; None when it counts as
    a passkey at once.

    A resident without a passkey or an authenticator app adds their first passkey on the strength of the carrier
    verification that proved who they are. One who has either must have signed in with it recently; otherwise
    this is the recovery path (a lost phone, or a swapped SIM), and the passkey waits out `wait` first."""
    if not has_vouching_method(db, login.resident_id, now=now):
        return None
    for event in login.events:
        recent = AuthEvent.from_json(event)
        if recent.method in VOUCHING_METHODS and now - recent.at <= RECENT_SIGN_IN:
            return None
    return now + wait


def has_vouching_method(db: Session, resident_id: uuid.UUID, *, now: dt.datetime) -> bool:
    """Whether the resident has a usable passkey past any waiting period, or a confirmed authenticator app."""
    passkey = db.scalar(
        select(Passkey.id)
        .where(
            Passkey.resident_id == resident_id,
            Passkey.suspected_clone_at.is_(None),
            or_(Passkey.provisional_until.is_(None), Passkey.provisional_until <= now),
        )
        .limit(1)
    )
    return passkey is not None or has_totp(db, resident_id)


def sign_in_method(passkey: Passkey, *, now: dt.datetime) -> Method:
    """What a sign-in with this passkey is worth (docs/integration.md section 6)."""
    if passkey.is_provisional(now):
        return Method.PASSKEY_PROVISIONAL
    return Method.PASSKEY_HARDWARE if passkey.is_hardware_bound else Method.PASSKEY


def _attestation_object(response: dict[str, Any]) -> AttestationObject:
    """The response's attestation object, parsed (py_webauthn parses and checks it again).

    Raises:
        PasskeyRejectedError: missing or not an attestation object.
    """
    try:
        return parse_attestation_object(base64url_to_bytes(response["response"]["attestationObject"]))
    except (WebAuthnException, KeyError, TypeError, ValueError) as exc:
        raise PasskeyRejectedError(f"registration_invalid: {type(exc).__name__}") from None


def _verify_registration(
    response: dict[str, Any], challenge: bytes, *, rp_id: str, origin: str, roots: tuple[bytes, ...]
) -> VerifiedRegistration:
    """py_webauthn's registration checks, with `roots` (PEM) as the only roots an x5c chain may end at.

    Raises:
        PasskeyRejectedError: the response fails a check.
    """
    try:
        return verify_registration_response(
            credential=response,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_presence=True,
            require_user_verification=True,
            pem_root_certs_bytes_by_fmt={fmt: list(roots) for fmt in AttestationFormat} if roots else None,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PasskeyRejectedError(f"registration_invalid: {type(exc).__name__}") from None


# -- authentication ---------------------------------------------------------------------------------------------------


def authentication_options(db: Session, *, rp_id: str, binding: str, now: dt.datetime) -> str:
    """Request options (JSON) for a discoverable-credential sign-in: no identifier, user verification required."""
    options = generate_authentication_options(
        rp_id=rp_id, timeout=CEREMONY_TIMEOUT_MS, user_verification=UserVerificationRequirement.REQUIRED
    )
    _store_challenge(db, options.challenge, purpose=AUTHENTICATE, resident_id=None, binding=binding, now=now)
    return options_to_json(options)


@dataclass(frozen=True, slots=True)
class VerifiedPasskey:
    """A passkey an assertion proved, and its resident (read with it)."""

    passkey: Passkey
    resident: Resident


def authenticate_passkey(
    db: Session, response_json: str, *, rp_id: str, origin: str, binding: str, now: dt.datetime, client_ip: str | None
) -> VerifiedPasskey:
    """Verify an assertion; the passkey it proves and its resident. The counter and backup state are updated.

    Raises:
        PasskeyClonedError: the counter went backwards (the passkey is marked and refused from now on).
        PasskeyRejectedError: anything else wrong, named for the audit log.
    """
    response = _parse(response_json)
    try:
        credential = parse_authentication_credential_json(response)
    except (WebAuthnException, ValueError, KeyError, TypeError):
        raise PasskeyRejectedError("malformed_credential") from None
    challenge = _client_data_challenge(response)
    _consume_challenge(db, challenge, purpose=AUTHENTICATE, resident_id=None, binding=binding, now=now)
    found = db.execute(FIND_PASSKEY, {"credential_id": credential.raw_id}).first()
    if found is None:
        raise PasskeyRejectedError("unknown_credential")
    passkey, resident = found
    if passkey.suspected_clone_at is not None:
        raise PasskeyClonedError("credential_marked_cloned")
    # WebAuthn §7.2 step 6: the user handle, when given, must be the passkey owner's.
    user_handle = credential.response.user_handle
    if user_handle is not None and user_handle != passkey.resident_id.bytes:
        raise PasskeyRejectedError("user_handle_mismatch")
    try:
        # The counter is compared below, after the signature: otherwise anyone who knows a credential id could
        # send a low counter and get the passkey blocked as cloned.
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            credential_public_key=passkey.public_key,
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PasskeyRejectedError(f"assertion_invalid: {type(exc).__name__}") from None
    if (verified.new_sign_count or passkey.sign_count) and verified.new_sign_count <= passkey.sign_count:
        # WebAuthn §6.1.1: a counter that does not grow means a cloned authenticator may exist.
        passkey.suspected_clone_at = now
        record_event(
            db, "passkey.clone_suspected", result=FAILURE, resident_id=passkey.resident_id, client_ip=client_ip
        )
        raise PasskeyClonedError("sign_count_went_backwards")
    used = {"sign_count": verified.new_sign_count, "backed_up": verified.credential_backed_up, "last_used_at": now}
    db.execute(RECORD_USE, {"passkey": passkey.id, "count": used["sign_count"], "synced": used["backed_up"], "at": now})
    for column, value in used.items():
        set_committed_value(passkey, column, value)  # as stored: nothing left for the unit of work
    return VerifiedPasskey(passkey, resident)


# -- management ------------------------------------------------------------------------------------------------------


def clean_name(name: str) -> str:
    text = " ".join((name or "").split())[:NAME_MAX]
    return "".join(ch for ch in text if ch.isprintable()) or "패스키"


def list_passkeys(db: Session, resident_id: uuid.UUID) -> list[Passkey]:
    return list(db.scalars(select(Passkey).where(Passkey.resident_id == resident_id).order_by(Passkey.created_at)))


def provisional_passkeys(db: Session, resident_id: uuid.UUID, *, now: dt.datetime) -> list[Passkey]:
    """Passkeys added on the recovery path and still waiting: every signed-in browser shows them."""
    return [passkey for passkey in list_passkeys(db, resident_id) if passkey.is_provisional(now)]


def find_passkey(db: Session, resident_id: uuid.UUID, passkey_id: str) -> Passkey | None:
    try:
        key = uuid.UUID(passkey_id)
    except ValueError:
        return None
    passkey = db.get(Passkey, key)
    return passkey if passkey is not None and passkey.resident_id == resident_id else None


def rename_passkey(db: Session, passkey: Passkey, name: str) -> None:
    passkey.name = clean_name(name)


def remove_passkey(db: Session, passkey: Passkey, *, now: dt.datetime) -> None:
    waiting: dict[str, Any] = {"provisional": True} if passkey.is_provisional(now) else {}
    record_event(db, "passkey.removed", result=SUCCESS, resident_id=passkey.resident_id, **waiting)
    db.delete(passkey)
    db.flush()


def new_binding() -> str:
    """A secret for this browser's ceremonies: challenges are bound to its digest (kept in the flow cookie)."""
    return secrets.token_urlsafe(32)
