"""The sandbox agency's own secrets: the ES256 key that signs results, and the secret CIs and DIs derive from."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from idp.sandbox.state import read_or_create_private_file

SIGNING_KEY_FILE = "signing-key.pem"
DERIVATION_SECRET_FILE = "ci-secret"  # noqa: S105  (a file name, not a secret)
RESULT_ALG = "ES256"
RESULT_TYP = "carrier-result+jwt"  # explicit typing, so a result cannot pass for another JWT: RFC 8725 §3.11
PRIVATE_MEMBERS = frozenset({"d"})


class AgencyKeys:
    """The signing key and the CI/DI derivation secret, generated once into the state folder (0600).

    Both must outlive a restart: a new key would break results cached by the IdP mid-flight, and a new secret
    would give every synthetic person a new CI, as if the whole country had been re-issued one.
    """

    def __init__(self, signing_key: ECKey, derivation_secret: bytes) -> None:
        self._key = signing_key
        self._secret = derivation_secret
        self.kid = signing_key.thumbprint()  # RFC 7638: recomputable from the public key

    @classmethod
    def load(cls, state_dir: Path) -> AgencyKeys:
        """Read the key and secret from `state_dir`, creating them on first use."""
        key = ECKey.import_key(read_or_create_private_file(state_dir / SIGNING_KEY_FILE, _new_private_key))
        secret = read_or_create_private_file(state_dir / DERIVATION_SECRET_FILE, lambda: secrets.token_bytes(32))
        return cls(key, secret)

    def jwks(self) -> dict[str, Any]:
        """The public JWKS: one ES256 key with its kid."""
        public = {k: v for k, v in self._key.as_dict(private=False).items() if k not in PRIVATE_MEMBERS}
        public.update(kid=self.kid, alg=RESULT_ALG, use="sig")
        return {"keys": [public]}

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of `claims` with header alg ES256, kid and typ carrier-result+jwt."""
        header = {"alg": RESULT_ALG, "kid": self.kid, "typ": RESULT_TYP}
        return jwt.encode(header, claims, self._key, algorithms=[RESULT_ALG])

    def ci(self, person_id: str, version: int) -> str:
        """The person's CI of `version`: standard Base64 (88 characters) of HMAC-SHA512 over a versioned label."""
        return self._derive(f"ci:v{version}:{person_id}")

    def di(self, site_code: str, person_id: str) -> str:
        """The person's DI for one site: the same person gets a different DI at every site."""
        return self._derive(f"di:{site_code}:{person_id}")

    def _derive(self, label: str) -> str:
        digest = hmac.new(self._secret, label.encode(), hashlib.sha512).digest()
        return base64.b64encode(digest).decode("ascii")


def _new_private_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def corrupt_signature(token: str) -> str:
    """The token with one signature byte flipped: well-formed, but it fails verification (the `corrupt` fault)."""
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return ".".join((header, payload, base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode("ascii")))
