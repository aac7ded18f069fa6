"""The signing keyring as a service: lifecycle, storage on disk, encryption, corruption, and reloads."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError
from joserfc.jwk import KeySet

from idp.keyring import (
    FileKeyStore,
    KeyRecord,
    Keyring,
    KeyringCorruptError,
    KeyringError,
    KeyringLockedError,
    KeyringStateError,
    KeyState,
    UnknownKeyError,
)

PASSPHRASE = "correct horse battery staple"
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 7638 §3.2: the members a thumbprint hashes, per key type.
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
KEY_TYPES = {"ES256": ("EC", "P-256"), "RS256": ("RSA", None), "PS256": ("RSA", None), "EdDSA": ("OKP", "Ed25519")}
DEFAULT_ALGS = ("ES256", "RS256")
# joserfc warns when *verifying* EdDSA (RFC 9864 renames it); the keyring itself signs without a warning.
IGNORE_EDDSA_DEPRECATION = pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning")
# The DER encodings (tag, length, value) of the object identifiers of PKCS#8 encryption under PBES2 (RFC 8018 A.4,
# B.1.2, B.2.5): the scheme, its KDF, the KDF's pseudo-random function and the cipher.
OID_PBES2 = bytes.fromhex("06092a864886f70d01050d")
OID_PBKDF2 = bytes.fromhex("06092a864886f70d01050c")
OID_HMAC_SHA256 = bytes.fromhex("06082a864886f70d0209")
OID_AES256_CBC = bytes.fromhex("060960864801650304012a")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
NOBODY = 65534


# -- helpers -----------------------------------------------------------------------------------------------------


def records(keyring: Keyring) -> list[KeyRecord]:
    """The records as a server sees them (`current()` re-reads only after a change; loading RSA keys is slow)."""
    return [key.record for key in keyring.current().keys]


def kids(keyring: Keyring, alg: str, state: KeyState) -> list[str]:
    return [record.kid for record in records(keyring) if record.alg == alg and record.state is state]


def only_kid(keyring: Keyring, alg: str, state: KeyState) -> str:
    (kid,) = kids(keyring, alg, state)
    return kid


def record_of(keyring: Keyring, kid: str) -> KeyRecord:
    return next(record for record in records(keyring) if record.kid == kid)


def jwks(keyring: Keyring) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = json.loads(keyring.current().jwks_json)["keys"]
    return keys


def published_kids(keyring: Keyring) -> set[str]:
    return {key["kid"] for key in jwks(keyring)}


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in the folder (hidden ones too) with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def edit_manifest(keys_dir: Path, kid: str, **changes: object) -> None:
    """Change one key's record in keyring.json, the way another tool (or an older clock) would have left it."""
    path = keys_dir / "keyring.json"
    data = json.loads(path.read_bytes())
    (item,) = [item for item in data["keys"] if item["kid"] == kid]
    item.update(changes)
    path.write_text(json.dumps(data, indent=2) + "\n")


def rfc7638_thumbprint(jwk: dict[str, Any]) -> str:
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def leftover_temp_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob(".*.tmp"))


def der_items(data: bytes) -> list[tuple[bytes, bytes]]:
    """The DER elements in `data`, each as (its tag and length octets, its contents)."""
    items = []
    offset = 0
    while offset < len(data):
        start = offset
        length = data[offset + 1]
        offset += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[offset : offset + size], "big")
            offset += size
        items.append((data[start:offset], data[offset : offset + length]))
        offset += length
    return items


