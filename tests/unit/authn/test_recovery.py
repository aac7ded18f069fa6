"""Recovery codes: ten shown once, stored as keyed digests, each burned at its one use, even under a race."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from idp.authn.lockout import DatabaseRateLimiter, LockedOutError
from idp.authn.recovery import (
    RecoveryCodeInvalidError,
    RecoveryCodeUsedError,
    burn_recovery_code,
    find_recovery_code,
    generate_recovery_codes,
    normalize_recovery_code,
    recovery_check,
    remaining_recovery_codes,
)
from idp.authn.totp import TotpError, authenticate, remove_totp
from idp.db import make_engine
from idp.models import AuditEvent, RecoveryCode, Resident, TotpDevice

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=40)
KEY = b"test recovery-code key"
# Printed for copying by hand: no 0/o, 1/l/i.
# Well-formed but never issued (one chance in 31^10 that a generated code is this).
NEVER_ISSUED = "zzzzz-zzzzz"
PRINTED = re.compile(r"[2-9a-hjkmnp-z]{5}-[2-9a-hjkmnp-z]{5}")


@pytest.fixture
def make_resident(db: Session) -> Callable[[], Resident]:
    def make() -> Resident:
        resident = Resident(id=uuid.uuid4(), name="이서연", phone=f"+8210{uuid.uuid4().int % 10**8:08d}")
        db.add(resident)
        db.flush()
        return resident

    return make


@pytest.fixture
def resident(make_resident: Callable[[], Resident]) -> Resident:
    return make_resident()


@pytest.fixture
def cipher() -> Fernet:
    return Fernet(Fernet.generate_key())


def add_device(db: Session, resident: Resident, cipher: Fernet, *, confirmed: bool = True) -> TotpDevice:
    device = TotpDevice(
        resident_id=resident.id,
        secret_encrypted=cipher.encrypt(b"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"),
        created_at=NOW,
        confirmed_at=NOW if confirmed else None,
    )
    db.add(device)
    db.flush()
    return device


@pytest.fixture
def codes(db: Session, resident: Resident) -> list[str]:
    return generate_recovery_codes(db, resident.id, key=KEY, now=NOW)


def use(db: Session, resident: Resident, code: str, *, now: dt.datetime = LATER) -> None:
    """Find and burn `code` as a sign-in does, in two steps."""
    burn_recovery_code(db, find_recovery_code(db, resident.id, code, key=KEY), now=now)


def sign_in(
    db: Session,
    limiter: DatabaseRateLimiter,
    resident: Resident | None,
    code: str,
    *,
    client_ip: str,
    subject: str | None = None,
) -> TotpDevice:
    check = recovery_check(db, code, key=KEY, now=LATER)
    subject = subject or str(resident.id if resident is not None else uuid.uuid4())
    return authenticate(db, limiter, resident, check, code=code, subject=subject, client_ip=client_ip, now=LATER)


def verify_events(db: Session, client_ip: str) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.event == "totp.verify", AuditEvent.client_ip == client_ip)
    return list(db.scalars(query.order_by(AuditEvent.id)))


# -- generation and storage ------------------------------------------------------------------------------------------


def test_ten_distinct_codes_in_the_printed_shape(codes: list[str]) -> None:
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(PRINTED.fullmatch(code) for code in codes), codes


def test_codes_differ_between_residents_and_generations(
    db: Session, make_resident: Callable[[], Resident], codes: list[str], resident: Resident
) -> None:
    again = generate_recovery_codes(db, resident.id, key=KEY, now=LATER)
    other = generate_recovery_codes(db, make_resident().id, key=KEY, now=NOW)
    assert len(set(codes) | set(again) | set(other)) == 30


def test_only_keyed_digests_are_stored(db: Session, resident: Resident, codes: list[str]) -> None:
    rows = db.execute(select(*RecoveryCode.__table__.columns).where(RecoveryCode.resident_id == resident.id)).all()
    assert len(rows) == 10
    compact = [code.replace("-", "") for code in codes]
    assert {row.digest for row in rows} == {hmac.new(KEY, code.encode(), hashlib.sha256).digest() for code in compact}
    # Not a plain hash: without the key, a stolen table cannot be searched offline.
    assert not {row.digest for row in rows} & {hashlib.sha256(code.encode()).digest() for code in compact}
    stored = repr(rows).encode() + b"".join(row.digest for row in rows)
    for code in [*codes, *compact]:
        assert code.encode() not in stored
    assert all(row.used_at is None and row.created_at == NOW for row in rows)


def test_generation_is_audited_without_the_codes(db: Session, resident: Resident, codes: list[str]) -> None:
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.resident_id == resident.id))
    assert (event.event, event.result, event.at, event.client_ip) == ("recovery_codes.generated", "success", NOW, None)
    text = json.dumps(event.details)
    assert not [code for code in codes if code in text or code.replace("-", "") in text]


def test_generation_records_the_address_it_came_from(db: Session, resident: Resident, client_ip: str) -> None:
    codes = generate_recovery_codes(db, resident.id, key=KEY, client_ip=client_ip, now=LATER)
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.resident_id == resident.id))
    assert (event.event, event.result, event.at, event.client_ip) == (
        "recovery_codes.generated",
        "success",
        LATER,
        client_ip,
    )
    text = json.dumps(event.details)
    assert not [code for code in codes if code in text or code.replace("-", "") in text]


# -- use -------------------------------------------------------------------------------------------------------------


def test_each_code_works_once(db: Session, resident: Resident, codes: list[str]) -> None:
    for left, code in zip(range(9, -1, -1), codes, strict=True):
        use(db, resident, code)
        assert remaining_recovery_codes(db, resident.id) == left
        with pytest.raises(RecoveryCodeUsedError) as error:
            find_recovery_code(db, resident.id, code, key=KEY)
        assert error.value.reason == "recovery_code_reused"


def test_burning_records_when(db: Session, resident: Resident, codes: list[str]) -> None:
    code_id = find_recovery_code(db, resident.id, codes[3], key=KEY)
    burn_recovery_code(db, code_id, now=LATER)
    assert db.scalar(select(RecoveryCode.used_at).where(RecoveryCode.id == code_id)) == LATER
    used = db.scalars(select(AuditEvent).where(AuditEvent.event == "recovery_code.used")).all()
    assert [(event.resident_id, event.result) for event in used] == [(resident.id, "success")]


@pytest.mark.parametrize(
    "typed",
    [
        lambda code: code.upper(),
        lambda code: code.replace("-", ""),
        lambda code: code.replace("-", " "),
        lambda code: f"  {code.upper()}  ",
        lambda code: f"{code[:3]} {code[3:8]}-{code[8:]}",
        lambda code: code.replace("-", "").upper(),
    ],
)
def test_code_is_case_space_and_hyphen_insensitive(
    db: Session, resident: Resident, codes: list[str], typed: Callable[[str], str]
) -> None:
    code_id = find_recovery_code(db, resident.id, typed(codes[0]), key=KEY)
    burn_recovery_code(db, code_id, now=LATER)
    with pytest.raises(RecoveryCodeUsedError):
        find_recovery_code(db, resident.id, codes[0], key=KEY)


@pytest.mark.parametrize("typed", ["ABCDE-23456", "abcde23456", "abc de-234 56"])
def test_normalized_code_is_lower_case_without_separators(typed: str) -> None:
    assert normalize_recovery_code(typed) == "abcde23456"


@pytest.mark.parametrize(
    "code",
    [
        "",
        "not a code",
        "abcde-2345",  # nine
        "abcde-234567",  # eleven
        "abcde-2345o",  # o is not in the alphabet
        "abcde-23451",  # nor is 1
        "abcde_23456",
        "ａｂｃｄｅ-２３４５６",  # full width
        "123456",  # a TOTP code in the wrong field
    ],
)
def test_what_cannot_be_a_recovery_code_is_invalid(
    db: Session, resident: Resident, codes: list[str], code: str
) -> None:
    assert normalize_recovery_code(code) is None
    with pytest.raises(RecoveryCodeInvalidError) as error:
        find_recovery_code(db, resident.id, code, key=KEY)
    assert error.value.reason == "wrong_recovery_code"


def test_code_that_was_never_issued_is_invalid(db: Session, resident: Resident, codes: list[str]) -> None:
    with pytest.raises(RecoveryCodeInvalidError):
        find_recovery_code(db, resident.id, NEVER_ISSUED, key=KEY)


def test_another_residents_code_is_invalid(
    db: Session, make_resident: Callable[[], Resident], resident: Resident, codes: list[str]
) -> None:
    other = make_resident()
    generate_recovery_codes(db, other.id, key=KEY, now=NOW)
    with pytest.raises(RecoveryCodeInvalidError):
        find_recovery_code(db, other.id, codes[0], key=KEY)
    assert remaining_recovery_codes(db, resident.id) == 10


def test_code_checked_under_another_key_is_invalid(db: Session, resident: Resident, codes: list[str]) -> None:
    with pytest.raises(RecoveryCodeInvalidError):
        find_recovery_code(db, resident.id, codes[0], key=b"another key")


def test_regenerating_invalidates_the_old_codes(db: Session, resident: Resident, codes: list[str]) -> None:
    use(db, resident, codes[0])
    fresh = generate_recovery_codes(db, resident.id, key=KEY, now=LATER)
    for old in codes:
        with pytest.raises(RecoveryCodeInvalidError):
            find_recovery_code(db, resident.id, old, key=KEY)
    assert db.scalar(select(func.count()).where(RecoveryCode.resident_id == resident.id)) == 10
    assert remaining_recovery_codes(db, resident.id) == 10
    use(db, resident, fresh[0])
    assert remaining_recovery_codes(db, resident.id) == 9


def test_regenerating_leaves_other_residents_codes(
    db: Session, make_resident: Callable[[], Resident], resident: Resident, codes: list[str]
) -> None:
    other = make_resident()
    others = generate_recovery_codes(db, other.id, key=KEY, now=NOW)
    generate_recovery_codes(db, resident.id, key=KEY, now=LATER)
    assert remaining_recovery_codes(db, other.id) == 10
    use(db, other, others[0])


def test_remaining_recovery_codes_counts_the_unused(
    db: Session, make_resident: Callable[[], Resident], resident: Resident
) -> None:
    assert remaining_recovery_codes(db, resident.id) == 0
    codes = generate_recovery_codes(db, resident.id, key=KEY, now=NOW)
    assert remaining_recovery_codes(db, resident.id) == 10
    for code in codes[:3]:
        use(db, resident, code)
    assert remaining_recovery_codes(db, resident.id) == 7
    assert remaining_recovery_codes(db, make_resident().id) == 0


def test_removing_totp_deletes_the_recovery_codes(
    db: Session, resident: Resident, cipher: Fernet, codes: list[str]
) -> None:
    add_device(db, resident, cipher)
    assert remove_totp(db, resident.id, now=LATER, actor="admin") is True
    assert db.scalar(select(func.count()).where(RecoveryCode.resident_id == resident.id)) == 0
    [removed] = db.scalars(
        select(AuditEvent).where(AuditEvent.event == "totp.removed", AuditEvent.resident_id == resident.id)
    )
    assert (removed.result, removed.at, removed.client_ip, removed.details) == (
        "success",
        LATER,
        None,
        {"actor": "admin"},
    )
    assert remaining_recovery_codes(db, resident.id) == 0
    with pytest.raises(RecoveryCodeInvalidError):
        find_recovery_code(db, resident.id, codes[0], key=KEY)


def test_burning_twice_is_refused_by_the_compare_and_set(db: Session, resident: Resident, codes: list[str]) -> None:
    code_id = find_recovery_code(db, resident.id, codes[0], key=KEY)
    burn_recovery_code(db, code_id, now=LATER)
    # A second request that found the code before the first burned it is refused by the write itself.
    with pytest.raises(RecoveryCodeUsedError):
        burn_recovery_code(db, code_id, now=LATER + dt.timedelta(seconds=1))
    assert db.scalar(select(RecoveryCode.used_at).where(RecoveryCode.id == code_id)) == LATER


# -- races between processes -----------------------------------------------------------------------------------------


@pytest.fixture
def engines(database_url: str) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on the test database: two server processes."""
    first, second = make_engine(database_url), make_engine(database_url)
    yield first, second
    first.dispose()
    second.dispose()


