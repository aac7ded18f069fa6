"""The signing keyring: keys with a next → active → retired lifecycle, stored atomically under a lock."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.jwa import EdDSAAlgorithm, JWSAlgModel
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from idp import pkcs8

ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")
# ES256 and RS256 cover every certified client: RS256 is the OIDC default (Core §15.1), ES256 is small and fast.
DEFAULT_ALGORITHMS = ("ES256", "RS256")
RSA_KEY_BITS = 2048  # NIST SP 800-57 acceptable through 2030; 3072 would triple signing time
MANIFEST = "keyring.json"
LOCK_FILE = ".lock"
MANIFEST_VERSION = 1
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

log = logging.getLogger(__name__)

JoseKey: TypeAlias = ECKey | RSAKey | OKPKey


class _QuietEdDSA(EdDSAAlgorithm):
    # RFC 9864 deprecates the name EdDSA in favour of Ed25519; docs/admin.md section 4 keeps EdDSA because every
    # certified relying-party library verifies it. The choice is deliberate, so it need not warn at each signature.
    security_warning = None  # type: ignore[assignment]  # the base declares str; its registry accepts None


class _SigningRegistry(JWSRegistry):
    algorithms: dict[str, JWSAlgModel] = {**JWSRegistry.algorithms, "EdDSA": _QuietEdDSA()}  # noqa: RUF012  (joserfc reads it per class)


def jws_registry(algorithms: Sequence[str]) -> JWSRegistry:
    """A registry allowing exactly `algorithms`, that signs and verifies EdDSA without a warning. Build it once and
    keep it: jwt.encode and jwt.decode would otherwise build one per token."""
    return _SigningRegistry(algorithms=list(algorithms))


_REGISTRIES = {alg: jws_registry([alg]) for alg in ALGORITHMS}


class KeyState(enum.StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    RETIRED = "retired"


class KeyringError(Exception):
    """The keyring cannot be read or changed; the message is one line for the admin."""


class KeyringCorruptError(KeyringError):
    """A keyring file is missing, unreadable or malformed; the message names it."""


class KeyringLockedError(KeyringError):
    """Private keys are encrypted and the passphrase is missing or wrong."""


class UnknownKeyError(KeyringError):
    """No key has the given kid."""


class KeyringStateError(KeyringError):
    """The change asked for does not fit the keys' states (a second next key, no key to sign with …)."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the manifest says of one key; the private key itself is in its own file."""

    kid: str
    alg: str
    state: KeyState
    created: dt.datetime
    activated: dt.datetime | None = None
    retired: dt.datetime | None = None
    # Set by `retire --now`: the key left the JWKS at once (compromise), so nothing it signed verifies.
    withdrawn: dt.datetime | None = None
    encrypted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "state": self.state.value,
            "created": _iso(self.created),
            "activated": _iso(self.activated),
            "retired": _iso(self.retired),
            "withdrawn": _iso(self.withdrawn),
            "encrypted": self.encrypted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        alg = data["alg"]
        if alg not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {alg!r}")
        return cls(
            kid=str(data["kid"]),
            alg=alg,
            state=KeyState(data["state"]),
            created=_parse_time(data["created"]) or _now(),
            activated=_parse_time(data.get("activated")),
            retired=_parse_time(data.get("retired")),
            withdrawn=_parse_time(data.get("withdrawn")),
            encrypted=bool(data.get("encrypted", False)),
        )


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key of the keyring with its private half, ready to sign."""

    record: KeyRecord
    jwk: JoseKey = field(repr=False)

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def alg(self) -> str:
        return self.record.alg

    @property
    def state(self) -> KeyState:
        return self.record.state

    @property
    def is_published(self) -> bool:
        return self.record.withdrawn is None

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK with kid, alg and use; never a private member."""
        public = {k: v for k, v in self.jwk.as_dict(private=False).items() if k not in PRIVATE_MEMBERS}
        public.update(kid=self.kid, alg=self.alg, use="sig")
        return public

    def sign(self, claims: dict[str, Any], *, typ: str = "JWT") -> str:
        """Sign claims as a compact JWT with this key's kid and alg."""
        header = {"alg": self.alg, "kid": self.kid, "typ": typ}
        return jwt.encode(header, claims, self.jwk, registry=_REGISTRIES[self.alg])


