"""Residents at scale for the whole-sign-in bench (bench/signins.py): a million in minutes, with COPY.

Everything about the residents follows from a `Population`: a random seed and a count. Resident i has an id, a
phone number, a name and birth date, a passkey (credential id and key) and, for odd i, an authenticator app
secret, all derived from the seed, so the load generator can sign in as any of them without a list of a million
keys, and a database kept between runs (`--database NAME`) carries the seed in its COMMENT.

What a row holds is decided by the project's own functions: one throwaway resident goes through
`resident_for_identity`, `register_passkey` (a real WebAuthn registration), `begin_enrolment` +
`confirm_enrolment` and `grant_consent`; its rows are read back as templates and deleted, and each of the N
residents gets a copy of them with its own values (ids, CI index, phone, credential, encrypted TOTP secret) by
COPY. CI indexes come from `ci_index` over the CI the sandbox agency derives (`AgencyKeys.ci`), TOTP secrets are
encrypted with `data_fernet`, so the IdP reads every row as if it had written it.

Passkey keys come from a pool of KEY_POOL P-256 keys (resident i uses key i mod KEY_POOL): the IdP's work per
assertion (parse the stored COSE key, verify one ES256 signature) is the same whichever key, and deriving a
million keys would cost the seed minutes of CPU for nothing the IdP can tell. Credential ids are each resident's
own, so the lookup by credential id is as real as the lookup by phone.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent / "tests"

KEY_POOL = 256  # distinct passkey keys; see the module docstring
COPY_PROGRESS = 200_000  # rows between progress lines
# Resident i's phone is 010-5XXX-XXXX: outside the sandbox fixture's 010-0000-XXXX block, room for 10 million.
PHONE_BASE = 50_000_000
SURNAMES = "김이박최정강조윤장임한오서신권황안송류홍"
SYLLABLES = "민서준지현우수영하은도윤예성진주원혜경태"
CARRIERS = ("SKT", "KT", "LGU")
REDIRECT_URI = "http://localhost/callback"
CLIENT_SCOPES = ("openid", "profile", "phone")
# ES256 in COSE (RFC 9053): kty EC2, alg ES256, crv P-256, as an authenticator sends the credential key.
COSE_KTY, COSE_ALG, COSE_CRV, COSE_X, COSE_Y = 1, 3, -1, -2, -3
KTY_EC2, ALG_ES256, CRV_P256 = 2, -7, 1
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class SeedError(Exception):
    """The residents cannot be seeded or a kept database does not hold what the run needs."""


@dataclass(frozen=True, slots=True)
class Person:
    """What the carrier form asks for and the sandbox agency checks (one line per carrier resident)."""

    person_id: str
    name: str
    birthdate: dt.date
    rrn_digit7: str
    phone: str
    carrier: str


@dataclass(frozen=True)
class Population:
    """N residents derived from a seed. Odd residents have an authenticator app (half of them); the first
    `carrier_lines` even residents are known to the sandbox agency, for carrier sign-ins (they have no app, whose
    code would otherwise be asked after the carrier's)."""

    seed: bytes
    residents: int
    carrier_lines: int

    @classmethod
    def new(cls, residents: int, carrier_lines: int) -> Population:
        if residents < 2:
            raise SeedError("at least 2 residents")
        return cls(secrets.token_bytes(32), residents, min(carrier_lines, (residents + 1) // 2))

    # -- per resident ------------------------------------------------------------------------------------------

    def _mac(self, label: str, i: int) -> bytes:
        return hmac.new(self.seed, f"{label}:{i}".encode(), hashlib.sha256).digest()

    def resident_id(self, i: int) -> uuid.UUID:
        return uuid.UUID(bytes=self._mac("resident", i)[:16], version=4)

    def phone(self, i: int) -> str:
        return f"+8210{PHONE_BASE + i:08d}"

    def person(self, i: int) -> Person:
        mac = self._mac("person", i)
        name = SURNAMES[mac[0] % len(SURNAMES)] + SYLLABLES[mac[1] % len(SYLLABLES)] + SYLLABLES[mac[2] % 20]
        born = dt.date(1950, 1, 1) + dt.timedelta(days=int.from_bytes(mac[3:6]) % (50 * 365))
        return Person(f"bench-{i}", name, born, "1" if mac[6] % 2 else "2", self.phone(i), CARRIERS[i % 3])

    def has_totp(self, i: int) -> bool:
        return i % 2 == 1

    def totp_secret(self, i: int) -> str:
        """The Base32 secret (160 bits, RFC 4226 §4) the resident's authenticator app holds."""
        return base64.b32encode(self._mac("totp", i)[:20]).decode()

    def credential_id(self, i: int) -> bytes:
        return self._mac("credential", i)

    def key(self, i: int) -> ec.EllipticCurvePrivateKey:
        return self._pool_key(i % KEY_POOL)

    @functools.lru_cache(maxsize=KEY_POOL)  # noqa: B019  (a few hundred keys for the life of the run)
    def _pool_key(self, k: int) -> ec.EllipticCurvePrivateKey:
        scalar = int.from_bytes(hmac.new(self.seed, f"key:{k}".encode(), hashlib.sha512).digest()) % (P256_ORDER - 1)
        return ec.derive_private_key(scalar + 1, ec.SECP256R1())

    def cose_key(self, i: int) -> bytes:
        return self._pool_cose(i % KEY_POOL)

    @functools.lru_cache(maxsize=KEY_POOL)  # noqa: B019
    def _pool_cose(self, k: int) -> bytes:
        numbers = self._pool_key(k).public_key().public_numbers()
        return cbor2.dumps(
            {
                COSE_KTY: KTY_EC2,
                COSE_ALG: ALG_ES256,
                COSE_CRV: CRV_P256,
                COSE_X: numbers.x.to_bytes(32, "big"),
                COSE_Y: numbers.y.to_bytes(32, "big"),
            }
        )

    def carrier_resident(self, line: int) -> int:
        return 2 * line

    def totp_resident(self, k: int) -> int:
        return 2 * k + 1

    @property
    def totp_residents(self) -> int:
        return self.residents // 2

    # -- the deployment's secrets ------------------------------------------------------------------------------

    def idp_secrets(self) -> dict[str, str]:
        """IDP_SECRET_KEY, IDP_DATA_KEY, IDP_CI_PEPPER and IDP_PAIRWISE_SECRET: fixed by the seed, so a kept
        database's encrypted TOTP secrets and CI indexes stay readable in the next run."""
        names = ("SECRET_KEY", "DATA_KEY", "CI_PEPPER", "PAIRWISE_SECRET")
        return {f"IDP_{name}": base64.urlsafe_b64encode(self._mac(name, 0)).decode().rstrip("=") for name in names}

    def sandbox_ci_secret(self) -> bytes:
        """The sandbox agency's CI derivation secret (idp/sandbox/signing.py), so its CIs match the seeded ones."""
        return self._mac("sandbox-ci", 0)

    # -- kept in the database's comment ------------------------------------------------------------------------

    def to_json(self, **extra: object) -> str:
        return json.dumps(
            {
                "bench": "signins",
                "seed": self.seed.hex(),
                "residents": self.residents,
                "carrier_lines": self.carrier_lines,
                **extra,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> tuple[Population, dict[str, Any]]:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("bench") != "signins":
            raise SeedError("not a database seeded by bench/seed.py")
        return cls(bytes.fromhex(data["seed"]), int(data["residents"]), int(data["carrier_lines"])), data


# -- the sandbox agency --------------------------------------------------------------------------------------------


def write_sandbox_state(state_dir: Path, population: Population) -> None:
    """The sandbox's CI secret and its carrier lines (the first `carrier_lines` carrier residents), written
    before it starts (it reads both from its state folder)."""
    from idp.sandbox.residents import STATE_VERSION, Carrier, Line
    from idp.sandbox.signing import DERIVATION_SECRET_FILE
    from idp.sandbox.state import write_private_file

    write_private_file(state_dir / DERIVATION_SECRET_FILE, population.sandbox_ci_secret())
    lines = []
    for line in range(population.carrier_lines):
        person = population.person(population.carrier_resident(line))
        lines.append(
            Line(
                person_id=person.person_id,
                name=person.name,
                birthdate=person.birthdate.isoformat(),
                rrn_digit7=person.rrn_digit7,
                phone=person.phone,
                carrier=Carrier(person.carrier),
                added=True,
            ).to_json()
        )
    body = {"version": STATE_VERSION, "residents": lines, "ci_versions": {}}
    write_private_file(state_dir / "residents.json", (json.dumps(body, ensure_ascii=False) + "\n").encode())


def sandbox_ci_function(population: Population) -> Callable[[str], str]:
    """The CI (version 1) the sandbox agency gives a person, by its own derivation (`AgencyKeys.ci`)."""
    from idp.sandbox.signing import DERIVATION_SECRET_FILE, AgencyKeys
    from idp.sandbox.state import write_private_file

    with tempfile.TemporaryDirectory(prefix="idp-bench-agency-") as folder:
        write_private_file(Path(folder) / DERIVATION_SECRET_FILE, population.sandbox_ci_secret())
        keys = AgencyKeys.load(Path(folder))
    return lambda person_id: keys.ci(person_id, 1)


# -- templates through the project's own functions ------------------------------------------------------------------


@dataclass
class Templates:
    """One row of each table as the project writes it, read back as column → value."""

    resident: dict[str, Any]
    passkey: dict[str, Any]
    totp_device: dict[str, Any]
    consent: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BenchClient:
    client_id: str
    client_secret: str


def _soft_authenticator(rp_id: str, origin: str) -> Any:
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from webauthn_authenticator import SoftAuthenticator

    # A synced passkey (backup eligible and backed up), as phones make them: counter 0, BE and BS set.
    return SoftAuthenticator(rp_id, origin, backup_eligible=True)


def make_templates(db: Any, settings: Any, client_id: str, *, now: dt.datetime) -> Templates:
    """A throwaway resident signed up through the project's functions; its rows as templates, then deleted."""
    from sqlalchemy import inspect, select

    from idp.authn.attestation import AttestationPolicy
    from idp.authn.carrier import VerificationMethod, VerifiedIdentity
    from idp.authn.passkeys import new_binding, register_passkey, registration_options
    from idp.authn.residents import resident_for_identity
    from idp.authn.totp import begin_enrolment, confirm_enrolment
    from idp.models import Consent, Passkey, Resident, TotpDevice
    from idp.oidc.consent import grant_consent
    from idp.settings import data_fernet

    identity = VerifiedIdentity(
        ci=secrets.token_urlsafe(64),
        ci_previous=None,
        name="견본",
        birthdate=dt.date(1980, 1, 1),
        sex="M",
        nationality="KR",
        phone="+821049999999",
        carrier="SKT",
        method=VerificationMethod.SMS,
        agency="sandbox",
        agency_txn_id=secrets.token_urlsafe(24),
        verified_at=now,
        jti=secrets.token_urlsafe(16),
        session_binding="",
        expires_at=now + dt.timedelta(minutes=10),
    )
    resident = resident_for_identity(db, identity, pepper=settings.ci_pepper, now=now).resident
    binding = new_binding()
    policy = AttestationPolicy()
    options = registration_options(
        db, resident, rp_id=settings.rp_id, rp_name="bench", binding=binding, policy=policy, now=now
    )
    response = _soft_authenticator(settings.rp_id, settings.origin).create(json.loads(options))
    register_passkey(
        db,
        resident,
        json.dumps(response),
        rp_id=settings.rp_id,
        origin=settings.origin,
        binding=binding,
        policy=policy,
        name="내 휴대폰",
        now=now,
    )
    cipher = data_fernet(settings)
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name="bench", now=now)
    code = _totp_code(enrolment.secret, now)
    confirm_enrolment(db, enrolment.device, code, cipher=cipher, client_ip=None, now=now)
    grant_consent(db, resident.id, client_id, list(CLIENT_SCOPES), now=now)
    db.flush()

    def row(model: Any, *where: Any) -> dict[str, Any]:
        instance = db.scalar(select(model).where(*where))
        return {column.key: getattr(instance, column.key) for column in inspect(model).columns}

    templates = Templates(
        resident=row(Resident, Resident.id == resident.id),
        passkey=row(Passkey, Passkey.resident_id == resident.id),
        totp_device=row(TotpDevice, TotpDevice.resident_id == resident.id),
        consent=row(Consent, Consent.resident_id == resident.id),
    )
    db.delete(resident)  # its passkey, app and consent go with it (ON DELETE CASCADE)
    db.flush()
    return templates


def _totp_code(secret: str, now: dt.datetime) -> str:
    import pyotp

    return pyotp.TOTP(secret).at(now)


def create_bench_client(db: Any, settings: Any, *, now: dt.datetime) -> BenchClient:
    """The relying service the sign-ins are for: confidential, code flow, a third party (consent is asked, and
    every resident has given it)."""
    from idp.oidc.clients import ClientSpec, create_client, secret_digest_key

    spec = ClientSpec(
        name="벤치마크 서비스",
        redirect_uris=(REDIRECT_URI,),
        grant_types=("authorization_code", "refresh_token"),
        scopes=CLIENT_SCOPES,
    )
    created = create_client(
        db, spec, secret_key=secret_digest_key(settings.secret_key), issuer=settings.issuer, now=now
    )
    assert created.secret is not None
    return BenchClient(created.client.id, created.secret)


# -- COPY ------------------------------------------------------------------------------------------------------


def _copy_rows(
    raw: Any, table: Any, template: Mapping[str, Any], rows: Iterator[Mapping[str, Any]], *, label: str
) -> int:
    """COPY `rows` (each the template with its own values) into `table`; the count."""
    from sqlalchemy import JSON

    columns = [column for column in table.columns if column.key in template]
    json_columns = {column.key for column in columns if isinstance(column.type, JSON)}
    names = ", ".join(f'"{column.name}"' for column in columns)
    count = 0
    started = time.monotonic()
    with raw.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for values in rows:
            merged = {**template, **values}
            copy.write_row(
                [
                    json.dumps(merged[c.key]) if c.key in json_columns and merged[c.key] is not None else merged[c.key]
                    for c in columns
                ]
            )
            count += 1
            if count % COPY_PROGRESS == 0:
                print(f"  {label}: {count:,} rows ({time.monotonic() - started:.0f} s)", flush=True)
    return count


@dataclass(frozen=True, slots=True)
class SeedReport:
    residents: int
    passkeys: int
    totp_devices: int
    consents: int
    seconds: float
    copy_seconds: float
    analyze_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def seed_residents(url: str, settings: Any, population: Population) -> tuple[BenchClient, SeedReport]:
    """The bench client and the population's residents (each with a passkey and a consent, odd ones with an
    authenticator app) in the database at `url` (migrated); tables analysed afterwards."""
    from sqlalchemy import text

    from idp.authn.residents import CI_PEPPER_VERSION, ci_index
    from idp.db import make_engine, make_session_factory
    from idp.models import Consent, Passkey, Resident, TotpDevice
    from idp.settings import data_fernet

    started = time.monotonic()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as db:
            client = create_bench_client(db, settings, now=now)
            templates = make_templates(db, settings, client.client_id, now=now)
            db.commit()
        ci_of = sandbox_ci_function(population)
        cipher = data_fernet(settings)
        pepper = settings.ci_pepper
        verified_at = now - dt.timedelta(days=30)
        n = population.residents

        def residents() -> Iterator[dict[str, Any]]:
            for i in range(n):
                person = population.person(i)
                yield {
                    "id": population.resident_id(i),
                    "ci_index": ci_index(ci_of(person.person_id), pepper),
                    "ci_pepper_version": CI_PEPPER_VERSION,
                    "name": person.name,
                    "birthdate": person.birthdate,
                    "phone": person.phone,
                    "carrier": person.carrier,
                    "verified_at": verified_at,
                    "created_at": verified_at,
                    "updated_at": verified_at,
                }

        def passkeys() -> Iterator[dict[str, Any]]:
            for i in range(n):
                yield {
                    "id": uuid.UUID(bytes=population._mac("passkey", i)[:16], version=4),
                    "resident_id": population.resident_id(i),
                    "credential_id": population.credential_id(i),
                    "public_key": population.cose_key(i),
                    "created_at": verified_at,
                }

        def totp_devices() -> Iterator[dict[str, Any]]:
            for i in range(1, n, 2):
                yield {
                    "id": uuid.UUID(bytes=population._mac("totp-device", i)[:16], version=4),
                    "resident_id": population.resident_id(i),
                    "secret_encrypted": cipher.encrypt(population.totp_secret(i).encode()),
                    "confirmed_at": verified_at,
                    "last_used_step": None,
                    "last_used_at": None,
                    "created_at": verified_at,
                }

        def consents() -> Iterator[dict[str, Any]]:
            for i in range(n):
                yield {
                    "id": uuid.UUID(bytes=population._mac("consent", i)[:16], version=4),
                    "resident_id": population.resident_id(i),
                    "granted_at": verified_at,
                    "updated_at": verified_at,
                }

        copy_started = time.monotonic()
        counts: dict[str, int] = {}
        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            for model, template, rows in (
                (Resident, templates.resident, residents()),
                (Passkey, templates.passkey, passkeys()),
                (TotpDevice, templates.totp_device, totp_devices()),
                (Consent, templates.consent, consents()),
            ):
                counts[model.__tablename__] = _copy_rows(
                    driver, model.__table__, template, rows, label=model.__tablename__
                )
                driver.commit()
        finally:
            raw.close()
        copy_seconds = time.monotonic() - copy_started
        analyze_started = time.monotonic()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for model in (Resident, Passkey, TotpDevice, Consent):
                # What autovacuum would have done on a base that grew over years: visibility map and statistics.
                connection.execute(text(f'VACUUM (ANALYZE) "{model.__tablename__}"'))
        analyze_seconds = time.monotonic() - analyze_started
    finally:
        engine.dispose()
    report = SeedReport(
        residents=counts["resident"],
        passkeys=counts["passkey"],
        totp_devices=counts["totp_device"],
        consents=counts["consent"],
        seconds=round(time.monotonic() - started, 1),
        copy_seconds=round(copy_seconds, 1),
        analyze_seconds=round(analyze_seconds, 1),
    )
    return client, report
