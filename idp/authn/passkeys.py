"""Passkeys (WebAuthn Level 3) on py_webauthn: options, verification, single-use challenges, clone detection."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import or_, select, update
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
    validate_certificate_chain,
)
from webauthn.helpers.exceptions import InvalidCertificateChain, WebAuthnException
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
from idp.authn.sessions import RECENT_SIGN_IN
from idp.authn.totp import has_totp
from idp.models import LoginSession, Passkey, Resident, WebAuthnChallenge

CHALLENGE_TTL = dt.timedelta(minutes=5)  # DESIGN section 7 / issue: challenges expire after 5 minutes
CEREMONY_TIMEOUT_MS = 120_000
MAX_RESPONSE_BYTES = 64 * 1024
REGISTER = "register"
AUTHENTICATE = "authenticate"
NAME_MAX = 100
MAX_CREDENTIAL_ID = 1023  # WebAuthn Level 3 §7.1 step 18
ZERO_AAGUID = "00000000-0000-0000-0000-000000000000"
# Latest statuses after which a model's keys or user verification cannot be trusted: FIDO Metadata Service v3
# §3.1.4 AuthenticatorStatus, https://fidoalliance.org/specs/mds/fido-metadata-service-v3.0-ps-20210518.html
UNTRUSTED_STATUSES = frozenset(
    {
        "REVOKED",
        "USER_VERIFICATION_BYPASS",
        "ATTESTATION_KEY_COMPROMISE",
        "USER_KEY_REMOTE_COMPROMISE",
        "USER_KEY_PHYSICAL_COMPROMISE",
    }
)
# WebAuthn Level 3 §8.2.1, https://www.w3.org/TR/webauthn-3/#sctn-packed-attestation-cert-requirements
FIDO_GEN_CE_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
ATTESTATION_OU = "Authenticator Attestation"
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


@dataclass(frozen=True, slots=True)
class AttestationPolicy:
    """What registration demands: attestation from authenticator models a deployment allows (FIDO metadata).

    `roots_by_aaguid` maps each allowed model's AAGUID to its attestation root certificates (PEM): a certificate
    chain vouches only for the model whose roots it reaches. `allowed_aaguids` holds every allowed model, and
    always includes the keys of `roots_by_aaguid`; a model without roots can never be attested.
    """

    require_attestation: bool = False
    allowed_aaguids: frozenset[str] = frozenset()
    roots_by_aaguid: Mapping[str, tuple[bytes, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        roots = MappingProxyType({_canonical_aaguid(key): tuple(pems) for key, pems in self.roots_by_aaguid.items()})
        allowed = frozenset(_canonical_aaguid(aaguid) for aaguid in self.allowed_aaguids) | roots.keys()
        # Frozen: the dataclass way to normalise fields is to set them once here.
        object.__setattr__(self, "roots_by_aaguid", roots)
        object.__setattr__(self, "allowed_aaguids", allowed)

    def roots_for(self, aaguid: str) -> tuple[bytes, ...]:
        """The attestation roots (PEM) of this authenticator model; empty when the model is not allowed."""
        return self.roots_by_aaguid.get(_canonical_aaguid(aaguid), ())

    @classmethod
    def from_metadata_file(cls, path: Path | None, *, require: bool) -> AttestationPolicy:
        """The policy for a FIDO metadata file (no allowed models when `path` is None).

        Accepted: the decoded payload of the FIDO MDS3 BLOB (`{"entries": [...]}`), a JSON list of metadata
        statements (roots as base64 DER), or a list of `{"aaguid", "attestationRootCertificates": [PEM, ...]}`.
        Models without an AAGUID (U2F, UAF) are skipped; models whose latest status report says they cannot be
        trusted are left out. The BLOB's JWS signature is not checked here: the file holds the payload an admin
        has verified (docs/admin.md, "Passkeys").

        Raises:
            ValueError: the file cannot be read or is in none of these formats (one line naming the file).
        """
        if path is None:
            return cls(require_attestation=require)
        try:
            document = json.loads(path.read_bytes())
            roots = _roots_by_aaguid(document)
        except OSError as exc:
            raise ValueError(f"FIDO metadata file {path}: cannot be read ({exc.strerror or exc})") from None
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError included
            raise ValueError(f"FIDO metadata file {path}: {' '.join(str(exc).split())}") from None
        return cls(require_attestation=require, roots_by_aaguid=roots)


def _canonical_aaguid(value: str) -> str:
    """The AAGUID in the form py_webauthn and the passkey table use: lower-case, hyphenated.

    Raises:
        ValueError: not a UUID.
    """
    return str(uuid.UUID(value))


def _roots_by_aaguid(document: object) -> dict[str, tuple[bytes, ...]]:
    """Each trusted model's attestation roots (PEM) from a parsed metadata document.

    Raises:
        ValueError: the document is in none of the accepted formats; the message says where.
    """
    # MDS3 §3.1.6 MetadataBLOBPayload: {"legalHeader", "no", "nextUpdate", "entries": [...]}.
    if isinstance(document, dict) and isinstance(document.get("entries"), list):
        entries: list[object] = document["entries"]
    elif isinstance(document, list):
        entries = document
    else:
        raise ValueError('expected the FIDO MDS3 payload ({"entries": [...]}) or a JSON list of metadata statements')
    roots: dict[str, dict[bytes, None]] = {}
    untrusted: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a JSON object")
        # An MDS3 entry wraps its statement with status reports; a bare statement is its own statement.
        statement = entry.get("metadataStatement", entry)
        if not isinstance(statement, dict):
            raise ValueError(f"{where}: metadataStatement is not a JSON object")
        aaguid = entry.get("aaguid") or statement.get("aaguid")
        if not aaguid:
            continue  # U2F (attestationCertificateKeyIdentifiers) and UAF (aaid) models make no passkeys
        try:
            key = _canonical_aaguid(aaguid)
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{where}: aaguid {aaguid!r} is not a UUID") from None
        if _latest_status(entry.get("statusReports"), where=where) in UNTRUSTED_STATUSES:
            untrusted.add(key)
            continue
        certificates = statement.get("attestationRootCertificates", [])
        if not isinstance(certificates, list):
            raise ValueError(f"{where}: attestationRootCertificates is not a list")
        pems = roots.setdefault(key, {})
        for position, certificate in enumerate(certificates):
            pems[_pem_certificate(certificate, where=f"{where} ({key}) attestationRootCertificates[{position}]")] = None
    # A model reported untrusted stays out, even if another entry lists it again.
    return {key: tuple(pems) for key, pems in roots.items() if key not in untrusted}


def _latest_status(reports: object, *, where: str) -> str | None:
    """The status of the most recent report (MDS3 §3.1.3 StatusReport), or None without reports.

    Raises:
        ValueError: statusReports is not a list of objects with a string status.
    """
    if reports is None or reports == []:
        return None
    if not isinstance(reports, list) or not all(
        isinstance(report, dict) and isinstance(report.get("status"), str) for report in reports
    ):
        raise ValueError(f"{where}: statusReports is not a list of status reports")
    # effectiveDate is an ISO 8601 date, so text order is date order; without a date on every report, the
    # list's order (MDS appends new reports) is all there is to go by.
    if all(isinstance(report.get("effectiveDate"), str) for report in reports):
        status: str = max(enumerate(reports), key=lambda item: (item[1]["effectiveDate"], item[0]))[1]["status"]
        return status
    last: str = reports[-1]["status"]
    return last


def _pem_certificate(value: object, *, where: str) -> bytes:
    """A root certificate from metadata, PEM or base64 DER (FIDO Metadata Statement §4), as canonical PEM.

    Raises:
        ValueError: not a certificate.
    """
    try:
        if not isinstance(value, str):
            raise TypeError
        if "-----BEGIN" in value:
            certificate = x509.load_pem_x509_certificate(value.encode())
        else:
            certificate = x509.load_der_x509_certificate(base64.b64decode("".join(value.split()), validate=True))
    except (TypeError, ValueError):  # binascii.Error is a ValueError
        raise ValueError(f"{where} is not a PEM or base64 DER certificate") from None
    return certificate.public_bytes(serialization.Encoding.PEM)


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
    roots = policy.roots_for(_claimed_aaguid(attestation))
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
    attested = attestation.fmt != AttestationFormat.NONE and _has_certificate_chain(
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
    """What a sign-in with this passkey is worth (DESIGN section 10)."""
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


def _claimed_aaguid(attestation: AttestationObject) -> str:
    """The AAGUID in authData, as the authenticator claims it before anything is verified."""
    credential = attestation.auth_data.attested_credential_data
    return str(uuid.UUID(bytes=credential.aaguid)) if credential and len(credential.aaguid) == 16 else ZERO_AAGUID


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


def _has_certificate_chain(attestation: AttestationObject, *, roots: tuple[bytes, ...], aaguid: bytes) -> bool:
    """Whether the attestation's x5c chains to one of `roots` (PEM), in a certificate for model `aaguid`.

    py_webauthn has already checked the signature, but it passes any chain when given no roots, adds its
    built-in vendor roots for the android-key and apple formats, and checks neither the packed certificate
    requirements nor the certificate's AAGUID (WebAuthn Level 3 §8.2.1): so all three are checked here.
    """
    x5c = attestation.att_stmt.x5c if attestation.att_stmt else None
    if not x5c or not roots:
        return False
    try:
        validate_certificate_chain(x5c=x5c, pem_root_certs_bytes=list(roots))
        certificate = x509.load_der_x509_certificate(x5c[0])
        if attestation.fmt == AttestationFormat.PACKED and not _meets_packed_requirements(certificate):
            return False
        return _certificate_aaguid_matches(certificate, aaguid)
    except (InvalidCertificateChain, ValueError):
        return False


def _meets_packed_requirements(certificate: x509.Certificate) -> bool:
    """WebAuthn Level 3 §8.2.1: version 3, subject C, O, OU "Authenticator Attestation" and CN, not a CA.

    Raises:
        ValueError: the certificate's extensions cannot be parsed.
    """
    subject = certificate.subject
    units = [attribute.value for attribute in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    named = all(
        subject.get_attributes_for_oid(oid)
        for oid in (NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME)
    )
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return certificate.version is x509.Version.v3 and named and units == [ATTESTATION_OU] and not constraints.ca


def _certificate_aaguid_matches(certificate: x509.Certificate, aaguid: bytes) -> bool:
    """Whether the certificate's id-fido-gen-ce-aaguid extension, when it has one, names this AAGUID.

    A vendor root often signs the certificates of several models; only this extension tells them apart.

    Raises:
        ValueError: the certificate's extensions cannot be parsed.
    """
    try:
        extension = certificate.extensions.get_extension_for_oid(FIDO_GEN_CE_AAGUID).value
    except x509.ExtensionNotFound:
        return True
    # The extension's value is an OCTET STRING of the 16 AAGUID bytes: DER tag 0x04, length 0x10.
    return isinstance(extension, x509.UnrecognizedExtension) and extension.value == b"\x04\x10" + aaguid


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