@dataclass(frozen=True, slots=True)
class LoadedKeys:
    """One consistent view of the keyring, with the JWKS document rendered once."""

    keys: tuple[SigningKey, ...]
    jwks_json: bytes
    etag: str
    # The published keys, ready to verify this IdP's own tokens (access tokens at /userinfo, hints at /logout),
    # with the registry of their algorithms: pass both to jwt.decode.
    public_keys: KeySet
    verifier: JWSRegistry

    @classmethod
    def of(cls, keys: Sequence[SigningKey]) -> LoadedKeys:
        document = {"keys": [key.public_jwk() for key in keys if key.is_published]}
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        return cls(
            keys=tuple(keys),
            jwks_json=body,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            public_keys=KeySet.import_key_set(document),  # type: ignore[arg-type]  # our own JWKS document
            verifier=jws_registry(sorted({key.alg for key in keys}, key=ALGORITHMS.index)),
        )

    def active(self, alg: str) -> SigningKey:
        """The key that signs with `alg`.

        Raises:
            KeyringStateError: no active key for `alg`.
        """
        for key in self.keys:
            if key.alg == alg and key.state is KeyState.ACTIVE:
                return key
        raise KeyringStateError(f"the keyring has no active {alg} key: run `idp keys rotate --alg {alg}`")

    @property
    def signing_algorithms(self) -> list[str]:
        """Algorithms with an active key, in the keyring's order."""
        return sorted({key.alg for key in self.keys if key.state is KeyState.ACTIVE}, key=ALGORITHMS.index)


class KeyStore(Protocol):
    """Where key records and private keys live: files here; a fleet could keep them in the database."""

    def stamp(self) -> object:
        """A cheap value that changes whenever the stored keyring changes."""

    def exists(self) -> bool: ...

    def read(self) -> list[SigningKey]:
        """Every key, private halves decrypted."""

    def read_records(self) -> list[KeyRecord]:
        """Every key's record, without reading a private key."""

    def verify(self) -> list[SigningKey]:
        """Every key, read as the servers would read it (as their user, with their passphrase)."""

    def check_creatable(self) -> None:
        """Raise if there is no keyring but there are keys, which a new keyring would destroy; changes nothing."""

    def transaction(self) -> contextlib.AbstractContextManager[list[SigningKey]]:
        """Read under an exclusive lock; the caller edits the list in place and it is written on exit."""


