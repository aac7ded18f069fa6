"""Private keys as encrypted PKCS#8 (RFC 5958 §3) under PBES2 with a strong PBKDF2 (RFC 8018 §6.2), for key files.

cryptography writes encrypted PKCS#8 only with PBKDF2 at 2048 iterations: its encryption builder, which takes an
iteration count, serves OpenSSH and PKCS#12 alone. Its OpenSSH path (bcrypt) needs the `bcrypt` package and writes
a format that openssl and key-import tools do not read; PKCS#12 keeps its MAC at 2048 iterations whatever the key's
count, a cheap test of a guessed passphrase. So this module encodes the few DER elements of PKCS#8 itself, from
cryptography's PBKDF2 and AES, in the layout cryptography writes; cryptography's loader and `openssl pkey` read the
result like any PKCS#8 key, and read keys written the old way too.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

# OWASP's password storage cheat sheet asks 600,000 iterations of PBKDF2-HMAC-SHA256. Loading one key then costs
# ~70 ms of CPU (docs/admin.md, The passphrase), paid once per key file by each server process.
PBKDF2_ITERATIONS = 600_000
PBKDF2_SALT_BYTES = 16  # NIST SP 800-132 §5.1: at least 128 bits
AES_KEY_BYTES = 32  # AES-256-CBC, the cipher cryptography itself picks for PKCS#8
PEM_LINE = 64  # RFC 7468 §2
# DER of the object identifiers an encrypted PKCS#8 key names (RFC 8018 A.2, A.4, B.1.2, B.2.5).
_PBES2 = bytes.fromhex("06092a864886f70d01050d")  # 1.2.840.113549.1.5.13
_PBKDF2 = bytes.fromhex("06092a864886f70d01050c")  # 1.2.840.113549.1.5.12
_HMAC_SHA256 = bytes.fromhex("300c06082a864886f70d02090500")  # AlgorithmIdentifier {1.2.840.113549.2.9, NULL}
_AES256_CBC = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42
_SEQUENCE, _INTEGER, _OCTET_STRING = 0x30, 0x02, 0x04  # universal tags (X.690 §8.9, §8.3, §8.7)


def encrypted_pem(private: PrivateKeyTypes, passphrase: bytes) -> bytes:
    """`private` as an ENCRYPTED PRIVATE KEY PEM: PBKDF2-HMAC-SHA256 at PBKDF2_ITERATIONS, then AES-256-CBC."""
    plain = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    salt = os.urandom(PBKDF2_SALT_BYTES)
    iv = os.urandom(algorithms.AES.block_size // 8)
    key = PBKDF2HMAC(hashes.SHA256(), length=AES_KEY_BYTES, salt=salt, iterations=PBKDF2_ITERATIONS).derive(passphrase)
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    # A DER INTEGER is signed and minimal: one more octet than the bits need, so the top bit stays clear.
    iterations = PBKDF2_ITERATIONS.to_bytes(PBKDF2_ITERATIONS.bit_length() // 8 + 1, "big")
    pbkdf2_params = _der(_SEQUENCE, _der(_OCTET_STRING, salt), _der(_INTEGER, iterations), _HMAC_SHA256)
    kdf = _der(_SEQUENCE, _PBKDF2, pbkdf2_params)
    cipher = _der(_SEQUENCE, _AES256_CBC, _der(_OCTET_STRING, iv))
    algorithm = _der(_SEQUENCE, _PBES2, _der(_SEQUENCE, kdf, cipher))
    body = base64.b64encode(_der(_SEQUENCE, algorithm, _der(_OCTET_STRING, ciphertext))).decode()
    lines = [body[i : i + PEM_LINE] for i in range(0, len(body), PEM_LINE)]
    return "\n".join(
        ["-----BEGIN ENCRYPTED PRIVATE KEY-----", *lines, "-----END ENCRYPTED PRIVATE KEY-----", ""]
    ).encode()


def _der(tag: int, *contents: bytes) -> bytes:
    """One DER element (X.690 §8.1): tag, definite length, contents."""
    body = b"".join(contents)
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = (len(body).bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + len(body).to_bytes(size, "big") + body