def pbes2_parameters(pem: bytes) -> dict[str, Any]:
    """How an encrypted PKCS#8 key (RFC 5958 EncryptedPrivateKeyInfo) was encrypted, read from its DER."""
    der = base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))
    ((_, info),) = der_items(der)
    (_, algorithm), (_, encrypted) = der_items(info)
    (scheme_header, scheme), (_, params) = der_items(algorithm)
    (_, kdf), (_, cipher) = der_items(params)
    (kdf_header, kdf_oid), (_, kdf_params) = der_items(kdf)
    (_, salt), (_, iterations), (_, prf) = der_items(kdf_params)
    (cipher_header, cipher_oid), (_, iv) = der_items(cipher)
    (prf_header, prf_oid), _ = der_items(prf)
    return {
        "scheme": scheme_header + scheme,
        "kdf": kdf_header + kdf_oid,
        "prf": prf_header + prf_oid,
        "cipher": cipher_header + cipher_oid,
        "salt": salt,
        "iterations": int.from_bytes(iterations, "big"),
        "iv": iv,
        "encrypted": encrypted,
    }


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_alg_template(keyring_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default keyring plus a next EdDSA and a next PS256 key, generated once for the module."""
    directory = tmp_path_factory.mktemp("four-alg") / "keys"
    shutil.copytree(keyring_template, directory)
    template = Keyring.from_directory(directory)
    template.generate("EdDSA")
    template.generate("PS256")
    return directory


@pytest.fixture
def four_alg_dir(four_alg_template: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "four-alg-keys"
    shutil.copytree(four_alg_template, directory)
    return directory


@pytest.fixture
def four_alg_keyring(four_alg_dir: Path) -> Keyring:
    return Keyring.from_directory(four_alg_dir, check_interval=0)


@pytest.fixture(scope="module")
def encrypted_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encrypted keyring with an active and a next key for ES256 and EdDSA, made once (each key costs PBKDF2)."""
    directory = tmp_path_factory.mktemp("encrypted") / "keys"
    keyring = Keyring.from_directory(directory, PASSPHRASE)
    keyring.generate("ES256")
    keyring.generate("EdDSA")
    keyring.rotate()
    return directory


@pytest.fixture
def encrypted_dir(encrypted_template: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "encrypted-keys"
    shutil.copytree(encrypted_template, directory)
    return directory


# -- the default keyring -----------------------------------------------------------------------------------------


def test_default_keyring_has_one_active_and_one_next_key_for_es256_and_rs256(keyring: Keyring) -> None:
    states: dict[str, list[str]] = {}
    for record in keyring.records():
        states.setdefault(record.alg, []).append(record.state.value)
    assert {alg: sorted(values) for alg, values in states.items()} == {
        "ES256": ["active", "next"],
        "RS256": ["active", "next"],
    }
    loaded = keyring.current()
    assert loaded.signing_algorithms == ["ES256", "RS256"]
    assert loaded.active("ES256").kid == only_kid(keyring, "ES256", KeyState.ACTIVE)
    assert loaded.active("RS256").kid == only_kid(keyring, "RS256", KeyState.ACTIVE)
    # Every key is published, the next ones before they sign.
    assert published_kids(keyring) == {record.kid for record in records(keyring)}


def test_default_keyring_is_not_recreated_when_one_exists(keyring: Keyring, keys_dir: Path) -> None:
    before = snapshot(keys_dir)
    assert keyring.ensure_default() == []
    assert snapshot(keys_dir) == before


def test_only_the_active_keys_of_a_new_keyring_record_an_activation(keyring: Keyring) -> None:
    for record in records(keyring):
        if record.state is KeyState.ACTIVE:
            assert record.activated is not None
        else:
            assert record.activated is None
        assert record.retired is None
        assert record.withdrawn is None


def test_kid_is_the_rfc7638_thumbprint_of_the_public_key(four_alg_keyring: Keyring, four_alg_dir: Path) -> None:
    published = jwks(four_alg_keyring)
    assert {key["alg"] for key in published} == {"ES256", "RS256", "PS256", "EdDSA"}
    for key in published:
        assert key["kid"] == rfc7638_thumbprint(key)
    assert {path.stem for path in four_alg_dir.glob("*.pem")} == {key["kid"] for key in published}


def test_asking_for_the_active_key_of_an_algorithm_without_one_is_refused(keyring: Keyring) -> None:
    with pytest.raises(KeyringStateError, match=r"no active EdDSA key: run `idp keys rotate --alg EdDSA`"):
        keyring.current().active("EdDSA")


# -- generate ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alg", "kty", "crv"), [("EdDSA", "OKP", "Ed25519"), ("PS256", "RSA", None)])
def test_generate_adds_a_published_next_key_that_does_not_sign_yet(
    keyring: Keyring, keys_dir: Path, alg: str, kty: str, crv: str | None
) -> None:
    record = keyring.generate(alg)
    assert record.alg == alg
    assert record.state is KeyState.NEXT
    assert record.activated is None
    assert record_of(keyring, record.kid) == record
    assert (keys_dir / f"{record.kid}.pem").is_file()
    (published,) = [key for key in jwks(keyring) if key["kid"] == record.kid]
    assert published["kty"] == kty
    assert published.get("crv") == crv
    assert (published["alg"], published["use"]) == (alg, "sig")
    assert published["kid"] == rfc7638_thumbprint(published)
    with pytest.raises(KeyringStateError, match=f"no active {alg} key"):
        keyring.current().active(alg)
    assert leftover_temp_files(keys_dir) == []


def test_second_next_key_for_the_same_algorithm_is_refused(keyring: Keyring, keys_dir: Path) -> None:
    next_kid = only_kid(keyring, "ES256", KeyState.NEXT)
    before = snapshot(keys_dir)
    with pytest.raises(KeyringStateError, match=rf"ES256 already has a next key \({next_kid}\)"):
        keyring.generate("ES256")
    assert snapshot(keys_dir) == before


def test_unknown_algorithm_is_refused_by_generate_and_rotate(keyring: Keyring, keys_dir: Path) -> None:
    before = snapshot(keys_dir)
    message = r"unknown algorithm 'HS256': use one of ES256, RS256, PS256, EdDSA"
    with pytest.raises(KeyringStateError, match=message):
        keyring.generate("HS256")
    with pytest.raises(KeyringStateError, match=message):
        keyring.rotate("HS256")
    assert snapshot(keys_dir) == before


# -- rotate ------------------------------------------------------------------------------------------------------


def test_rotate_one_algorithm_moves_next_to_active_and_active_to_retired(keyring: Keyring) -> None:
    old_active = only_kid(keyring, "ES256", KeyState.ACTIVE)
    old_next = only_kid(keyring, "ES256", KeyState.NEXT)
    rs256_before = [record for record in records(keyring) if record.alg == "RS256"]

    result = keyring.rotate("ES256")

    assert [record.kid for record in result.activated] == [old_next]
    assert result.warnings == []
    retired = record_of(keyring, old_active)
    activated = record_of(keyring, old_next)
    assert retired.state is KeyState.RETIRED
    assert retired.retired is not None
    assert retired.withdrawn is None
    assert activated.state is KeyState.ACTIVE
    assert activated.activated == retired.retired
    new_next = only_kid(keyring, "ES256", KeyState.NEXT)
    assert new_next not in (old_active, old_next)
    assert keyring.current().active("ES256").kid == old_next
    # A rotation keeps the old key published: tokens it signed still verify.
    assert {old_active, old_next, new_next} <= published_kids(keyring)
    assert [record for record in records(keyring) if record.alg == "RS256"] == rs256_before


def test_rotate_without_algorithm_rotates_every_algorithm(keyring: Keyring) -> None:
    before = {
        alg: (only_kid(keyring, alg, KeyState.ACTIVE), only_kid(keyring, alg, KeyState.NEXT)) for alg in DEFAULT_ALGS
    }

    result = keyring.rotate()

    assert {(record.alg, record.kid) for record in result.activated} == {
        (alg, next_kid) for alg, (_, next_kid) in before.items()
    }
    for alg, (old_active, old_next) in before.items():
        assert kids(keyring, alg, KeyState.RETIRED) == [old_active]
        assert kids(keyring, alg, KeyState.ACTIVE) == [old_next]
        assert only_kid(keyring, alg, KeyState.NEXT) not in (old_active, old_next)
    assert len(records(keyring)) == 6


def test_rotate_without_next_key_activates_a_new_key_at_once_and_warns(keyring: Keyring) -> None:
    old_active = only_kid(keyring, "ES256", KeyState.ACTIVE)
    keyring.retire(only_kid(keyring, "ES256", KeyState.NEXT))
    assert kids(keyring, "ES256", KeyState.NEXT) == []

    result = keyring.rotate("ES256")

    (activated,) = result.activated
    assert activated.kid != old_active
    assert activated.state is KeyState.ACTIVE
    assert result.warnings == [
        f"ES256: there was no next key, so {activated.kid} signs at once; relying services that cached the "
        "JWKS will not know it until their cache expires"
    ]
    assert keyring.current().active("ES256").kid == activated.kid
    assert record_of(keyring, old_active).state is KeyState.RETIRED
    # The rotation still leaves a next key behind, so the following rotation is safe again.
    assert len(kids(keyring, "ES256", KeyState.NEXT)) == 1


def test_rotate_warns_when_the_next_key_is_younger_than_the_jwks_cache_age(keyring: Keyring) -> None:
    next_kid = only_kid(keyring, "ES256", KeyState.NEXT)

    result = keyring.rotate("ES256", min_published=600)

    (warning,) = result.warnings
    assert warning.startswith(f"ES256: the next key {next_kid} was published ")
    assert warning.endswith("s ago, less than the JWKS cache age (600 s); some relying services may not know it yet")
    # The warning does not stop the rotation.
    assert keyring.current().active("ES256").kid == next_kid


def test_rotate_does_not_warn_when_the_next_key_was_published_long_enough(keyring: Keyring, keys_dir: Path) -> None:
    next_kid = only_kid(keyring, "ES256", KeyState.NEXT)
    edit_manifest(keys_dir, next_kid, created=iso(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))

    result = keyring.rotate("ES256", min_published=600)

    assert result.warnings == []
    assert [record.kid for record in result.activated] == [next_kid]


# -- retire ------------------------------------------------------------------------------------------------------


def test_retire_an_active_key_promotes_the_next_key(keyring: Keyring) -> None:
    active = only_kid(keyring, "ES256", KeyState.ACTIVE)
    next_kid = only_kid(keyring, "ES256", KeyState.NEXT)

    result = keyring.retire(active)

    assert [record.kid for record in result.activated] == [next_kid]
    assert result.warnings == []
    assert keyring.current().active("ES256").kid == next_kid
    record = record_of(keyring, active)
    assert record.state is KeyState.RETIRED
    assert record.retired is not None
    assert record.withdrawn is None


def test_plain_retire_keeps_the_key_in_the_jwks(keyring: Keyring) -> None:
    active = only_kid(keyring, "ES256", KeyState.ACTIVE)
    token = keyring.current().active("ES256").sign({"sub": "resident"})

    keyring.retire(active)

    assert active in published_kids(keyring)
    key_set = KeySet.import_key_set(json.loads(keyring.current().jwks_json))
    assert jwt.decode(token, key_set, algorithms=["ES256"]).claims == {"sub": "resident"}


def test_retire_now_withdraws_the_key_from_the_jwks(keyring: Keyring) -> None:
    active = only_kid(keyring, "ES256", KeyState.ACTIVE)
    token = keyring.current().active("ES256").sign({"sub": "resident"})

    keyring.retire(active, now=True)

    record = record_of(keyring, active)
    assert record.state is KeyState.RETIRED
    assert record.withdrawn is not None
    assert active not in published_kids(keyring)
    assert active not in keyring.current().jwks_json.decode()
    # A compromised key's signatures stop verifying at once.
    key_set = KeySet.import_key_set(json.loads(keyring.current().jwks_json))
    with pytest.raises(InvalidKeyIdError):
        jwt.decode(token, key_set, algorithms=["ES256"])
    assert keyring.current().active("ES256").kid != active


def test_retire_now_withdraws_an_already_retired_key(keyring: Keyring) -> None:
    active = only_kid(keyring, "ES256", KeyState.ACTIVE)
    keyring.retire(active)
    retired_at = record_of(keyring, active).retired

    result = keyring.retire(active, now=True)

    assert result.activated == []
    record = record_of(keyring, active)
    assert record.retired == retired_at
    assert record.withdrawn is not None
    assert active not in published_kids(keyring)


def test_retire_a_next_key_leaves_the_active_key_signing(keyring: Keyring) -> None:
    active = only_kid(keyring, "ES256", KeyState.ACTIVE)
    next_kid = only_kid(keyring, "ES256", KeyState.NEXT)

    result = keyring.retire(next_kid)

    assert result.activated == []
    assert record_of(keyring, next_kid).state is KeyState.RETIRED
    assert keyring.current().active("ES256").kid == active


def test_retire_an_unknown_kid_is_refused(keyring: Keyring, keys_dir: Path) -> None:
    before = snapshot(keys_dir)
    with pytest.raises(UnknownKeyError, match=r"no key has kid 'no-such-kid': see `idp keys list`"):
        keyring.retire("no-such-kid")
    assert snapshot(keys_dir) == before


# -- prune -------------------------------------------------------------------------------------------------------


def test_prune_drops_only_old_retired_keys_and_withdrawn_keys(keyring: Keyring, keys_dir: Path) -> None:
    old_retired = only_kid(keyring, "ES256", KeyState.ACTIVE)
    recently_retired = only_kid(keyring, "ES256", KeyState.NEXT)
    keyring.rotate("ES256")
    keyring.rotate("ES256")
    edit_manifest(keys_dir, old_retired, retired=iso(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)))
    withdrawn = only_kid(keyring, "RS256", KeyState.NEXT)
    keyring.retire(withdrawn, now=True)
    kept = {record.kid for record in records(keyring)} - {old_retired, withdrawn}

    dropped = keyring.prune(keep_for=dt.timedelta(hours=1))

    assert {record.kid for record in dropped} == {old_retired, withdrawn}
    remaining = {record.kid: record.state for record in records(keyring)}
    assert set(remaining) == kept
    assert remaining[recently_retired] is KeyState.RETIRED
    assert not (keys_dir / f"{old_retired}.pem").exists()
    assert not (keys_dir / f"{withdrawn}.pem").exists()
    assert {path.stem for path in keys_dir.glob("*.pem")} == kept
    assert published_kids(keyring) == kept
    assert leftover_temp_files(keys_dir) == []


def test_prune_keeps_every_key_that_is_not_retired(keyring: Keyring, keys_dir: Path) -> None:
    for record in records(keyring):
        edit_manifest(keys_dir, record.kid, created=iso(dt.datetime.now(dt.UTC) - dt.timedelta(days=365)))
    before = {record.kid for record in records(keyring)}

    assert keyring.prune(keep_for=dt.timedelta(0)) == []

    assert {record.kid for record in records(keyring)} == before
    assert {path.stem for path in keys_dir.glob("*.pem")} == before


# -- what is published, and file modes ---------------------------------------------------------------------------


def test_jwks_never_contains_a_private_member_for_any_algorithm(four_alg_keyring: Keyring) -> None:
    four_alg_keyring.rotate("EdDSA")
    published = jwks(four_alg_keyring)
    assert {key["alg"] for key in published} == set(KEY_TYPES)
    assert len(published) == len(records(four_alg_keyring))
    for key in published:
        kty, crv = KEY_TYPES[key["alg"]]
        assert key["kty"] == kty
        assert key.get("crv") == crv
        assert key["use"] == "sig"
        assert not PRIVATE_JWK_MEMBERS & set(key), key["kid"]
    for signing_key in four_alg_keyring.current().keys:
        assert not PRIVATE_JWK_MEMBERS & set(signing_key.public_jwk())


def test_private_key_files_and_manifest_are_mode_0600(tmp_path: Path) -> None:
    directory = tmp_path / "new-keys"
    keyring = Keyring.from_directory(directory)
    keyring.generate("ES256")
    keyring.generate("EdDSA")
    keyring.rotate()

    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = [directory / "keyring.json", *directory.glob("*.pem")]
    assert len(files) == 5
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert leftover_temp_files(directory) == []


def test_unencrypted_keyring_stores_plain_pkcs8(keys_dir: Path) -> None:
    for path in keys_dir.glob("*.pem"):
        assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    manifest = json.loads((keys_dir / "keyring.json").read_bytes())
    assert {item["encrypted"] for item in manifest["keys"]} == {False}


# -- passphrase --------------------------------------------------------------------------------------------------


def test_passphrase_encrypts_private_key_files_as_pkcs8(encrypted_dir: Path) -> None:
    pems = list(encrypted_dir.glob("*.pem"))
    assert len(pems) == 4
    for path in pems:
        data = path.read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
        with pytest.raises(TypeError, match="encrypted"):
            serialization.load_pem_private_key(data, None)
        serialization.load_pem_private_key(data, PASSPHRASE.encode())
    manifest = json.loads((encrypted_dir / "keyring.json").read_bytes())
    assert {item["encrypted"] for item in manifest["keys"]} == {True}
    keyring = Keyring.from_directory(encrypted_dir, PASSPHRASE)
    assert keyring.current().signing_algorithms == ["ES256", "EdDSA"]


@pytest.mark.parametrize(
    ("passphrase", "message"),
    [
        (None, r"\.pem is encrypted: set IDP_KEYS_PASSPHRASE$"),
        ("wrong passphrase", r"^IDP_KEYS_PASSPHRASE does not decrypt .*\.pem$"),
    ],
    ids=["missing", "wrong"],
)
def test_encrypted_keyring_without_the_right_passphrase_is_locked(
    encrypted_dir: Path, passphrase: str | None, message: str
) -> None:
    keyring = Keyring.from_directory(encrypted_dir, passphrase, check_interval=0)
    with pytest.raises(KeyringLockedError, match=message) as records_error:
        keyring.records()
    assert str(encrypted_dir) in str(records_error.value)
    with pytest.raises(KeyringLockedError, match=message):
        keyring.current()
    with pytest.raises(KeyringLockedError, match=message):
        keyring.ensure_default()


OPERATIONS: dict[str, Callable[[Keyring], object]] = {
    "rotate": lambda keyring: keyring.rotate(),
    "rotate-alg": lambda keyring: keyring.rotate("ES256"),
    "generate": lambda keyring: keyring.generate("PS256"),
    "retire": lambda keyring: keyring.retire("no-such-kid", now=True),
    "prune": lambda keyring: keyring.prune(keep_for=dt.timedelta(0)),
}


@pytest.mark.parametrize("passphrase", [None, "wrong passphrase"], ids=["missing", "wrong"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_rotate_with_wrong_passphrase_changes_nothing(
    encrypted_dir: Path, passphrase: str | None, operation: str
) -> None:
    before = snapshot(encrypted_dir)
    keyring = Keyring.from_directory(encrypted_dir, passphrase)

    with pytest.raises(KeyringLockedError):
        OPERATIONS[operation](keyring)

    assert snapshot(encrypted_dir) == before


def test_encrypted_keys_are_derived_with_pbkdf2_at_600000_iterations(encrypted_dir: Path) -> None:
    salts = set()
    for path in encrypted_dir.glob("*.pem"):
        params = pbes2_parameters(path.read_bytes())

        assert (params["scheme"], params["kdf"], params["prf"], params["cipher"]) == (
            OID_PBES2,
            OID_PBKDF2,
            OID_HMAC_SHA256,
            OID_AES256_CBC,
        )
        assert params["iterations"] == 600_000
        assert len(params["salt"]) == 16
        assert len(params["iv"]) == 16
        salts.add(params["salt"])
    assert len(salts) == 4


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_reads_the_encrypted_key_files(encrypted_dir: Path) -> None:
    """The files stay standard PKCS#8: an admin's tools (and an HSM's import) read them with the passphrase."""
    env = {"PATH": os.environ["PATH"], "KEYS_PASSPHRASE": PASSPHRASE}
    for path in encrypted_dir.glob("*.pem"):
        result = subprocess.run(
            ["openssl", "pkey", "-in", str(path), "-passin", "env:KEYS_PASSPHRASE", "-noout"],
            env=env,
            capture_output=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_keys_encrypted_the_old_way_still_load(encrypted_dir: Path) -> None:
    # cryptography's own PKCS#8 encryption, which the keyring used before: PBKDF2 at 2048 iterations.
    old_way = serialization.BestAvailableEncryption(PASSPHRASE.encode())
    for path in encrypted_dir.glob("*.pem"):
        private = serialization.load_pem_private_key(path.read_bytes(), PASSPHRASE.encode())
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, old_way)
        assert pbes2_parameters(pem)["iterations"] == 2048
        path.write_bytes(pem)

    keyring = Keyring.from_directory(encrypted_dir, PASSPHRASE, check_interval=0)
    loaded = keyring.current()

    assert keyring.last_error is None
    assert loaded.signing_algorithms == ["ES256", "EdDSA"]
    token = loaded.active("ES256").sign({"sub": "resident"})
    assert jwt.decode(token, loaded.public_keys, algorithms=["ES256"]).claims == {"sub": "resident"}
    # Changes go on beside them; the keys they add get the stronger KDF.
    result = keyring.rotate("ES256")
    (new_next,) = kids(keyring, "ES256", KeyState.NEXT)
    assert result.activated[0].kid != new_next
    assert pbes2_parameters((encrypted_dir / f"{new_next}.pem").read_bytes())["iterations"] == 600_000


def test_a_reload_decrypts_only_the_key_files_that_changed(
    encrypted_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deriving each key's decryption key costs tens of milliseconds: a worker pays it once per key file."""
    decrypted: list[bytes] = []
    load = serialization.load_pem_private_key

    def counting_load(data: bytes, password: bytes | None, **kwargs: Any) -> Any:
        decrypted.append(data)
        return load(data, password, **kwargs)

    monkeypatch.setattr(serialization, "load_pem_private_key", counting_load)
    server = Keyring.from_directory(encrypted_dir, PASSPHRASE, check_interval=0)
    before = server.current()
    assert len(decrypted) == 4
    Keyring.from_directory(encrypted_dir, PASSPHRASE).rotate()
    decrypted.clear()

    after = server.current()

    assert after is not before
    assert server.last_error is None
    new_files = {(encrypted_dir / f"{record.kid}.pem").read_bytes() for record in records(server)} - {
        (encrypted_dir / f"{key.kid}.pem").read_bytes() for key in before.keys
    }
    assert len(new_files) == 2
    assert sorted(decrypted) == sorted(new_files)


# -- corrupt files -----------------------------------------------------------------------------------------------


def _unknown_alg(data: dict[str, Any]) -> object:
    data["keys"][0]["alg"] = "HS256"
    return data


def _duplicate_kid(data: dict[str, Any]) -> object:
    data["keys"].append(dict(data["keys"][1]))
    return data


def _unknown_state(data: dict[str, Any]) -> object:
    data["keys"][0]["state"] = "dormant"
    return data


def _bad_time(data: dict[str, Any]) -> object:
    data["keys"][0]["created"] = "yesterday"
    return data


def _missing_kid(data: dict[str, Any]) -> object:
    del data["keys"][0]["kid"]
    return data


def _newer_version(data: dict[str, Any]) -> object:
    data["version"] = 2
    return data


CORRUPT_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], object] | bytes, str]] = {
    "not-json": (b"{not json", "is not valid JSON"),
    "empty": (b"", "is not valid JSON"),
    "list": (b"[]", "is malformed"),
    "keys-not-a-list": (b'{"version": 1, "keys": {"kid": "x"}}', "is malformed"),
    "no-keys": (b'{"version": 1}', "is malformed"),
    "newer-version": (_newer_version, "is malformed: unsupported version 2"),
    "unknown-alg": (_unknown_alg, "is malformed: unknown algorithm 'HS256'"),
    "duplicate-kid": (_duplicate_kid, "is malformed: a kid appears twice"),
    "unknown-state": (_unknown_state, "is malformed: 'dormant' is not a valid KeyState"),
    "bad-time": (_bad_time, "is malformed: Invalid isoformat string"),
    "missing-kid": (_missing_kid, "is malformed: 'kid'"),
}