class FileKeyStore:
    """keys/keyring.json (the records) and keys/<kid>.pem (PKCS#8, 0600), written atomically under flock.

    Servers run as the user that owns the folder: files written here by root go to that user.
    """

    def __init__(self, directory: Path, passphrase: str | None) -> None:
        self.directory = directory
        self.passphrase = passphrase.encode() if passphrase else None
        self.manifest = directory / MANIFEST
        # Decrypted keys by kid, with the identity of the file each came from: a reload decrypts only new files.
        self._decrypted: dict[str, tuple[tuple[object, ...], JoseKey]] = {}

    def stamp(self) -> object:
        try:
            st = self.manifest.stat()
        except FileNotFoundError:
            return None
        # rename() gives the manifest a new inode, so equal mtimes within a tick still differ.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def exists(self) -> bool:
        return self.manifest.exists()

    def read(self) -> list[SigningKey]:
        records = self._read_manifest()
        keys = [SigningKey(record, self._read_private_key(record)) for record in records]
        kept = {record.kid for record in records}
        self._decrypted = {kid: held for kid, held in self._decrypted.items() if kid in kept}
        return keys

    def read_records(self) -> list[KeyRecord]:
        return self._read_manifest()

    def verify(self) -> list[SigningKey]:
        """Every key, after checking that the folder's owner (the servers' user) can read each file.

        Raises:
            KeyringError: a file the servers cannot read, naming it and the command that fixes it.
        """
        try:
            folder = self.directory.stat()
        except OSError as exc:
            raise KeyringCorruptError(f"{self.directory} cannot be read: {exc.strerror}") from None
        # Shared, so that no change (a prune deleting files) lands between reading the manifest and the key files.
        with self._lock(fcntl.LOCK_SH, self._owner()):
            records = self._read_manifest()
            for path in [self.manifest, *(self.directory / f"{record.kid}.pem" for record in records)]:
                try:
                    info = path.stat()
                except OSError:
                    continue  # read() names it
                if not _readable_by(info, folder.st_uid, folder.st_gid):
                    raise KeyringError(
                        f"{path} belongs to uid {info.st_uid}, but servers run as uid {folder.st_uid}, which owns "
                        f"{self.directory}, and cannot read it: run `chown {folder.st_uid}:{folder.st_gid} {path}`"
                    )
            return self.read()

    def check_creatable(self) -> None:
        if self.manifest.exists():
            return
        orphans = list(self.directory.glob("*.pem"))
        if orphans:
            count = f"{len(orphans)} key file" + ("s" if len(orphans) > 1 else "")
            raise KeyringCorruptError(
                f"{self.directory} holds {count} but no {MANIFEST}: restore the folder from your latest backup, "
                "or move the .pem files out of it to start a new keyring"
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[list[SigningKey]]:
        # Every change rewrites the manifest and deletes the key files it does not name: without a manifest, that
        # would be every key. Refused before anything (even the lock file) is created.
        self.check_creatable()
        self._ensure_directory()
        owner = self._owner()
        with self._lock(fcntl.LOCK_EX, owner):
            if self.exists():
                keys = self.read()
            else:
                self.check_creatable()
                keys = []
            before = {key.kid for key in keys}
            yield keys
            for key in keys:
                if key.kid not in before:
                    self._write_private_key(key, owner)
            self._write_manifest([key.record for key in keys], owner)
            # Files of keys that left the manifest go only after the manifest no longer names them.
            kept = {key.kid for key in keys}
            for path in self.directory.glob("*.pem"):
                if path.stem not in kept:
                    path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self, operation: int, owner: tuple[int, int] | None = None) -> Iterator[None]:
        """Hold the keyring's flock (LOCK_EX to change it, LOCK_SH to read it whole); `owner` gets a new lock file."""
        path = self.directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyringError(f"cannot open {path}: {exc.strerror}") from None
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            fcntl.flock(fd, operation)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise KeyringError(f"cannot create the keyring folder {self.directory}: {exc.strerror}") from None

    def _owner(self) -> tuple[int, int] | None:
        """The user and group files written here must belong to, when root writes them for another user."""
        if os.geteuid() != 0:
            return None  # anyone else can only write files of their own
        try:
            folder = self.directory.stat()
        except OSError:
            return None  # the write that follows names the folder
        return None if folder.st_uid == 0 else (folder.st_uid, folder.st_gid)

    def _read_manifest(self) -> list[KeyRecord]:
        try:
            data = json.loads(self.manifest.read_bytes())
        except FileNotFoundError:
            raise KeyringCorruptError(f"{self.manifest} is missing: run `idp init` to create the keyring") from None
        except OSError as exc:
            raise KeyringCorruptError(f"{self.manifest} cannot be read: {exc.strerror}") from None
        except ValueError:
            raise KeyringCorruptError(f"{self.manifest} is not valid JSON") from None
        try:
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            records = [KeyRecord.from_json(item) for item in data["keys"]]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise KeyringCorruptError(f"{self.manifest} is malformed: {exc}") from None
        if len({record.kid for record in records}) != len(records):
            raise KeyringCorruptError(f"{self.manifest} is malformed: a kid appears twice")
        return records

    def _read_private_key(self, record: KeyRecord) -> JoseKey:
        path = self.directory / f"{record.kid}.pem"
        try:
            with path.open("rb") as handle:
                info = os.fstat(handle.fileno())
                # Files are replaced by rename, never rewritten in place: a new file is a new inode.
                identity = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size, record.alg, record.encrypted)
                held = self._decrypted.get(record.kid)
                if held is not None and held[0] == identity:
                    return held[1]
                data = handle.read()
        except OSError as exc:
            raise KeyringCorruptError(f"{path} cannot be read: {exc.strerror}") from None
        jwk = self._load_private_key(path, record, data)
        self._decrypted[record.kid] = (identity, jwk)
        return jwk

    def _load_private_key(self, path: Path, record: KeyRecord, data: bytes) -> JoseKey:
        if record.encrypted and self.passphrase is None:
            raise KeyringLockedError(f"{path} is encrypted: set IDP_KEYS_PASSPHRASE")
        try:
            # Our own 0600 files, written by this code: RSA's expensive consistency check (~45 ms a key) only
            # guards against hostile key material, and would make every reload and CLI command slow.
            private = serialization.load_pem_private_key(
                data, self.passphrase if record.encrypted else None, unsafe_skip_rsa_key_validation=True
            )
        except (ValueError, TypeError):
            if record.encrypted and b"ENCRYPTED PRIVATE KEY" in data and self.passphrase is not None:
                # A wrong passphrase usually fails the padding check, but about one time in 256 it decrypts to
                # garbage that fails later with another message: both mean the same to the admin.
                raise KeyringLockedError(f"IDP_KEYS_PASSPHRASE does not decrypt {path}") from None
            raise KeyringCorruptError(f"{path} is not a readable private key") from None
        try:
            return _jose_key(record.alg, private)
        except ValueError as exc:
            raise KeyringCorruptError(f"{path} does not hold a {record.alg} key: {exc}") from None

    def _write_private_key(self, key: SigningKey, owner: tuple[int, int] | None) -> None:
        private = key.jwk.private_key
        assert private is not None  # generated keys are private
        if self.passphrase:
            pem = pkcs8.encrypted_pem(private, self.passphrase)
        else:
            pem = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        _atomic_write(self.directory / f"{key.kid}.pem", pem, owner)

    def _write_manifest(self, records: Sequence[KeyRecord], owner: tuple[int, int] | None) -> None:
        body = {"version": MANIFEST_VERSION, "keys": [record.to_json() for record in records]}
        _atomic_write(self.manifest, (json.dumps(body, indent=2) + "\n").encode(), owner)