@pytest.fixture
def committed_codes(engines: tuple[Engine, Engine]) -> Iterator[tuple[uuid.UUID, list[str]]]:
    """A resident with recovery codes, committed so both engines see them; removed afterwards."""
    resident_id = uuid.uuid4()
    with Session(engines[0]) as db, db.begin():
        db.add(Resident(id=resident_id, name="이서연", phone=f"+8210{uuid.uuid4().int % 10**8:08d}"))
        db.flush()
        codes = generate_recovery_codes(db, resident_id, key=KEY, now=NOW)
    yield resident_id, codes
    with Session(engines[0]) as db, db.begin():
        db.execute(delete(AuditEvent).where(AuditEvent.resident_id == resident_id))
        db.execute(delete(RecoveryCode).where(RecoveryCode.resident_id == resident_id))
        db.execute(delete(Resident).where(Resident.id == resident_id))


def test_code_burned_by_another_process_is_refused(
    engines: tuple[Engine, Engine], committed_codes: tuple[uuid.UUID, list[str]]
) -> None:
    resident_id, codes = committed_codes
    with Session(engines[0]) as first, Session(engines[1]) as second:
        # Both find the code unused before either burns it ...
        first_id = find_recovery_code(first, resident_id, codes[0], key=KEY)
        second_id = find_recovery_code(second, resident_id, codes[0], key=KEY)
        assert first_id == second_id
        # ... and only the first burn counts. (The winner commits first: SQLite has one writer.)
        burn_recovery_code(first, first_id, now=LATER)
        first.commit()
        with pytest.raises(RecoveryCodeUsedError):
            burn_recovery_code(second, second_id, now=LATER)
        second.rollback()
    with Session(engines[1]) as db:
        assert remaining_recovery_codes(db, resident_id) == 9