@pytest.mark.parametrize("case", list(CORRUPT_MANIFESTS))
def test_corrupt_manifest_is_reported_naming_the_file(keys_dir: Path, case: str) -> None:
    corruption, expected = CORRUPT_MANIFESTS[case]
    manifest = keys_dir / "keyring.json"
    if callable(corruption):
        manifest.write_text(json.dumps(corruption(json.loads(manifest.read_bytes()))))
    else:
        manifest.write_bytes(corruption)
    keyring = Keyring.from_directory(keys_dir)

    with pytest.raises(KeyringCorruptError) as error:
        keyring.records()

    message = str(error.value)
    assert message.startswith(f"{manifest} ")
    assert expected in message
    assert "\n" not in message
    with pytest.raises(KeyringCorruptError, match=f"^{re.escape(str(manifest))} "):
        keyring.current()
    with pytest.raises(KeyringCorruptError, match=f"^{re.escape(str(manifest))} "):
        keyring.rotate("ES256")


def test_missing_manifest_tells_the_admin_to_run_init(tmp_path: Path) -> None:
    keyring = Keyring.from_directory(tmp_path / "nowhere")
    manifest = tmp_path / "nowhere" / "keyring.json"
    with pytest.raises(
        KeyringCorruptError, match=f"^{re.escape(str(manifest))} is missing: run `idp init` to create the keyring$"
    ):
        keyring.current()