class Keyring:
    """The keys a deployment signs with: their lifecycle, and a cached view for running servers."""

    def __init__(
        self,
        store: KeyStore,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: LoadedKeys | None = None
        self._stamp: object = None
        self._checked_at = float("-inf")
        self.last_error: KeyringError | None = None

    @classmethod
    def from_directory(cls, directory: Path, passphrase: str | None = None, **kwargs: Any) -> Keyring:
        return cls(FileKeyStore(directory, passphrase), **kwargs)

    # -- reading, for servers ------------------------------------------------------------------------------------

    def current(self) -> LoadedKeys:
        """The keys as stored, re-read when the store changed (checked at most every `check_interval`).

        A running server keeps signing with the last good keys if the store turns unreadable; `last_error`
        says why, for /readyz. Keys the changed store withdraws or no longer lists are dropped all the same.

        Raises:
            KeyringError: the keyring has never been loaded successfully.
        """
        loaded = self._loaded
        now = self._clock()
        if now - self._checked_at < self.check_interval:
            if loaded is not None:
                return loaded
            if self.last_error is not None:
                raise self.last_error
        with self._lock:
            self._checked_at = now
            stamp = self.store.stamp()
            # A keyring that failed to load is tried again at every interval, changed or not: the repair may leave
            # keyring.json alone (a key file restored from backup, its owner fixed).
            if self._loaded is None or stamp != self._stamp or self.last_error is not None:
                try:
                    self._loaded = LoadedKeys.of(self.store.read())
                    self.last_error = None
                except KeyringError as exc:
                    if self._loaded is not None and str(exc) != str(self.last_error):
                        log.warning("the keyring changed but cannot be loaded; serving the keys held: %s", exc)
                    self.last_error = exc
                    if self._loaded is not None:
                        self._loaded = self._without_withdrawn(self._loaded)
                self._stamp = stamp
            if self._loaded is None:
                assert self.last_error is not None
                raise self.last_error
            return self._loaded

    def check(self) -> None:
        """Re-read the store now and raise what is wrong with it (for /readyz and `idp serve`)."""
        self._checked_at = float("-inf")
        self.current()
        if self.last_error is not None:
            raise self.last_error

    def _without_withdrawn(self, loaded: LoadedKeys) -> LoadedKeys:
        """The keys held, less those the stored records withdraw or no longer list (docs/admin.md section 4).

        A key withdrawn as compromised must stop verifying even when the rest of the change cannot be loaded (a new
        key under another passphrase, a damaged file). The records alone say which: they need no private key. The
        keys that stay take their new records, so the next key the server held signs in a withdrawn key's place.
        """
        try:
            records = {record.kid: record for record in self.store.read_records()}
        except KeyringError:
            return loaded  # the records themselves are unreadable: nothing to honour
        dropped = [
            key.kid
            for key in loaded.keys
            if key.is_published
            and (key.kid not in records or records[key.kid].withdrawn is not None or records[key.kid].alg != key.alg)
        ]
        if not dropped:
            return loaded
        log.warning("keyring: no longer trusting %s, withdrawn or removed by the change", ", ".join(dropped))
        return LoadedKeys.of(
            [
                SigningKey(records[key.kid], key.jwk)
                for key in loaded.keys
                if key.kid in records and key.kid not in dropped
            ]
        )

    # -- lifecycle, for the CLI ----------------------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        """Every key's record, as stored (reads and decrypts every private key, proving they are usable)."""
        return [key.record for key in self.store.read()]

    def stored_records(self) -> list[KeyRecord]:
        """Every key's record, as stored, without reading a private key (cheap; proves nothing of the keys)."""
        return self.store.read_records()

    def verify(self) -> list[KeyRecord]:
        """Every key's record, after reading the store as the servers would, with this keyring's passphrase.

        Raises:
            KeyringError: what would stop a server loading the keyring.
        """
        return [key.record for key in self.store.verify()]

    def check_creatable(self) -> None:
        """Raise if a new keyring here would destroy keys (key files without a manifest); changes nothing.

        Raises:
            KeyringCorruptError: naming the folder and what the admin should do.
        """
        self.store.check_creatable()

    def ensure_default(self) -> list[KeyRecord]:
        """Create the default keyring (ES256 and RS256, each active plus next) unless one exists; the new keys."""
        created: list[KeyRecord] = []
        if self.store.exists():
            self.store.read()  # still prove it is readable (and the passphrase right)
            return created
        with self.store.transaction() as keys:
            if keys:
                return created
            now = _now()
            for alg in DEFAULT_ALGORITHMS:
                keys.append(_generate(alg, KeyState.ACTIVE, now, self._encrypted))
                keys.append(_generate(alg, KeyState.NEXT, now, self._encrypted))
            created = [key.record for key in keys]
        return created

    def generate(self, alg: str) -> KeyRecord:
        """Add a `next` key for `alg`: published in the JWKS at once, signing only after a rotation.

        Raises:
            KeyringStateError: `alg` is unknown or already has a next key.
        """
        _check_alg(alg)
        with self.store.transaction() as keys:
            existing = [key for key in keys if key.alg == alg and key.state is KeyState.NEXT]
            if existing:
                raise KeyringStateError(f"{alg} already has a next key ({existing[0].kid}): rotate or retire it first")
            key = _generate(alg, KeyState.NEXT, _now(), self._encrypted)
            keys.append(key)
        return key.record

    def rotate(self, alg: str | None = None, *, min_published: int = 0) -> RotationResult:
        """next → active, active → retired, and a new next; for `alg` or for every algorithm that signs.

        `min_published` is the JWKS cache age: a next key younger than it may be unknown to some relying
        services, which the result's warnings say.
        """
        if alg is not None:
            _check_alg(alg)
        warnings: list[str] = []
        activated: list[KeyRecord] = []
        with self.store.transaction() as keys:
            now = _now()
            algs = [alg] if alg else sorted({key.alg for key in keys if key.state is not KeyState.RETIRED})
            if not algs:
                raise KeyringStateError("the keyring has no key to rotate: run `idp keys generate --alg ALG`")
            for name in algs:
                new_active, warning = _promote(keys, name, now, self._encrypted, min_published)
                if warning:
                    warnings.append(warning)
                keys.append(_generate(name, KeyState.NEXT, now, self._encrypted))
                activated.append(new_active.record)
        return RotationResult(activated=activated, warnings=warnings)

    def retire(self, kid: str, *, now: bool = False, min_published: int = 0) -> RotationResult:
        """Stop signing with `kid` (its alg's next key takes over); `now` also drops it from the JWKS.

        Raises:
            UnknownKeyError: no key has this kid.
        """
        warnings: list[str] = []
        activated: list[KeyRecord] = []
        with self.store.transaction() as keys:
            at = _now()
            index = next((i for i, key in enumerate(keys) if key.kid == kid), None)
            if index is None:
                raise UnknownKeyError(f"no key has kid {kid!r}: see `idp keys list`")
            key = keys[index]
            if key.state is KeyState.ACTIVE:
                new_active, warning = _promote(keys, key.alg, at, self._encrypted, min_published)
                activated.append(new_active.record)
                if warning:
                    warnings.append(warning)
                # As after a rotation, the algorithm keeps a published next key for the rotation after this one.
                keys.append(_generate(key.alg, KeyState.NEXT, at, self._encrypted))
                key = keys[index]
            record = key.record
            if record.state is not KeyState.RETIRED:
                record = replace(record, state=KeyState.RETIRED, retired=at)
            if now and record.withdrawn is None:
                record = replace(record, withdrawn=at)
            keys[index] = replace(key, record=record)
        return RotationResult(activated=activated, warnings=warnings)

    def prune(self, *, keep_for: dt.timedelta) -> list[KeyRecord]:
        """Drop retired keys retired longer than `keep_for` ago, and withdrawn keys; the dropped records."""
        with self.store.transaction() as keys:
            cutoff = _now() - keep_for
            dropped = [
                key
                for key in keys
                if key.state is KeyState.RETIRED
                and (key.record.withdrawn is not None or (key.record.retired or key.record.created) <= cutoff)
            ]
            for key in dropped:
                keys.remove(key)
        return [key.record for key in dropped]

    @property
    def _encrypted(self) -> bool:
        return getattr(self.store, "passphrase", None) is not None


@dataclass(frozen=True, slots=True)
class RotationResult:
    activated: list[KeyRecord]
    warnings: list[str]


def _promote(
    keys: list[SigningKey], alg: str, now: dt.datetime, encrypted: bool, min_published: int
) -> tuple[SigningKey, str | None]:
    """Retire alg's active key and activate its next key (generating one if there is none), in place."""
    warning = None
    for i, key in enumerate(keys):
        if key.alg == alg and key.state is KeyState.ACTIVE:
            keys[i] = replace(key, record=replace(key.record, state=KeyState.RETIRED, retired=now))
    next_index = next((i for i, key in enumerate(keys) if key.alg == alg and key.state is KeyState.NEXT), None)
    if next_index is None:
        new = _generate(alg, KeyState.ACTIVE, now, encrypted)
        keys.append(new)
        return new, (
            f"{alg}: there was no next key, so {new.kid} signs at once; relying services that cached the "
            "JWKS will not know it until their cache expires"
        )
    key = keys[next_index]
    age = (now - key.record.created).total_seconds()
    if age < min_published:
        warning = (
            f"{alg}: the next key {key.kid} was published {int(age)} s ago, less than the JWKS cache age "
            f"({min_published} s); some relying services may not know it yet"
        )
    keys[next_index] = replace(key, record=replace(key.record, state=KeyState.ACTIVE, activated=now))
    return keys[next_index], warning


def _generate(alg: str, state: KeyState, now: dt.datetime, encrypted: bool) -> SigningKey:
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg in ("RS256", "PS256"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    jwk = _jose_key(alg, private)
    record = KeyRecord(
        kid=jwk.thumbprint(),  # RFC 7638: a kid any party can recompute from the public key
        alg=alg,
        state=state,
        created=now,
        activated=now if state is KeyState.ACTIVE else None,
        encrypted=encrypted,
    )
    return SigningKey(record, jwk)


def _jose_key(alg: str, private: object) -> JoseKey:
    if alg == "ES256" and isinstance(private, ec.EllipticCurvePrivateKey):
        if private.curve.name != "secp256r1":
            raise ValueError(f"curve {private.curve.name} is not P-256")
        return ECKey.import_key(private)
    if alg in ("RS256", "PS256") and isinstance(private, rsa.RSAPrivateKey):
        return RSAKey.import_key(private)
    if alg == "EdDSA" and isinstance(private, ed25519.Ed25519PrivateKey):
        return OKPKey.import_key(private)
    raise ValueError(f"{type(private).__name__} cannot sign {alg}")


def _check_alg(alg: str) -> None:
    if alg not in ALGORITHMS:
        raise KeyringStateError(f"unknown algorithm {alg!r}: use one of {', '.join(ALGORITHMS)}")


def _readable_by(info: os.stat_result, uid: int, gid: int) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IRUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IRGRP)
    return bool(info.st_mode & stat.S_IROTH)


def _atomic_write(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """Write, fsync and rename, so readers see the old file or the new one and never a half-written one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KeyringError(f"cannot write {path}: {exc.strerror}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _parse_time(value: object) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"time without UTC offset: {value!r}")
    return parsed
