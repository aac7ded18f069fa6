"""Passkey attestation: the authenticator models a deployment trusts (FIDO metadata) and the certificate checks
that tell whether a registration came from one of them (docs/integration.md section 6: phrh)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from webauthn.helpers import validate_certificate_chain
from webauthn.helpers.exceptions import InvalidCertificateChain
from webauthn.helpers.structs import AttestationFormat, AttestationObject

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


def claimed_aaguid(attestation: AttestationObject) -> str:
    """The AAGUID in authData, as the authenticator claims it before anything is verified."""
    credential = attestation.auth_data.attested_credential_data
    return str(uuid.UUID(bytes=credential.aaguid)) if credential and len(credential.aaguid) == 16 else ZERO_AAGUID


def has_certificate_chain(attestation: AttestationObject, *, roots: tuple[bytes, ...], aaguid: bytes) -> bool:
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