CHANGES_OVER_A_LOST_MANIFEST: dict[str, Callable[[Keyring], object]] = {
    "ensure-default": lambda keyring: keyring.ensure_default(),
    "generate": lambda keyring: keyring.generate("EdDSA"),
    "prune": lambda keyring: keyring.prune(keep_for=dt.timedelta(0)),
    "rotate": lambda keyring: keyring.rotate("ES256"),
}


@pytest.mark.parametrize("change", list(CHANGES_OVER_A_LOST_MANIFEST))
def test_no_keyring_is_created_over_key_files_left_without_a_manifest(keys_dir: Path, change: str) -> None:
    (keys_dir / "keyring.json").unlink()
    before = snapshot(keys_dir)
    keyring = Keyring.from_directory(keys_dir)

    with pytest.raises(KeyringCorruptError) as error:
        CHANGES_OVER_A_LOST_MANIFEST[change](keyring)

    assert str(error.value) == (
        f"{keys_dir} holds 4 key files but no keyring.json: restore the folder from your latest backup, "
        "or move the .pem files out of it to start a new keyring"
    )
    assert snapshot(keys_dir) == before


def test_a_new_keyring_is_created_beside_files_that_are_not_keys(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "README.md").write_text("# keys\n")

    created = Keyring.from_directory(directory).generate("ES256")

    assert {path.name for path in directory.iterdir()} == {"README.md", ".lock", "keyring.json", f"{created.kid}.pem"}


