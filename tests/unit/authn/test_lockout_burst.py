"""A parallel burst gets no more tries than a sequence: every lockout and limit counts an attempt first, atomically,
and judges it only within the allowance, across several worker processes on one database or one Redis."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from cryptography.fernet import Fernet
from parallel_attempts import Burst, run_burst
from sqlalchemy.orm import Session

from idp.authn.lockout import (
    CARRIER_CODES_PER_TXN,
    CARRIER_SENDS_PER_PHONE,
    TOTP_FAILURES_PER_IP,
    TOTP_FAILURES_PER_RESIDENT,
)
from idp.authn.recovery import generate_recovery_codes
from idp.db import make_engine
from idp.models import Resident, TotpDevice

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
WRONG_CODE = "000000"  # not SECRET's code within two steps of NOW
RECOVERY_KEY = b"burst recovery-code key"
# A sequence of wrong codes at one moment is judged up to the free failures and one more, the one that earns the
# first lock (docs/admin.md, "Lockouts"); every later one is refused unjudged.
JUDGED_IN_SEQUENCE_PER_RESIDENT = TOTP_FAILURES_PER_RESIDENT.free + 1
JUDGED_IN_SEQUENCE_PER_IP = TOTP_FAILURES_PER_IP.free + 1


@pytest.fixture(params=["database", "redis"])
def storage(request: pytest.FixtureRequest, redis_url: str) -> str:
    """IDP_RATELIMIT_STORAGE: the database's own counters, or Redis."""
    return "database" if request.param == "database" else redis_url


@pytest.fixture
def data_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def resident_id(fresh_database_url: str, data_key: str) -> str:
    """A resident with a confirmed authenticator (SECRET) and recovery codes, committed for the workers."""
    engine = make_engine(fresh_database_url)
    resident = uuid.uuid4()
    with Session(engine) as db, db.begin():
        db.add(Resident(id=resident, name="김민준", phone=f"+8210{resident.int % 10**8:08d}"))
        db.flush()
        db.add(
            TotpDevice(
                resident_id=resident,
                secret_encrypted=Fernet(data_key.encode()).encrypt(SECRET.encode()),
                created_at=NOW - dt.timedelta(days=1),
                confirmed_at=NOW - dt.timedelta(days=1),
            )
        )
        generate_recovery_codes(db, resident, key=RECOVERY_KEY, now=NOW - dt.timedelta(days=1))
    engine.dispose()
    return str(resident)


def unique_ip() -> str:
    return f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


@pytest.mark.parametrize("kind", ["totp", "recovery"])
def test_parallel_wrong_codes_for_one_resident_are_judged_no_more_than_in_sequence(
    fresh_database_url: str, storage: str, resident_id: str, data_key: str, kind: str
) -> None:
    code = WRONG_CODE if kind == "totp" else "zzzzz-zzzzz"
    # From sixteen addresses, so that only the resident's lockout stands in the way.
    attempts = [
        {"resident": resident_id, "subject": resident_id, "client_ip": unique_ip(), "code": code} for _ in range(16)
    ]
    outcomes = run_burst(
        Burst(kind, fresh_database_url, storage, NOW, attempts, data_key=data_key, recovery_key=RECOVERY_KEY)
    )
    assert outcomes == {"judged": JUDGED_IN_SEQUENCE_PER_RESIDENT, "refused": 16 - JUDGED_IN_SEQUENCE_PER_RESIDENT}, (
        dict(outcomes)
    )


def test_parallel_wrong_codes_from_one_address_are_judged_no_more_than_in_sequence(
    fresh_database_url: str, storage: str, data_key: str
) -> None:
    # Thirty-two numbers nobody has, one wrong code each: only the address's lockout stands in the way.
    client_ip = unique_ip()
    attempts = [
        {"subject": f"+8210{uuid.uuid4().int % 10**8:08d}", "client_ip": client_ip, "code": WRONG_CODE}
        for _ in range(32)
    ]
    outcomes = run_burst(Burst("totp", fresh_database_url, storage, NOW, attempts, data_key=data_key))
    assert outcomes == {"judged": JUDGED_IN_SEQUENCE_PER_IP, "refused": 32 - JUDGED_IN_SEQUENCE_PER_IP}, dict(outcomes)


def test_parallel_codes_for_one_carrier_transaction_reach_the_agency_no_more_than_the_limit(
    fresh_database_url: str, storage: str
) -> None:
    txn = uuid.uuid4().hex
    attempts = [{"txn": txn, "client_ip": unique_ip()} for _ in range(16)]
    outcomes = run_burst(Burst("carrier-code", fresh_database_url, storage, NOW, attempts))
    assert outcomes == {"judged": CARRIER_CODES_PER_TXN.count, "refused": 16 - CARRIER_CODES_PER_TXN.count}, dict(
        outcomes
    )


@pytest.mark.parametrize("method", ["sms", "app"])
def test_parallel_starts_for_one_phone_reach_the_agency_no_more_than_the_daily_limit(
    fresh_database_url: str, storage: str, method: str
) -> None:
    phone = f"+8210{uuid.uuid4().int % 10**8:08d}"
    # From sixteen addresses, so that only the phone's limit stands in the way.
    attempts = [{"phone": phone, "client_ip": unique_ip()} for _ in range(16)]
    outcomes = run_burst(Burst(f"carrier-start-{method}", fresh_database_url, storage, NOW, attempts))
    assert outcomes == {"judged": CARRIER_SENDS_PER_PHONE.count, "refused": 16 - CARRIER_SENDS_PER_PHONE.count}, dict(
        outcomes
    )