def test_burn_race_between_processes_has_one_winner(
    database_url: str, engines: tuple[Engine, Engine], committed_codes: tuple[uuid.UUID, list[str]]
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time; test_code_burned_by_another_process_is_refused covers it")
    resident_id, codes = committed_codes
    both_found = threading.Barrier(2, timeout=10)
    outcomes: list[str] = []

    def process(engine: Engine) -> None:
        with Session(engine) as db:
            try:
                code_id = find_recovery_code(db, resident_id, codes[0], key=KEY)
                both_found.wait()
                burn_recovery_code(db, code_id, now=LATER)
                db.commit()
                outcomes.append("burned")
            except RecoveryCodeUsedError:
                db.rollback()
                outcomes.append("already used")
            except Exception as error:  # reported by the assertion below, not lost in the thread
                outcomes.append(repr(error))

    threads = [threading.Thread(target=process, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["already used", "burned"]
    with Session(engines[0]) as db:
        assert remaining_recovery_codes(db, resident_id) == 9


# -- sign-in with a recovery code ------------------------------------------------------------------------------------


def test_recovery_code_signs_in_once(
    db: Session,
    resident: Resident,
    cipher: Fernet,
    codes: list[str],
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    device = add_device(db, resident, cipher)
    assert sign_in(db, limiter, resident, codes[0], client_ip=client_ip).id == device.id
    assert remaining_recovery_codes(db, resident.id) == 9
    with pytest.raises(RecoveryCodeUsedError):
        sign_in(db, limiter, resident, codes[0], client_ip=client_ip)
    with pytest.raises(RecoveryCodeInvalidError):
        sign_in(db, limiter, resident, NEVER_ISSUED, client_ip=client_ip)
    events = db.scalars(
        select(AuditEvent)
        .where(AuditEvent.event == "totp.verify", AuditEvent.client_ip == client_ip)
        .order_by(AuditEvent.id)
    ).all()
    assert [(event.result, event.details) for event in events] == [
        ("success", {}),
        ("failure", {"reason": "recovery_code_reused"}),
        ("failure", {"reason": "wrong_recovery_code"}),
    ]


def test_recovery_code_does_not_sign_in_without_a_confirmed_authenticator(
    db: Session,
    resident: Resident,
    cipher: Fernet,
    codes: list[str],
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    add_device(db, resident, cipher, confirmed=False)
    with pytest.raises(RecoveryCodeInvalidError):
        sign_in(db, limiter, resident, codes[0], client_ip=client_ip)
    assert remaining_recovery_codes(db, resident.id) == 10
    [event] = verify_events(db, client_ip)
    assert (event.result, event.resident_id, event.details) == (
        "failure",
        resident.id,
        {"reason": "wrong_recovery_code"},
    )


def test_recovery_code_for_no_authenticator_fails_like_a_wrong_one(
    db: Session,
    make_resident: Callable[[], Resident],
    resident: Resident,
    cipher: Fernet,
    codes: list[str],
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    add_device(db, resident, cipher)
    # A resident with codes but no authenticator (their codes work for nobody), and a number that names nobody.
    without_device = make_resident()
    others = generate_recovery_codes(db, without_device.id, key=KEY, now=NOW)
    attempts: list[tuple[Resident | None, str, str]] = [
        (resident, NEVER_ISSUED, client_ip),
        (without_device, others[0], client_ip + "1"),
        (None, codes[0], client_ip + "2"),
        (None, "not a code", client_ip + "3"),
    ]
    refusals = []
    for who, code, address in attempts:
        with pytest.raises(TotpError) as error:
            sign_in(db, limiter, who, code, client_ip=address)
        [event] = verify_events(db, address)
        refusals.append((type(error.value), str(error.value), event.result, event.details))
    wrong = (RecoveryCodeInvalidError, str(RecoveryCodeInvalidError()), "failure", {"reason": "wrong_recovery_code"})
    assert refusals == [wrong] * 4
    assert (remaining_recovery_codes(db, resident.id), remaining_recovery_codes(db, without_device.id)) == (10, 10)


def test_wrong_recovery_codes_count_towards_the_lockout(
    db: Session,
    resident: Resident,
    cipher: Fernet,
    codes: list[str],
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    add_device(db, resident, cipher)
    for _ in range(6):
        with pytest.raises(TotpError):
            sign_in(db, limiter, resident, NEVER_ISSUED, client_ip=client_ip)
    with pytest.raises(LockedOutError):
        sign_in(db, limiter, resident, codes[0], client_ip=client_ip)
    assert remaining_recovery_codes(db, resident.id) == 10