def test_manifest_time_without_utc_offset_is_reported_as_corrupt(keyring: Keyring, keys_dir: Path) -> None:
    next_kid = only_kid(keyring, "ES256", KeyState.NEXT)
    edit_manifest(keys_dir, next_kid, created="2024-01-01T00:00:00")
    manifest = keys_dir / "keyring.json"
    with pytest.raises(KeyringCorruptError, match=f"^{re.escape(str(manifest))} is malformed"):
        keyring.rotate("ES256", min_published=600)


def _garbage(path: Path, keys_dir: Path) -> None:
    path.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")


def _empty(path: Path, keys_dir: Path) -> None:
    path.write_bytes(b"")


def _missing(path: Path, keys_dir: Path) -> None:
    path.unlink()


def _other_algorithm(path: Path, keys_dir: Path) -> None:
    keyring = Keyring.from_directory(keys_dir)
    es256 = only_kid(keyring, "ES256", KeyState.ACTIVE)
    path.write_bytes((keys_dir / f"{es256}.pem").read_bytes())


CORRUPT_PEMS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "garbage": (_garbage, "is not a readable private key"),
    "empty": (_empty, "is not a readable private key"),
    "missing": (_missing, "cannot be read: No such file or directory"),
    "ec-key-for-rs256": (_other_algorithm, "does not hold a RS256 key"),
}


