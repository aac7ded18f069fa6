"""Passkeys (WebAuthn Level 3) on py_webauthn: options, verification, single-use challenges, clone detection."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
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
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from idp.audit import FAILURE, SUCCESS, record_event
from idp.models import Passkey, Resident, WebAuthnChallenge

CHALLENGE_TTL = dt.timedelta(minutes=5)  # DESIGN section 7 / issue: challenges expire after 5 minutes
CEREMONY_TIMEOUT_MS = 120_000
MAX_RESPONSE_BYTES = 64 * 1024
REGISTER = "register"
AUTHENTICATE = "authenticate"
NAME_MAX = 100
MAX_CREDENTIAL_ID = 1023  # WebAuthn Level 3 §7.1 step 18


class PasskeyRejectedError(Exception):
    """A WebAuthn ceremony failed; `reason` names why for the audit log (never shown raw to residents)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PasskeyClonedError(PasskeyRejectedError):
    """The signature counter went backwards: two authenticators hold this credential."""


@dataclass(frozen=True, slots=True)
class AttestationPolicy:
    """What registration demands: attestation from authenticator models a deployment allows (FIDO metadata)."""

    require_attestation: bool = False
    allowed_aaguids: frozenset[str] = frozenset()
    root_certificates: tuple[bytes, ...] = ()

    @classmethod
    def from_metadata_file(cls, path: Path | None, *, require: bool) -> AttestationPolicy:
        """Read a FIDO-metadata-like JSON file: a list of {"aaguid", "attestationRootCertificates": [PEM…]}."""
        if path is None:
            return cls(require_attestation=require)
        entries = json.loads(path.read_text())
        aaguids = frozenset(str(entry["aaguid"]).lower() for entry in entries)
        roots = tuple(pem.encode() for entry in entries for pem in entry.get("attestationRootCertificates", []))
        return cls(require_attestation=require, allowed_aaguids=aaguids, root_certificates=roots)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _store_challenge(
    db: Session, challenge: bytes, *, purpose: str, resident_id: uuid.UUID | None, binding: str, now: dt.datetime
) -> None:
    db.add(
        WebAuthnChallenge(
            digest=_digest(challenge),
            purpose=purpose,
            resident_id=resident_id,
            binding=_digest(binding.encode()),
            expires_at=now + CHALLENGE_TTL,
        )
    )
    db.flush()


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
    consumed = db.execute(
        update(WebAuthnChallenge)
        .where(
            WebAuthnChallenge.digest == _digest(client_data_challenge),
            WebAuthnChallenge.purpose == purpose,
            WebAuthnChallenge.binding == _digest(binding.encode()),
            WebAuthnChallenge.consumed_at.is_(None),
            WebAuthnChallenge.expires_at > now,
            WebAuthnChallenge.resident_id.is_(None)
            if resident_id is None
            else WebAuthnChallenge.resident_id == resident_id,
        )
        .values(consumed_at=now)
        .execution_options(synchronize_session=False)
    )
    if consumed.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
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
        attestation=(
            AttestationConveyancePreference.DIRECT
            if policy.require_attestation
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
) -> Passkey:
    """Verify a registration response and store the passkey; nothing is stored from a failed ceremony.

    Raises:
        PasskeyRejectedError: why the response was refused.
    """
    response = _parse(response_json)
    _consume_challenge(
        db, _client_data_challenge(response), purpose=REGISTER, resident_id=resident.id, binding=binding, now=now
    )
    roots = {fmt: list(policy.root_certificates) for fmt in AttestationFormat} if policy.root_certificates else None
    try:
        verified = verify_registration_response(
            credential=response,
            expected_challenge=_client_data_challenge(response),
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_presence=True,
            require_user_verification=True,
            pem_root_certs_bytes_by_fmt=roots,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PasskeyRejectedError(f"registration_invalid: {type(exc).__name__}") from None
    if len(verified.credential_id) > MAX_CREDENTIAL_ID:
        raise PasskeyRejectedError("credential_id_too_long")
    aaguid = str(uuid.UUID(verified.aaguid)) if verified.aaguid else "00000000-0000-0000-0000-000000000000"
    # Attested means a certificate chain to a root the deployment trusts, for an allowed model: "none" and
    # self attestation (no x5c) prove nothing about the authenticator.
    attested = (
        str(verified.fmt) != AttestationFormat.NONE.value
        and bool(policy.root_certificates)
        and _has_certificate_chain(response)
        and aaguid.lower() in policy.allowed_aaguids
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
    )
    db.add(passkey)
    db.flush()
    record_event(db, "passkey.registered", result=SUCCESS, resident_id=resident.id, synced=passkey.backup_eligible)
    return passkey


# -- authentication ---------------------------------------------------------------------------------------------------


def authentication_options(db: Session, *, rp_id: str, binding: str, now: dt.datetime) -> str:
    """Request options (JSON) for a discoverable-credential sign-in: no identifier, user verification required."""
    options = generate_authentication_options(
        rp_id=rp_id, timeout=CEREMONY_TIMEOUT_MS, user_verification=UserVerificationRequirement.REQUIRED
    )
    _store_challenge(db, options.challenge, purpose=AUTHENTICATE, resident_id=None, binding=binding, now=now)
    return options_to_json(options)


def authenticate_passkey(
    db: Session, response_json: str, *, rp_id: str, origin: str, binding: str, now: dt.datetime, client_ip: str | None
) -> Passkey:
    """Verify an assertion and return the passkey it proves; the counter and backup state are updated.

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
    passkey = db.scalar(select(Passkey).where(Passkey.credential_id == credential.raw_id))
    if passkey is None:
        raise PasskeyRejectedError("unknown_credential")
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
    passkey.sign_count = verified.new_sign_count
    passkey.backed_up = verified.credential_backed_up
    passkey.last_used_at = now
    return passkey


# -- management ------------------------------------------------------------------------------------------------------


def _has_certificate_chain(response: dict[str, Any]) -> bool:
    try:
        attestation = parse_attestation_object(base64url_to_bytes(response["response"]["attestationObject"]))
    except (WebAuthnException, KeyError, TypeError, ValueError):
        return False
    return bool(attestation.att_stmt.x5c)


def clean_name(name: str) -> str:
    text = " ".join((name or "").split())[:NAME_MAX]
    return "".join(ch for ch in text if ch.isprintable()) or "패스키"


def list_passkeys(db: Session, resident_id: uuid.UUID) -> list[Passkey]:
    return list(db.scalars(select(Passkey).where(Passkey.resident_id == resident_id).order_by(Passkey.created_at)))


def find_passkey(db: Session, resident_id: uuid.UUID, passkey_id: str) -> Passkey | None:
    try:
        key = uuid.UUID(passkey_id)
    except ValueError:
        return None
    passkey = db.get(Passkey, key)
    return passkey if passkey is not None and passkey.resident_id == resident_id else None


def rename_passkey(db: Session, passkey: Passkey, name: str) -> None:
    passkey.name = clean_name(name)


def remove_passkey(db: Session, passkey: Passkey) -> None:
    record_event(db, "passkey.removed", result=SUCCESS, resident_id=passkey.resident_id)
    db.delete(passkey)
    db.flush()


def new_binding() -> str:
    """A secret for this browser's ceremonies: challenges are bound to its digest (kept in the flow cookie)."""
    return secrets.token_urlsafe(32)
