"""A software WebAuthn authenticator and client for tests: ES256 passkeys with "none", self or packed attestation.

`SoftAuthenticator.create` answers creation options (what `navigator.credentials.create()` returns, in its
JSON form) and `get` answers request options (`navigator.credentials.get()`). Keyword knobs make the bad
responses the verifier must refuse: another origin or RP ID, no user verification, clientDataJSON changed
after signing, a chosen signature counter, broken CBOR. `CertificateAuthority` plays an authenticator vendor:
its root issues the attestation certificates that `create(..., attestation=...)` sends in a packed x5c.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Authenticator data flags (WebAuthn §6.1).
UP = 0x01
UV = 0x04
BE = 0x08
BS = 0x10
AT = 0x40

# COSE (RFC 9052/9053): kty EC2, alg ES256, crv P-256.
COSE_KTY, COSE_ALG, COSE_CRV, COSE_X, COSE_Y = 1, 3, -1, -2, -3
KTY_EC2, ALG_ES256, CRV_P256 = 2, -7, 1

# A map that announces three entries and holds one: cbor2 cannot decode it.
MALFORMED_CBOR = b"\xa3\x63fmt\x64none"

# WebAuthn §8.2.1: packed attestation certificates name the model in this extension and carry this OU.
FIDO_GEN_CE_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
ATTESTATION_OU = "Authenticator Attestation"
# The verifier checks certificate validity against the wall clock (OpenSSL), not a time a test can inject:
# the certificates hold from 2020 to 2100 unless a test asks otherwise.
NOT_BEFORE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class AttestationKey:
    """An attestation key pair and its certificate: what a packed statement signs with and sends as x5c."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def x5c(self) -> list[bytes]:
        return [self.certificate.public_bytes(serialization.Encoding.DER)]