@pytest.mark.parametrize("case", list(CORRUPT_PEMS))
def test_corrupt_or_missing_key_file_is_reported_naming_the_file(keyring: Keyring, keys_dir: Path, case: str) -> None:
    corrupt, expected = CORRUPT_PEMS[case]
    path = keys_dir / f"{only_kid(keyring, 'RS256', KeyState.ACTIVE)}.pem"
    corrupt(path, keys_dir)

    with pytest.raises(KeyringCorruptError) as error:
        keyring.records()

    assert str(error.value).startswith(f"{path} {expected}")
    assert "\n" not in str(error.value)
    with pytest.raises(KeyringCorruptError, match=f"^{re.escape(str(path))} "):
        Keyring.from_directory(keys_dir).current()


# -- what running servers see ------------------------------------------------------------------------------------


def test_current_picks_up_a_rotation_made_by_another_instance(keys_dir: Path) -> None:
    server = Keyring.from_directory(keys_dir, check_interval=0)
    before = server.current()
    next_kid = only_kid(server, "ES256", KeyState.NEXT)

    Keyring.from_directory(keys_dir).rotate("ES256")

    after = server.current()
    assert after is not before
    assert after.active("ES256").kid == next_kid
    assert after.etag != before.etag
    assert after.jwks_json != before.jwks_json
    assert server.last_error is None


