"""A software WebAuthn authenticator and client for tests: ES256 passkeys with "none" attestation.

`SoftAuthenticator.create` answers creation options (what `navigator.credentials.create()` returns, in its
JSON form) and `get` answers request options (`navigator.credentials.get()`). Keyword knobs make the bad
responses the verifier must refuse: another origin or RP ID, no user verification, clientDataJSON changed
after signing, a chosen signature counter, broken CBOR.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

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


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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
    ) -> dict[str, Any]:
        """A registration response (RegistrationResponseJSON) to creation options.

        Knobs: `origin` and `rp_id` as a phishing site would send them; `user_verified=False` clears UV;
        `flags` replaces the flags byte (AT is added); `client_data` overrides clientDataJSON fields;
        `malformed_attestation` sends an attestationObject that is not CBOR.
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
        attestation_object = (
            MALFORMED_CBOR
            if malformed_attestation
            else cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
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