@dataclass(frozen=True)
class CertificateAuthority:
    """An authenticator vendor's attestation root: the certificate a FIDO metadata statement lists."""

    name: str
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        """A new self-signed ES256 root CA named after the vendor."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "KR"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Attestation Root CA"),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, certificate)

    @property
    def pem(self) -> str:
        """The root as PEM text (the IdP's own metadata list)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def base64_der(self) -> str:
        """The root as base64 DER (FIDO metadata statements' attestationRootCertificates)."""
        return base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()

    def issue(
        self,
        aaguid: bytes | None,
        *,
        organizational_unit: str = ATTESTATION_OU,
        ca: bool = False,
        not_after: dt.datetime = NOT_AFTER,
    ) -> AttestationKey:
        """An attestation key with a certificate meeting WebAuthn §8.2.1, signed by this root.

        `aaguid` goes into the id-fido-gen-ce-aaguid extension (None leaves the extension out). The other
        knobs break one requirement each: the subject's OU, basicConstraints CA, the end of validity.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "KR"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} Passkey Attestation"),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()), critical=False
            )
        )
        if aaguid is not None:
            # The extension's value is an OCTET STRING holding the AAGUID (DER: tag 0x04, length 16).
            builder = builder.add_extension(
                x509.UnrecognizedExtension(FIDO_GEN_CE_AAGUID, b"\x04\x10" + aaguid), critical=False
            )
        return AttestationKey(key, builder.sign(self.private_key, hashes.SHA256()))


class ExcludedCredentialError(Exception):
    """The options exclude a credential this authenticator holds (a browser answers InvalidStateError)."""


class NoCredentialError(Exception):
    """No credential this authenticator holds fits the request (a browser answers NotAllowedError)."""


@dataclass
class Credential:
    """One discoverable credential: its key, whose account it is, and its signature counter."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0


class SoftAuthenticator:
    """A platform authenticator with user verification; `backup_eligible` makes it a synced passkey (BE+BS)."""

    def __init__(
        self,
        rp_id: str,
        origin: str,
        *,
        backup_eligible: bool = False,
        backed_up: bool | None = None,
        aaguid: bytes = bytes(16),
    ) -> None:
        if len(aaguid) != 16:
            raise ValueError("an AAGUID is 16 bytes")
        self.rp_id = rp_id
        self.origin = origin
        self.backup_eligible = backup_eligible
        self.backed_up = backup_eligible if backed_up is None else backed_up
        self.aaguid = aaguid
        self.credentials: dict[bytes, Credential] = {}

    # -- state -----------------------------------------------------------------------------------------------------

    def clone(self) -> SoftAuthenticator:
        """A copy holding the same private keys and counters: the two then count independently."""
        twin = SoftAuthenticator(
            self.rp_id, self.origin, backup_eligible=self.backup_eligible, backed_up=self.backed_up, aaguid=self.aaguid
        )
        twin.credentials = {key: copy.copy(credential) for key, credential in self.credentials.items()}
        return twin

    def add_credential(self, credential_id: bytes, user_handle: bytes, *, sign_count: int = 0) -> Credential:
        """Hold a credential with this id under a fresh key: an impostor knowing only someone's credential id."""
        credential = Credential(
            credential_id, ec.generate_private_key(ec.SECP256R1()), self.rp_id, user_handle, sign_count
        )
        self.credentials[credential_id] = credential
        return credential

    @property
    def last_credential_id(self) -> bytes:
        return list(self.credentials)[-1]

    # -- navigator.credentials.create() ----------------------------------------------------------------------------

    def create(
        self,
        options_json: Mapping[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        user_verified: bool = True,
        flags: int | None = None,
        sign_count: int = 0,
        credential_id: bytes | None = None,
        client_data: Mapping[str, Any] | None = None,
        malformed_attestation: bool = False,
        transports: tuple[str, ...] = ("internal", "hybrid"),
        attestation: AttestationKey | Literal["none", "self"] = "none",
    ) -> dict[str, Any]:
        """A registration response (RegistrationResponseJSON) to creation options.

        Knobs: `origin` and `rp_id` as a phishing site would send them; `user_verified=False` clears UV;
        `flags` replaces the flags byte (AT is added); `client_data` overrides clientDataJSON fields;
        `malformed_attestation` sends an attestationObject that is not CBOR. `attestation` picks the statement
        (WebAuthn §8.2): "none", packed self attestation ("self", signed by the credential key), or packed
        with an `AttestationKey`'s certificate as x5c, signed by that key.
        """
        excluded = {from_b64url(item["id"]) for item in options_json.get("excludeCredentials") or []}
        if excluded & set(self.credentials):
            raise ExcludedCredentialError("this authenticator already holds an excluded credential")
        credential_id = credential_id if credential_id is not None else secrets.token_bytes(32)
        private_key = ec.generate_private_key(ec.SECP256R1())
        self.credentials[credential_id] = Credential(
            credential_id,
            private_key,
            self.rp_id,
            from_b64url(options_json["user"]["id"]),
            sign_count,
        )
        numbers = private_key.public_key().public_numbers()
        cose_key = cbor2.dumps(
            {
                COSE_KTY: KTY_EC2,
                COSE_ALG: ALG_ES256,
                COSE_CRV: CRV_P256,
                COSE_X: numbers.x.to_bytes(32, "big"),
                COSE_Y: numbers.y.to_bytes(32, "big"),
            }
        )
        auth_data = (
            self._auth_data_head(rp_id, user_verified=user_verified, flags=flags, extra=AT, sign_count=sign_count)
            + self.aaguid
            + len(credential_id).to_bytes(2, "big")
            + credential_id
            + cose_key
        )
        client_data_json = self._client_data("webauthn.create", options_json["challenge"], origin, client_data)
        fmt, statement = self._attestation_statement(
            attestation, private_key, auth_data + hashlib.sha256(client_data_json).digest()
        )
        attestation_object = (
            MALFORMED_CBOR
            if malformed_attestation
            else cbor2.dumps({"fmt": fmt, "attStmt": statement, "authData": auth_data})
        )
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data_json),
                "attestationObject": b64url(attestation_object),
                "transports": list(transports),
            },
        }

    # -- navigator.credentials.get() -------------------------------------------------------------------------------

    def get(
        self,
        options_json: Mapping[str, Any],
        credential_id: bytes | None = None,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        user_verified: bool = True,
        flags: int | None = None,
        sign_count: int | None = None,
        user_handle: bytes | None = None,
        client_data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An assertion (AuthenticationResponseJSON) to request options, signed over authData‖SHA-256(clientData).

        Each use increments the credential's counter; `sign_count` reports another value once (the counter
        is left as it was). `client_data` overrides clientDataJSON fields after signing: the signature no
        longer matches. `user_handle` replaces the one stored at creation.
        """
        credential = self._choose(options_json, credential_id)
        if sign_count is None:
            credential.sign_count += 1
            sign_count = credential.sign_count
        auth_data = self._auth_data_head(rp_id, user_verified=user_verified, flags=flags, sign_count=sign_count)
        client_data_json = self._client_data("webauthn.get", options_json["challenge"], origin, None)
        signature = credential.private_key.sign(
            auth_data + hashlib.sha256(client_data_json).digest(), ec.ECDSA(hashes.SHA256())
        )
        if client_data is not None:
            client_data_json = self._client_data("webauthn.get", options_json["challenge"], origin, client_data)
        return {
            "id": b64url(credential.credential_id),
            "rawId": b64url(credential.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data_json),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(credential.user_handle if user_handle is None else user_handle),
            },
        }

    # -- parts -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _attestation_statement(
        attestation: AttestationKey | Literal["none", "self"], credential_key: ec.EllipticCurvePrivateKey, signed: bytes
    ) -> tuple[str, dict[str, Any]]:
        """The format and attStmt (WebAuthn §8.2 packed: alg, sig over authData‖clientDataHash, x5c)."""
        if isinstance(attestation, AttestationKey):
            signature = attestation.private_key.sign(signed, ec.ECDSA(hashes.SHA256()))
            return "packed", {"alg": ALG_ES256, "sig": signature, "x5c": attestation.x5c}
        if attestation == "self":
            return "packed", {"alg": ALG_ES256, "sig": credential_key.sign(signed, ec.ECDSA(hashes.SHA256()))}
        return "none", {}

    def _choose(self, options_json: Mapping[str, Any], credential_id: bytes | None) -> Credential:
        if credential_id is not None:
            if credential_id not in self.credentials:
                raise NoCredentialError("this authenticator does not hold that credential")
            return self.credentials[credential_id]
        allowed = [from_b64url(item["id"]) for item in options_json.get("allowCredentials") or []]
        rp_id = options_json.get("rpId", self.rp_id)
        candidates = [
            credential
            for credential in self.credentials.values()
            if credential.rp_id == rp_id and (not allowed or credential.credential_id in allowed)
        ]
        if not candidates:
            raise NoCredentialError("no credential for this relying party")
        return candidates[-1]

    def _auth_data_head(
        self, rp_id: str | None, *, user_verified: bool, flags: int | None, sign_count: int, extra: int = 0
    ) -> bytes:
        if flags is None:
            flags = UP | (UV if user_verified else 0)
            flags |= (BE if self.backup_eligible else 0) | (BS if self.backed_up else 0)
        flags |= extra
        rp_id_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        return rp_id_hash + bytes([flags]) + sign_count.to_bytes(4, "big")

    def _client_data(self, kind: str, challenge: str, origin: str | None, override: Mapping[str, Any] | None) -> bytes:
        fields: dict[str, Any] = {
            "type": kind,
            "challenge": challenge,
            "origin": origin or self.origin,
            "crossOrigin": False,
        }
        fields.update(override or {})
        return json.dumps(fields, separators=(",", ":")).encode()