def test_current_looks_for_changes_only_every_check_interval(keys_dir: Path) -> None:
    now = [100.0]
    server = Keyring(FileKeyStore(keys_dir, None), check_interval=5, clock=lambda: now[0])
    before = server.current()
    next_kid = only_kid(server, "ES256", KeyState.NEXT)
    Keyring.from_directory(keys_dir).rotate("ES256")

    now[0] += 4.9
    assert server.current() is before

    now[0] += 0.1
    assert server.current().active("ES256").kid == next_kid


def test_current_without_changes_serves_the_same_keys(keyring: Keyring) -> None:
    first = keyring.current()
    assert keyring.current() is first
    keyring.check()
    assert keyring.current() is first


def _corrupt_manifest(keys_dir: Path, kid: str) -> None:
    (keys_dir / "keyring.json").write_bytes(b"{not json")


def _delete_manifest(keys_dir: Path, kid: str) -> None:
    (keys_dir / "keyring.json").unlink()


def _corrupt_key_and_touch_manifest(keys_dir: Path, kid: str) -> None:
    (keys_dir / f"{kid}.pem").write_text("garbage")
    manifest = keys_dir / "keyring.json"
    manifest.write_bytes(manifest.read_bytes() + b"\n")


BREAKAGES: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "corrupt-manifest": (_corrupt_manifest, "keyring.json is not valid JSON"),
    "deleted-manifest": (_delete_manifest, "keyring.json is missing"),
    "corrupt-key": (_corrupt_key_and_touch_manifest, ".pem is not a readable private key"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_current_keeps_serving_the_last_good_keys_when_the_files_turn_corrupt(keys_dir: Path, case: str) -> None:
    server = Keyring.from_directory(keys_dir, check_interval=0)
    good = server.current()
    original = snapshot(keys_dir)
    breakage, expected = BREAKAGES[case]
    breakage(keys_dir, good.active("ES256").kid)

    assert server.current() is good
    assert isinstance(server.last_error, KeyringCorruptError)
    assert expected in str(server.last_error)
    assert str(keys_dir) in str(server.last_error)
    with pytest.raises(KeyringCorruptError, match=re.escape(expected)):
        server.check()
    # Signing goes on with the last good keys.
    assert server.current().active("ES256").sign({"sub": "resident"}).count(".") == 2

    # Once the files are repaired, the server recovers on its own.
    for name, data in original.items():
        (keys_dir / name).write_bytes(data)
    assert server.current().jwks_json == good.jwks_json
    assert server.last_error is None
    server.check()


def test_a_failed_load_is_tried_again_after_a_repair_that_leaves_keyring_json_alone(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Keyring.from_directory(keys_dir, check_interval=0)
    good = server.current()
    kid = good.active("ES256").kid
    key_file = keys_dir / f"{kid}.pem"
    original = key_file.read_bytes()
    _corrupt_key_and_touch_manifest(keys_dir, kid)
    server.current()
    server.current()
    assert isinstance(server.last_error, KeyringCorruptError)
    # The same failure is logged once, not at every check.
    assert len([r for r in caplog.records if "cannot be loaded" in r.getMessage()]) == 1

    # The admin restores the file (or fixes its owner): keyring.json does not change.
    key_file.write_bytes(original)

    assert server.current().jwks_json == good.jwks_json
    assert server.last_error is None
    server.check()


# -- withdrawals, even when a reload fails ---------------------------------------------------------------------


def _withdraw_and_damage_the_new_key(keys_dir: Path, kid: str) -> None:
    """`retire --now`, then the key files it added turn unreadable (a disk error, a file another tool damaged)."""
    before = {path.name for path in keys_dir.glob("*.pem")}
    Keyring.from_directory(keys_dir).retire(kid, now=True)
    added = {path.name for path in keys_dir.glob("*.pem")} - before
    assert added
    for name in added:
        (keys_dir / name).write_text("garbage")


def _withdraw_under_a_passphrase_the_server_lacks(keys_dir: Path, kid: str) -> None:
    """`retire --now` run with IDP_KEYS_PASSPHRASE set: the key it adds is encrypted; the server has no passphrase."""
    Keyring.from_directory(keys_dir, PASSPHRASE).retire(kid, now=True)


def _withdraw_and_prune_under_a_passphrase_the_server_lacks(keys_dir: Path, kid: str) -> None:
    """The emergency procedure's `retire --now` and `prune` within one check interval: the kid leaves the manifest."""
    _withdraw_under_a_passphrase_the_server_lacks(keys_dir, kid)
    assert [
        record.kid for record in Keyring.from_directory(keys_dir, PASSPHRASE).prune(keep_for=dt.timedelta(days=1))
    ] == [kid]


FAILED_RELOADS: dict[str, tuple[Callable[[Path, str], None], type[KeyringError]]] = {
    "damaged-new-key": (_withdraw_and_damage_the_new_key, KeyringCorruptError),
    "passphrase-the-server-lacks": (_withdraw_under_a_passphrase_the_server_lacks, KeyringLockedError),
    "withdrawn-then-pruned": (_withdraw_and_prune_under_a_passphrase_the_server_lacks, KeyringLockedError),
}


@pytest.mark.parametrize("case", list(FAILED_RELOADS))
def test_a_withdrawn_key_is_distrusted_even_when_the_rest_of_the_change_cannot_be_loaded(
    keys_dir: Path, case: str
) -> None:
    server = Keyring.from_directory(keys_dir, check_interval=0)
    good = server.current()
    compromised = good.active("ES256")
    (next_kid,) = [key.kid for key in good.keys if key.alg == "ES256" and key.state is KeyState.NEXT]
    forged = compromised.sign({"sub": "resident"}, typ="at+jwt")
    change, error = FAILED_RELOADS[case]

    change(keys_dir, compromised.kid)
    loaded = server.current()

    assert isinstance(server.last_error, error)
    assert compromised.kid not in published_kids(server)
    assert compromised.kid not in loaded.jwks_json.decode()
    with pytest.raises(InvalidKeyIdError):
        jwt.decode(forged, loaded.public_keys, algorithms=["ES256"])
    # The next key the server already held signs in its place; the rest of the keyring stays as it was.
    assert loaded.active("ES256").kid == next_kid
    assert loaded.active("RS256").kid == good.active("RS256").kid
    assert published_kids(server) == {key.kid for key in good.keys} - {compromised.kid}
    with pytest.raises(error):
        server.check()
    assert compromised.kid not in published_kids(server)


def test_a_withdrawn_active_key_stops_signing_even_when_its_replacement_cannot_be_loaded(keys_dir: Path) -> None:
    server = Keyring.from_directory(keys_dir, check_interval=0)
    Keyring.from_directory(keys_dir).retire(only_kid(server, "ES256", KeyState.NEXT), now=True)
    compromised = server.current().active("ES256")
    rs256 = server.current().active("RS256")

    # With no next key, the retirement generates a key that signs at once (and a next one); the server cannot load them.
    _withdraw_and_damage_the_new_key(keys_dir, compromised.kid)
    loaded = server.current()

    assert isinstance(server.last_error, KeyringCorruptError)
    assert compromised.kid not in published_kids(server)
    with pytest.raises(KeyringStateError):
        loaded.active("ES256")
    assert loaded.active("RS256").kid == rs256.kid


# -- who owns the files ------------------------------------------------------------------------------------------


@ROOT_ONLY
def test_root_leaves_every_file_to_the_owner_of_the_keyring_folder(keys_dir: Path) -> None:
    """`sudo idp keys …` must not leave files that servers, running as the folder's owner, cannot read."""
    for path in [keys_dir, *keys_dir.iterdir()]:
        os.chown(path, NOBODY, NOBODY)
    keyring = Keyring.from_directory(keys_dir)

    keyring.retire(only_kid(keyring, "ES256", KeyState.ACTIVE), now=True)
    keyring.generate("EdDSA")

    owners = {path.name: (path.stat().st_uid, path.stat().st_gid) for path in keys_dir.iterdir()}
    assert len(owners) == 8
    assert set(owners.values()) == {(NOBODY, NOBODY)}, owners
    keyring.verify()


@ROOT_ONLY
def test_verify_names_a_file_that_servers_running_as_the_folder_owner_cannot_read(keys_dir: Path) -> None:
    for path in [keys_dir, *keys_dir.iterdir()]:
        os.chown(path, NOBODY, NOBODY)
    keyring = Keyring.from_directory(keys_dir)
    left_by_root = keys_dir / f"{only_kid(keyring, 'RS256', KeyState.NEXT)}.pem"
    os.chown(left_by_root, 0, 0)

    with pytest.raises(KeyringError) as error:
        keyring.verify()

    assert str(error.value) == (
        f"{left_by_root} belongs to uid 0, but servers run as uid {NOBODY}, which owns {keys_dir}, "
        f"and cannot read it: run `chown {NOBODY}:{NOBODY} {left_by_root}`"
    )


# -- signing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", pytest.param("EdDSA", marks=IGNORE_EDDSA_DEPRECATION)])
def test_signed_token_verifies_against_the_public_jwks(four_alg_keyring: Keyring, alg: str) -> None:
    loaded = four_alg_keyring.current()
    key_set = KeySet.import_key_set(json.loads(loaded.jwks_json))
    signing_keys = [key for key in loaded.keys if key.alg == alg]
    assert signing_keys
    for key in signing_keys:
        claims = {"iss": "http://localhost:8000", "sub": "resident", "alg_under_test": alg}
        token = key.sign(claims, typ="at+jwt")

        decoded = jwt.decode(token, key_set, algorithms=[alg])

        assert decoded.header == {"alg": alg, "kid": key.kid, "typ": "at+jwt"}
        assert decoded.claims == claims


def test_eddsa_signing_emits_no_warning(four_alg_keyring: Keyring) -> None:
    key = next(key for key in four_alg_keyring.current().keys if key.alg == "EdDSA")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        key.sign({"sub": "resident"})
