"""TOTP: enrolment, codes within one step of drift, replay refused (also across processes), lockouts, audit."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator

import pyotp
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.orm import Session
from waiting import wait_until

from idp.authn.lockout import (
    TOTP_FAILURES_PER_IP,
    TOTP_FAILURES_PER_RESIDENT,
    DatabaseRateLimiter,
    LockedOutError,
    RedisRateLimiter,
    counter_key,
)
from idp.authn.recovery import RecoveryCodeInvalidError, generate_recovery_codes, recovery_check
from idp.authn.totp import (
    Check,
    Consume,
    TotpAlreadyEnrolledError,
    TotpCodeInvalidError,
    TotpCodeMalformedError,
    TotpCodeReusedError,
    TotpError,
    authenticate,
    begin_enrolment,
    confirm_enrolment,
    find_device,
    has_totp,
    mark_step_used,
    match_code,
    normalize_code,
    pending_enrolment_of,
    remove_totp,
    totp_check,
    verify_code,
)
from idp.db import make_engine
from idp.models import AuditEvent, RateLimitCounter, RecoveryCode, Resident, TotpDevice

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)  # the first second of a 30-second step
STEP = dt.timedelta(seconds=30)  # RFC 6238 §5.2
HOUR = dt.timedelta(hours=1)
ENROLLED_AT = NOW - dt.timedelta(minutes=10)
# A fixed secret, so that which codes collide is decided once and no test is flaky by a one-in-a-million chance.
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
ISSUER_NAME = "경기도 통합로그인"
LIMITER_KEY = b"test lockout key"
RECOVERY_KEY = b"test recovery-code key"


def code_at(at: dt.datetime, secret: str = SECRET) -> str:
    """What an authenticator app with the RFC 6238 defaults (SHA-1, 30 s, 6 digits) shows at `at`."""
    return pyotp.TOTP(secret).at(at)


def step_of(at: dt.datetime) -> int:
    return int(at.timestamp()) // 30


def wrong_code(at: dt.datetime, secret: str = SECRET) -> str:
    """Six digits that are the code of no step within two of `at`'s."""
    near = {code_at(at + k * STEP, secret) for k in range(-2, 3)}
    return next(code for code in ("000000", "999999", "135790", "246801") if code not in near)


# -- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture
def cipher() -> Fernet:
    return Fernet(Fernet.generate_key())


@pytest.fixture
def make_resident(db: Session) -> Callable[[], Resident]:
    def make() -> Resident:
        resident = Resident(id=uuid.uuid4(), name="김민준", phone=f"+8210{uuid.uuid4().int % 10**8:08d}")
        db.add(resident)
        db.flush()
        return resident

    return make


@pytest.fixture
def resident(make_resident: Callable[[], Resident]) -> Resident:
    return make_resident()


def add_device(db: Session, resident: Resident, cipher: Fernet, *, confirmed: bool = True) -> TotpDevice:
    """An authenticator with SECRET, confirmed ten minutes ago by the code of that step (as confirm_enrolment does)."""
    device = TotpDevice(
        resident_id=resident.id,
        secret_encrypted=cipher.encrypt(SECRET.encode()),
        created_at=ENROLLED_AT,
        confirmed_at=ENROLLED_AT if confirmed else None,
        last_used_step=step_of(ENROLLED_AT) if confirmed else None,
        last_used_at=ENROLLED_AT if confirmed else None,
    )
    db.add(device)
    db.flush()
    return device


@pytest.fixture
def device(db: Session, resident: Resident, cipher: Fernet) -> TotpDevice:
    return add_device(db, resident, cipher)


def sign_in(
    db: Session,
    limiter: DatabaseRateLimiter,
    resident: Resident | None,
    code: str,
    *,
    cipher: Fernet,
    client_ip: str,
    now: dt.datetime = NOW,
    subject: str | None = None,
) -> TotpDevice:
    check = totp_check(db, code, cipher=cipher, now=now)
    subject = subject or (str(resident.id) if resident is not None else "+821099990000")
    return authenticate(db, limiter, resident, check, code=code, subject=subject, client_ip=client_ip, now=now)


def verify_events(db: Session, client_ip: str) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.event == "totp.verify", AuditEvent.client_ip == client_ip)
    return list(db.scalars(query.order_by(AuditEvent.id)))


def ip_failures(db: Session, limiter: DatabaseRateLimiter, client_ip: str) -> int:
    """The failures counted against `client_ip` (in the test's transaction, where sign-ins count), read without
    counting one."""
    count = db.scalar(
        select(RateLimitCounter.count).where(
            RateLimitCounter.key == counter_key(TOTP_FAILURES_PER_IP, client_ip, limiter.secret)
        )
    )
    return int(count or 0)


# -- codes: drift and shape ------------------------------------------------------------------------------------------


def test_fixed_secret_gives_distinct_codes_around_now() -> None:
    codes = [code_at(NOW + k * STEP) for k in range(-2, 3)]
    assert len(set(codes)) == 5


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_codes_from_the_previous_current_and_next_step_are_accepted(
    db: Session, device: TotpDevice, cipher: Fernet, offset: int
) -> None:
    code = code_at(NOW + offset * STEP)
    assert match_code(device, code, cipher=cipher, now=NOW) == step_of(NOW) + offset


@pytest.mark.parametrize("offset", [-2, 2, -20, 20])
def test_codes_two_or_more_steps_away_are_refused(db: Session, device: TotpDevice, cipher: Fernet, offset: int) -> None:
    with pytest.raises(TotpCodeInvalidError):
        match_code(device, code_at(NOW + offset * STEP), cipher=cipher, now=NOW)


@pytest.mark.parametrize(
    ("now", "code_time"),
    [
        # Steps are whole: up to the end of a step the previous step's code is one step off, and at the first
        # instant of the next step its successor's code is.
        (NOW + dt.timedelta(seconds=29), NOW - STEP),
        (NOW + dt.timedelta(seconds=29, microseconds=999999), NOW - STEP),
        (NOW + STEP, NOW + 2 * STEP),
    ],
)
def test_drift_is_counted_in_whole_steps(
    db: Session, device: TotpDevice, cipher: Fernet, now: dt.datetime, code_time: dt.datetime
) -> None:
    assert match_code(device, code_at(code_time), cipher=cipher, now=now) == step_of(code_time)


def test_previous_step_code_is_refused_once_its_step_is_two_behind(
    db: Session, device: TotpDevice, cipher: Fernet
) -> None:
    with pytest.raises(TotpCodeInvalidError):
        match_code(device, code_at(NOW - STEP), cipher=cipher, now=NOW + STEP)


def test_wrong_code_is_refused(db: Session, device: TotpDevice, cipher: Fernet) -> None:
    with pytest.raises(TotpCodeInvalidError) as error:
        match_code(device, wrong_code(NOW), cipher=cipher, now=NOW)
    assert error.value.reason == "wrong_code"


@pytest.mark.parametrize(
    "code",
    [
        "abcdef",
        "12345a",
        "12345",
        "1234567",
        "",
        "   ",
        "１２３４５６",  # full-width digits
        "١٢٣٤٥٦",  # Arabic-Indic digits
        "123.456",
        "+123456",
        "12 34 5",
    ],
)
def test_malformed_codes_are_refused_before_any_check(
    db: Session, device: TotpDevice, cipher: Fernet, code: str
) -> None:
    with pytest.raises(TotpCodeMalformedError) as error:
        normalize_code(code)
    assert error.value.reason == "malformed"
    with pytest.raises(TotpCodeMalformedError):
        match_code(device, code, cipher=cipher, now=NOW)


@pytest.mark.parametrize("typed", ["123 456", "123-456", " 123456 ", "123\t456", "1-2-3 4-5-6"])
def test_spaces_and_hyphens_are_dropped(typed: str) -> None:
    assert normalize_code(typed) == "123456"


def test_code_typed_with_a_space_is_accepted(db: Session, device: TotpDevice, cipher: Fernet) -> None:
    code = code_at(NOW)
    assert match_code(device, f"{code[:3]} {code[3:]}", cipher=cipher, now=NOW) == step_of(NOW)


def test_secret_under_another_data_key_matches_no_code(db: Session, device: TotpDevice) -> None:
    other = Fernet(Fernet.generate_key())
    with pytest.raises(TotpCodeInvalidError):
        match_code(device, code_at(NOW), cipher=other, now=NOW)


# -- replay ----------------------------------------------------------------------------------------------------------


def test_totp_code_is_refused_in_same_time_step(db: Session, device: TotpDevice, cipher: Fernet) -> None:
    code = code_at(NOW)
    assert verify_code(db, device, code, cipher=cipher, now=NOW) == step_of(NOW)
    with pytest.raises(TotpCodeReusedError) as error:
        verify_code(db, device, code, cipher=cipher, now=NOW + dt.timedelta(seconds=20))
    assert error.value.reason == "replayed"
    # Still within the window a step later: refused for having been used, not for being too old.
    with pytest.raises(TotpCodeReusedError):
        verify_code(db, device, code, cipher=cipher, now=NOW + STEP)


def test_earlier_step_code_is_refused_after_a_later_one(db: Session, device: TotpDevice, cipher: Fernet) -> None:
    verify_code(db, device, code_at(NOW + STEP), cipher=cipher, now=NOW)
    with pytest.raises(TotpCodeReusedError):
        verify_code(db, device, code_at(NOW), cipher=cipher, now=NOW)
    with pytest.raises(TotpCodeReusedError):
        verify_code(db, device, code_at(NOW - STEP), cipher=cipher, now=NOW)


def test_next_step_code_is_accepted_after_the_current_one(db: Session, device: TotpDevice, cipher: Fernet) -> None:
    verify_code(db, device, code_at(NOW), cipher=cipher, now=NOW)
    assert verify_code(db, device, code_at(NOW + STEP), cipher=cipher, now=NOW + STEP) == step_of(NOW) + 1


def test_marking_a_step_records_it(db: Session, device: TotpDevice, cipher: Fernet) -> None:
    verify_code(db, device, code_at(NOW), cipher=cipher, now=NOW)
    db.expire_all()
    stored = db.get(TotpDevice, device.id)
    assert stored is not None
    assert stored.last_used_step == step_of(NOW)
    assert stored.last_used_at == NOW


def test_match_code_writes_nothing(db: Session, device: TotpDevice, cipher: Fernet) -> None:
    match_code(device, code_at(NOW), cipher=cipher, now=NOW)
    db.expire_all()
    stored = db.get(TotpDevice, device.id)
    assert stored is not None
    assert stored.last_used_step == step_of(ENROLLED_AT)


def test_marking_the_same_step_twice_is_refused(db: Session, device: TotpDevice) -> None:
    # The compare-and-set, not the earlier read, decides: a stale read of the device does not help a replay.
    mark_step_used(db, device, step_of(NOW), now=NOW)
    with pytest.raises(TotpCodeReusedError):
        mark_step_used(db, device, step_of(NOW), now=NOW)
    with pytest.raises(TotpCodeReusedError):
        mark_step_used(db, device, step_of(NOW) - 1, now=NOW)


@pytest.fixture
def engines(database_url: str) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on the test database: two server processes."""
    first, second = make_engine(database_url), make_engine(database_url)
    yield first, second
    first.dispose()
    second.dispose()


@pytest.fixture
def committed_resident(engines: tuple[Engine, Engine], cipher: Fernet) -> Iterator[uuid.UUID]:
    """A resident with a confirmed authenticator (SECRET), committed so both engines see it; removed afterwards."""
    resident_id = uuid.uuid4()
    with Session(engines[0]) as db, db.begin():
        db.add(Resident(id=resident_id, name="김민준", phone=f"+8210{uuid.uuid4().int % 10**8:08d}"))
        db.flush()
        db.add(
            TotpDevice(
                resident_id=resident_id,
                secret_encrypted=cipher.encrypt(SECRET.encode()),
                created_at=ENROLLED_AT,
                confirmed_at=ENROLLED_AT,
                last_used_step=step_of(ENROLLED_AT),
            )
        )
    yield resident_id
    with Session(engines[0]) as db, db.begin():
        db.execute(delete(AuditEvent).where(AuditEvent.resident_id == resident_id))
        db.execute(delete(TotpDevice).where(TotpDevice.resident_id == resident_id))
        db.execute(delete(Resident).where(Resident.id == resident_id))


def stored_step(engine: Engine, resident_id: uuid.UUID) -> int | None:
    with Session(engine) as db:
        return db.scalar(select(TotpDevice.last_used_step).where(TotpDevice.resident_id == resident_id))


def test_replay_is_refused_across_processes(
    engines: tuple[Engine, Engine], committed_resident: uuid.UUID, cipher: Fernet
) -> None:
    code = code_at(NOW)
    with Session(engines[0]) as first, Session(engines[1]) as second:
        first_device = find_device(first, committed_resident)
        second_device = find_device(second, committed_resident)
        assert first_device is not None
        assert second_device is not None
        # Both processes judge the code right before either records it ...
        first_step = match_code(first_device, code, cipher=cipher, now=NOW)
        second_step = match_code(second_device, code, cipher=cipher, now=NOW)
        assert first_step == second_step == step_of(NOW)
        # ... and only the first to record the step wins. (The winner commits first: SQLite has one writer.)
        mark_step_used(first, first_device, first_step, now=NOW)
        first.commit()
        with pytest.raises(TotpCodeReusedError):
            mark_step_used(second, second_device, second_step, now=NOW)
        second.rollback()
    assert stored_step(engines[0], committed_resident) == step_of(NOW)


def test_replay_race_between_processes_has_one_winner(
    database_url: str, engines: tuple[Engine, Engine], committed_resident: uuid.UUID, cipher: Fernet
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time; test_replay_is_refused_across_processes covers it")
    code = code_at(NOW)
    both_checked = threading.Barrier(2, timeout=10)
    outcomes: list[str] = []

    def process(engine: Engine) -> None:
        with Session(engine) as db:
            try:
                device = find_device(db, committed_resident)
                assert device is not None
                step = match_code(device, code, cipher=cipher, now=NOW)
                both_checked.wait()
                mark_step_used(db, device, step, now=NOW)
                db.commit()
                outcomes.append("accepted")
            except TotpCodeReusedError:
                db.rollback()
                outcomes.append("replayed")
            except Exception as error:  # reported by the assertion below, not lost in the thread
                outcomes.append(repr(error))

    threads = [threading.Thread(target=process, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["accepted", "replayed"]
    assert stored_step(engines[0], committed_resident) == step_of(NOW)


def test_code_consumed_by_another_process_after_the_check_is_a_counted_replay(
    engines: tuple[Engine, Engine], committed_resident: uuid.UUID, cipher: Fernet, client_ip: str, redis_url: str
) -> None:
    # With Redis storage the counters hold no database row, so another process can sign in with the same code
    # between this one's check and its consume (database counters make it wait: the test below).
    code = code_at(NOW)
    subject = str(committed_resident)
    limiter = RedisRateLimiter(redis_url, LIMITER_KEY)
    with Session(engines[0]) as first, Session(engines[1]) as second:
        first_resident = first.get(Resident, committed_resident)
        second_resident = second.get(Resident, committed_resident)
        judge = totp_check(second, code, cipher=cipher, now=NOW)

        def check_while_another_signs_in(device: TotpDevice | None) -> Consume:
            consume = judge(device)
            # Between this process's check and its consume, another one signs in with the same code.
            authenticate(
                first,
                limiter,
                first_resident,
                totp_check(first, code, cipher=cipher, now=NOW),
                code=code,
                subject=subject,
                client_ip=client_ip,
                now=NOW,
            )
            first.commit()
            return consume

        with pytest.raises(TotpCodeReusedError):
            authenticate(
                second,
                limiter,
                second_resident,
                check_while_another_signs_in,
                code=code,
                subject=subject,
                client_ip=client_ip,
                now=NOW,
            )
        second.commit()
        events = verify_events(second, client_ip)
        assert [(event.result, event.details) for event in events] == [
            ("success", {}),
            ("failure", {"reason": "replayed"}),
        ]
    # The lost race counts as a failure against the resident (after the winner's success reset it) and the IP
    # (which no success resets): the next failure of each is its second.
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 2
    assert limiter.fail(TOTP_FAILURES_PER_IP, client_ip, now=NOW) == 2
    assert stored_step(engines[0], committed_resident) == step_of(NOW)
    limiter.reset(TOTP_FAILURES_PER_RESIDENT, subject)
    limiter.reset(TOTP_FAILURES_PER_IP, client_ip)
    limiter.client.close()


def waiting_on_a_lock(engine: Engine) -> bool:
    """Whether a connection to the test database waits for a lock another transaction holds (PostgreSQL)."""
    with engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def test_an_attempt_on_a_resident_being_judged_waits_for_it_and_is_then_a_counted_replay(
    engines: tuple[Engine, Engine], committed_resident: uuid.UUID, cipher: Fernet, client_ip: str
) -> None:
    # Database counters are kept in the request's transaction: the counter rows an attempt counts against stay
    # taken until it is stored, so another attempt on the same resident (here with the same code) waits for it,
    # then sees the code used.
    code = code_at(NOW)
    subject = str(committed_resident)
    limiter = DatabaseRateLimiter(engines[0], LIMITER_KEY)
    outcomes: dict[str, str] = {}

    def attempt(engine: Engine, name: str, check: Callable[[Session], Check]) -> None:
        with Session(engine) as db:
            resident = db.get(Resident, committed_resident)
            try:
                authenticate(db, limiter, resident, check(db), code=code, subject=subject, client_ip=client_ip, now=NOW)
                outcomes[name] = "signed in"
            except TotpError as error:
                outcomes[name] = error.reason
            except Exception as error:  # reported by the assertion below, not lost in the thread
                outcomes[name] = repr(error)
            db.commit()

    later = threading.Thread(
        target=attempt, args=(engines[1], "later", lambda db: totp_check(db, code, cipher=cipher, now=NOW))
    )

    def check_while_another_tries(db: Session) -> Check:
        judge = totp_check(db, code, cipher=cipher, now=NOW)

        def check(device: TotpDevice | None) -> Consume:
            consume = judge(device)
            later.start()
            if engines[1].dialect.name == "postgresql":
                wait_until(lambda: waiting_on_a_lock(engines[0]), timeout=10, waiting_for="the later attempt to wait")
            return consume

        return check

    attempt(engines[0], "first", check_while_another_tries)
    later.join(timeout=30)
    assert outcomes == {"first": "signed in", "later": "replayed"}
    with Session(engines[0]) as db:
        assert [event.details for event in verify_events(db, client_ip)] == [{}, {"reason": "replayed"}]
    # The replay counts against the resident (after the first attempt's success reset it) and the address.
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 2
    assert limiter.fail(TOTP_FAILURES_PER_IP, client_ip, now=NOW) == 2
    assert stored_step(engines[0], committed_resident) == step_of(NOW)
    limiter.reset(TOTP_FAILURES_PER_RESIDENT, subject)
    limiter.reset(TOTP_FAILURES_PER_IP, client_ip)


# -- enrolment -------------------------------------------------------------------------------------------------------


def test_enrolment_secret_is_160_bits_of_base32(db: Session, resident: Resident, cipher: Fernet) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    assert len(enrolment.secret) == 32
    assert set(enrolment.secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert len(base64.b32decode(enrolment.secret)) == 20


def test_every_enrolment_gets_its_own_secret(
    db: Session, make_resident: Callable[[], Resident], cipher: Fernet
) -> None:
    secrets = {
        begin_enrolment(db, make_resident(), cipher=cipher, issuer_name=ISSUER_NAME, now=NOW).secret for _ in range(5)
    }
    assert len(secrets) == 5


def test_secret_is_stored_encrypted(db: Session, resident: Resident, cipher: Fernet) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    db.expire_all()
    stored = db.scalar(select(TotpDevice.secret_encrypted).where(TotpDevice.resident_id == resident.id))
    assert stored is not None
    raw = base64.b32decode(enrolment.secret)
    assert enrolment.secret.encode() not in stored
    assert enrolment.secret.lower().encode() not in stored
    assert raw not in stored
    assert cipher.decrypt(stored).decode() == enrolment.secret


def test_grouped_secret_is_the_secret_in_fours(db: Session, resident: Resident, cipher: Fernet) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    groups = enrolment.grouped_secret.split(" ")
    assert len(groups) == 8
    assert all(len(group) == 4 for group in groups)
    assert "".join(groups) == enrolment.secret


def test_provisioning_uri_has_the_issuer_and_the_default_period_and_digits(
    db: Session, resident: Resident, cipher: Fernet
) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    uri = urllib.parse.urlsplit(enrolment.provisioning_uri)
    query = urllib.parse.parse_qs(uri.query)
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert query["secret"] == [enrolment.secret]
    assert query["issuer"] == [ISSUER_NAME]
    assert urllib.parse.unquote(uri.path).startswith(f"/{ISSUER_NAME}:")
    # Key URI format: absent means SHA1, 6 digits, 30 s; if present they must say so.
    assert query.get("period", ["30"]) == ["30"]
    assert query.get("digits", ["6"]) == ["6"]
    assert query.get("algorithm", ["SHA1"]) == ["SHA1"]
    app = pyotp.parse_uri(enrolment.provisioning_uri)
    assert isinstance(app, pyotp.TOTP)
    assert (app.interval, app.digits, app.secret, app.issuer) == (30, 6, enrolment.secret, ISSUER_NAME)


def test_provisioning_uri_does_not_show_the_whole_phone_number(db: Session, resident: Resident, cipher: Fernet) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    label = urllib.parse.unquote(urllib.parse.urlsplit(enrolment.provisioning_uri).path)
    assert resident.phone is not None
    assert resident.phone not in label
    assert resident.phone[-4:] not in label
    assert label.endswith("****")


def test_pending_enrolment_shows_the_same_secret_again(db: Session, resident: Resident, cipher: Fernet) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    again = pending_enrolment_of(enrolment.device, resident, cipher=cipher, issuer_name=ISSUER_NAME)
    assert again.secret == enrolment.secret
    assert again.provisioning_uri == enrolment.provisioning_uri


def test_enrolling_again_before_confirmation_replaces_the_secret(
    db: Session, resident: Resident, cipher: Fernet
) -> None:
    first = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    second = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW + STEP)
    assert second.secret != first.secret
    assert db.scalar(select(func.count()).where(TotpDevice.resident_id == resident.id)) == 1
    device = find_device(db, resident.id)
    assert device is not None
    with pytest.raises(TotpCodeInvalidError):
        match_code(device, code_at(NOW + STEP, first.secret), cipher=cipher, now=NOW + STEP)
    confirm_enrolment(db, device, code_at(NOW + STEP, second.secret), cipher=cipher, client_ip=None, now=NOW + STEP)
    assert has_totp(db, resident.id)


def test_enrolling_after_confirmation_is_refused(db: Session, resident: Resident, cipher: Fernet) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    confirm_enrolment(db, enrolment.device, code_at(NOW, enrolment.secret), cipher=cipher, client_ip=None, now=NOW)
    with pytest.raises(TotpAlreadyEnrolledError):
        begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW + STEP)
    # The confirmed secret stays.
    device = find_device(db, resident.id)
    assert device is not None
    assert cipher.decrypt(device.secret_encrypted).decode() == enrolment.secret


def test_confirmation_counts_the_authenticator(db: Session, resident: Resident, cipher: Fernet) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    assert not has_totp(db, resident.id)
    assert not enrolment.device.is_confirmed
    confirm_enrolment(db, enrolment.device, code_at(NOW, enrolment.secret), cipher=cipher, client_ip=None, now=NOW)
    assert has_totp(db, resident.id)
    assert enrolment.device.confirmed_at == NOW


def test_confirmation_with_a_wrong_code_leaves_the_authenticator_unconfirmed(
    db: Session, resident: Resident, cipher: Fernet, client_ip: str
) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    with pytest.raises(TotpCodeInvalidError):
        confirm_enrolment(
            db, enrolment.device, wrong_code(NOW, enrolment.secret), cipher=cipher, client_ip=client_ip, now=NOW
        )
    assert not has_totp(db, resident.id)
    event = db.scalar(select(AuditEvent).where(AuditEvent.event == "totp.enrolment_confirm"))
    assert event is not None
    assert (event.result, event.resident_id, event.client_ip, event.details) == (
        "failure",
        resident.id,
        client_ip,
        {"reason": "wrong_code"},
    )


def test_code_from_an_unconfirmed_authenticator_does_not_sign_in(
    db: Session, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    with pytest.raises(TotpCodeInvalidError):
        sign_in(db, limiter, resident, code_at(NOW, enrolment.secret), cipher=cipher, client_ip=client_ip)
    assert enrolment.device.last_used_step is None


def test_confirming_code_cannot_sign_in_afterwards(
    db: Session, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    code = code_at(NOW, enrolment.secret)
    confirm_enrolment(db, enrolment.device, code, cipher=cipher, client_ip=client_ip, now=NOW)
    with pytest.raises(TotpCodeReusedError):
        sign_in(db, limiter, resident, code, cipher=cipher, client_ip=client_ip, now=NOW + dt.timedelta(seconds=10))
    # The next code signs in.
    next_code = code_at(NOW + STEP, enrolment.secret)
    assert sign_in(db, limiter, resident, next_code, cipher=cipher, client_ip=client_ip, now=NOW + STEP)


def removed_events(db: Session, resident_id: uuid.UUID) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.event == "totp.removed", AuditEvent.resident_id == resident_id)
    return list(db.scalars(query.order_by(AuditEvent.id)))


def test_remove_totp_removes_the_authenticator(db: Session, device: TotpDevice, resident: Resident) -> None:
    assert remove_totp(db, resident.id, now=NOW) is True
    assert find_device(db, resident.id) is None
    assert not has_totp(db, resident.id)
    assert remove_totp(db, resident.id, now=NOW) is False
    # Audited once, by default as the resident's own doing; nothing is recorded when there was nothing to remove.
    [event] = removed_events(db, resident.id)
    assert (event.result, event.at, event.client_ip, event.details) == ("success", NOW, None, {"actor": "resident"})


def test_removal_by_the_resident_records_their_address(
    db: Session, device: TotpDevice, resident: Resident, client_ip: str
) -> None:
    assert remove_totp(db, resident.id, now=NOW, actor="resident", client_ip=client_ip) is True
    [event] = removed_events(db, resident.id)
    assert (event.result, event.client_ip, event.details) == ("success", client_ip, {"actor": "resident"})


def test_removal_by_an_admin_is_audited_as_the_admins(db: Session, device: TotpDevice, resident: Resident) -> None:
    # `idp residents remove-totp` on the command line: no address.
    assert remove_totp(db, resident.id, now=NOW, actor="admin") is True
    [event] = removed_events(db, resident.id)
    assert (event.result, event.client_ip, event.details) == ("success", None, {"actor": "admin"})


def test_removed_authenticator_can_be_set_up_again(
    db: Session, device: TotpDevice, resident: Resident, cipher: Fernet
) -> None:
    remove_totp(db, resident.id, now=NOW)
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=NOW)
    assert enrolment.secret != SECRET
    assert not enrolment.device.is_confirmed


# -- sign-in: authenticate -------------------------------------------------------------------------------------------


def test_right_code_signs_in_and_is_audited(
    db: Session,
    device: TotpDevice,
    resident: Resident,
    cipher: Fernet,
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    signed_in = sign_in(db, limiter, resident, code_at(NOW), cipher=cipher, client_ip=client_ip)
    assert signed_in.id == device.id
    assert signed_in.last_used_step == step_of(NOW)
    [event] = verify_events(db, client_ip)
    assert (event.result, event.resident_id, event.at, event.details) == ("success", resident.id, NOW, {})


@pytest.mark.parametrize(
    ("code", "error", "reason"),
    [
        (wrong_code(NOW), TotpCodeInvalidError, "wrong_code"),
        ("12345", TotpCodeMalformedError, "malformed"),
        (code_at(ENROLLED_AT), TotpCodeInvalidError, "wrong_code"),
    ],
)
def test_refused_code_is_audited_with_its_reason(
    db: Session,
    device: TotpDevice,
    resident: Resident,
    cipher: Fernet,
    limiter: DatabaseRateLimiter,
    client_ip: str,
    code: str,
    error: type[TotpError],
    reason: str,
) -> None:
    with pytest.raises(error):
        sign_in(db, limiter, resident, code, cipher=cipher, client_ip=client_ip)
    [event] = verify_events(db, client_ip)
    assert (event.result, event.resident_id, event.details) == ("failure", resident.id, {"reason": reason})


def test_replayed_code_is_audited_as_replayed(
    db: Session, device: TotpDevice, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    sign_in(db, limiter, resident, code_at(NOW), cipher=cipher, client_ip=client_ip)
    with pytest.raises(TotpCodeReusedError):
        sign_in(db, limiter, resident, code_at(NOW), cipher=cipher, client_ip=client_ip)
    assert [(e.result, e.details) for e in verify_events(db, client_ip)] == [
        ("success", {}),
        ("failure", {"reason": "replayed"}),
    ]


def test_unknown_resident_fails_exactly_like_a_wrong_code(
    db: Session,
    device: TotpDevice,
    resident: Resident,
    cipher: Fernet,
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    other_ip = client_ip + "1"
    with pytest.raises(TotpError) as wrong:
        sign_in(db, limiter, resident, wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    with pytest.raises(TotpError) as unknown:
        sign_in(db, limiter, None, code_at(NOW), cipher=cipher, client_ip=other_ip, subject="+821099990000")
    assert type(unknown.value) is type(wrong.value) is TotpCodeInvalidError
    assert str(unknown.value) == str(wrong.value)
    [known_event] = verify_events(db, client_ip)
    [unknown_event] = verify_events(db, other_ip)
    assert unknown_event.resident_id is None
    assert (unknown_event.result, unknown_event.details) == (known_event.result, known_event.details)


def test_resident_without_an_authenticator_fails_like_a_wrong_code(
    db: Session, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    with pytest.raises(TotpCodeInvalidError):
        sign_in(db, limiter, resident, code_at(NOW), cipher=cipher, client_ip=client_ip)
    [event] = verify_events(db, client_ip)
    assert (event.result, event.resident_id, event.details) == ("failure", resident.id, {"reason": "wrong_code"})


@pytest.mark.parametrize("code", ["abc", "12345", "1234567", ""])
def test_malformed_code_fails_alike_for_a_known_and_an_unknown_number(
    db: Session,
    device: TotpDevice,
    resident: Resident,
    cipher: Fernet,
    limiter: DatabaseRateLimiter,
    client_ip: str,
    code: str,
) -> None:
    other_ip = client_ip + "1"
    with pytest.raises(TotpError) as known:
        sign_in(db, limiter, resident, code, cipher=cipher, client_ip=client_ip)
    number = f"+8210{uuid.uuid4().int % 10**8:08d}"
    with pytest.raises(TotpError) as unknown:
        sign_in(db, limiter, None, code, cipher=cipher, client_ip=other_ip, subject=number)
    assert type(unknown.value) is type(known.value) is TotpCodeMalformedError
    assert str(unknown.value) == str(known.value)
    [known_event] = verify_events(db, client_ip)
    [unknown_event] = verify_events(db, other_ip)
    assert (known_event.resident_id, unknown_event.resident_id) == (resident.id, None)
    assert (unknown_event.result, unknown_event.details) == (known_event.result, known_event.details)
    assert known_event.details == {"reason": "malformed"}


def test_malformed_code_fails_alike_without_a_confirmed_authenticator(
    db: Session, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    add_device(db, resident, cipher, confirmed=False)
    with pytest.raises(TotpCodeMalformedError):
        sign_in(db, limiter, resident, "abc", cipher=cipher, client_ip=client_ip)
    [event] = verify_events(db, client_ip)
    assert (event.result, event.resident_id, event.details) == ("failure", resident.id, {"reason": "malformed"})


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("abc", TotpCodeMalformedError),
        ("12345", TotpCodeMalformedError),
        ("１２３４５６", TotpCodeMalformedError),
        (code_at(NOW), TotpCodeInvalidError),  # right for SECRET, but there is no device to be right for
        ("123 456", TotpCodeInvalidError),
    ],
)
def test_totp_check_without_a_device_checks_the_format_then_refuses(
    db: Session, cipher: Fernet, code: str, error: type[TotpError]
) -> None:
    with pytest.raises(TotpError) as refused:
        totp_check(db, code, cipher=cipher, now=NOW)(None)
    assert type(refused.value) is error


@pytest.mark.parametrize("code", ["abc", "zzzzz-zzzzz", "123456"])
def test_recovery_check_without_a_device_refuses_as_a_wrong_recovery_code(db: Session, code: str) -> None:
    with pytest.raises(RecoveryCodeInvalidError) as refused:
        recovery_check(db, code, key=RECOVERY_KEY, now=NOW)(None)
    assert refused.value.reason == "wrong_recovery_code"


def test_authenticate_asks_the_check_about_no_device_and_refuses_whatever_it_answers(
    db: Session, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    add_device(db, resident, cipher, confirmed=False)
    checked: list[TotpDevice | None] = []
    consumed: list[bool] = []

    def lenient(device: TotpDevice | None) -> Consume:
        # A check that forgets to refuse None still signs nobody in.
        checked.append(device)
        return lambda: consumed.append(True)

    for who in (resident, None):
        with pytest.raises(TotpCodeInvalidError):
            authenticate(
                db, limiter, who, lenient, code=code_at(NOW), subject=str(uuid.uuid4()), client_ip=client_ip, now=NOW
            )
    assert (checked, consumed) == ([None, None], [])
    assert [(e.result, e.details) for e in verify_events(db, client_ip)] == [
        ("failure", {"reason": "wrong_code"}),
        ("failure", {"reason": "wrong_code"}),
    ]


def test_unknown_number_is_locked_out_like_a_resident(
    db: Session, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    number = f"+8210{uuid.uuid4().int % 10**8:08d}"
    for _ in range(6):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, None, wrong_code(NOW), cipher=cipher, client_ip=client_ip, subject=number)
    with pytest.raises(LockedOutError) as error:
        sign_in(db, limiter, None, wrong_code(NOW), cipher=cipher, client_ip=client_ip, subject=number)
    assert error.value.backoff == TOTP_FAILURES_PER_RESIDENT


def test_five_wrong_codes_are_free_and_the_sixth_locks_for_thirty_seconds(
    db: Session, device: TotpDevice, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    for _ in range(5):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, resident, wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, str(resident.id), now=NOW, db=db) == 0
    # The sixth wrong code is still judged, and it locks the resident.
    with pytest.raises(TotpCodeInvalidError):
        sign_in(db, limiter, resident, wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    # Locked: even the right code is not judged.
    with pytest.raises(LockedOutError) as error:
        sign_in(db, limiter, resident, code_at(NOW), cipher=cipher, client_ip=client_ip)
    assert error.value.retry_after == 30
    assert error.value.backoff == TOTP_FAILURES_PER_RESIDENT
    with pytest.raises(LockedOutError) as later:
        sign_in(
            db,
            limiter,
            resident,
            code_at(NOW),
            cipher=cipher,
            client_ip=client_ip,
            now=NOW + STEP - dt.timedelta(seconds=1),
        )
    assert later.value.retry_after == 1
    assert device.last_used_step == step_of(ENROLLED_AT)


def test_lock_doubles_with_each_wrong_code_after_it_ends(
    db: Session, device: TotpDevice, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    for _ in range(6):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, resident, wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    now = NOW
    for expected in (30, 60, 120, 240):
        with pytest.raises(LockedOutError) as error:
            sign_in(db, limiter, resident, wrong_code(now), cipher=cipher, client_ip=client_ip, now=now)
        assert error.value.retry_after == expected
        now += dt.timedelta(seconds=expected)
        # The lock has ended: the next wrong code is judged, and locks for twice as long.
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, resident, wrong_code(now), cipher=cipher, client_ip=client_ip, now=now)


def test_right_code_after_the_lock_ends_signs_in_and_resets_the_count(
    db: Session, device: TotpDevice, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    for _ in range(6):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, resident, wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    later = NOW + STEP
    sign_in(db, limiter, resident, code_at(later), cipher=cipher, client_ip=client_ip, now=later)
    # Five wrong codes are free again, not one lock after another.
    for _ in range(5):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, resident, wrong_code(later), cipher=cipher, client_ip=client_ip, now=later)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, str(resident.id), now=later, db=db) == 0


def test_success_resets_the_residents_failures_but_not_the_ips(
    db: Session, device: TotpDevice, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    for _ in range(5):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, resident, wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    sign_in(db, limiter, resident, code_at(NOW), cipher=cipher, client_ip=client_ip)
    assert ip_failures(db, limiter, client_ip) == 5
    for _ in range(6):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, resident, wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, str(resident.id), now=NOW, db=db) == 30
    assert ip_failures(db, limiter, client_ip) == 11


def test_one_ip_is_locked_across_residents_after_twenty_free_failures(
    db: Session,
    make_resident: Callable[[], Resident],
    cipher: Fernet,
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    residents = [make_resident() for _ in range(6)]
    for each in residents:
        add_device(db, each, cipher)
    # 21 wrong codes, at most 4 per resident: no resident is locked, the address is.
    for attempt in range(21):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, residents[attempt % 6], wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    with pytest.raises(LockedOutError) as error:
        sign_in(db, limiter, residents[5], code_at(NOW), cipher=cipher, client_ip=client_ip)
    assert error.value.backoff == TOTP_FAILURES_PER_IP
    assert error.value.retry_after == 30
    # Another address is not locked.
    assert sign_in(db, limiter, residents[5], code_at(NOW), cipher=cipher, client_ip=client_ip + "f")


def test_signing_in_to_ones_own_account_between_guesses_does_not_reset_the_ip(
    db: Session,
    make_resident: Callable[[], Resident],
    resident: Resident,
    device: TotpDevice,
    cipher: Fernet,
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    # The guesser (`resident`, with their own authenticator) tries codes for other residents from one address,
    # at most four per resident so none of them is locked, and signs in to their own account between guesses.
    others = [make_resident() for _ in range(5)]
    for each in others:
        add_device(db, each, cipher)
    now = NOW
    for round_ in range(10):
        now = NOW + round_ * STEP
        for _ in range(2):
            with pytest.raises(TotpCodeInvalidError):
                sign_in(db, limiter, others[round_ % 5], wrong_code(now), cipher=cipher, client_ip=client_ip, now=now)
        assert sign_in(db, limiter, resident, code_at(now), cipher=cipher, client_ip=client_ip, now=now)
    assert ip_failures(db, limiter, client_ip) == 20
    assert limiter.locked_for(TOTP_FAILURES_PER_IP, client_ip, now=now, db=db) == 0
    # The 21st wrong code is judged, and locks the address despite the ten successes.
    with pytest.raises(TotpCodeInvalidError):
        sign_in(db, limiter, others[0], wrong_code(now), cipher=cipher, client_ip=client_ip, now=now)
    for who, code in ((others[1], wrong_code(now)), (resident, code_at(now + STEP))):
        with pytest.raises(LockedOutError) as error:
            sign_in(db, limiter, who, code, cipher=cipher, client_ip=client_ip, now=now)
        assert (error.value.backoff, error.value.retry_after) == (TOTP_FAILURES_PER_IP, 30)
    # No resident was locked: the address was.
    for each in [resident, *others]:
        assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, str(each.id), now=now, db=db) == 0
    assert device.last_used_step == step_of(NOW + 9 * STEP)


def test_ip_failures_are_forgotten_an_hour_after_the_last_one(
    db: Session, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    # Two addresses with twenty wrong codes each, one a minute (unknown numbers, each tried once: no number is
    # locked). A 21st comes from one a second before the hour since the last is up, and from the other on the hour.
    remembered, forgotten = client_ip, client_ip + "1"

    def guess(address: str, at: dt.datetime) -> None:
        number = f"+8210{uuid.uuid4().int % 10**8:08d}"
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, None, wrong_code(at), cipher=cipher, client_ip=address, subject=number, now=at)

    for address in (remembered, forgotten):
        for minute in range(20):
            guess(address, NOW + minute * dt.timedelta(minutes=1))
        assert ip_failures(db, limiter, address) == 20
    last = NOW + 19 * dt.timedelta(minutes=1)
    before = last + HOUR - dt.timedelta(seconds=1)
    guess(remembered, before)
    assert ip_failures(db, limiter, remembered) == 21
    assert limiter.locked_for(TOTP_FAILURES_PER_IP, remembered, now=before, db=db) == 30
    after = last + HOUR
    guess(forgotten, after)
    assert ip_failures(db, limiter, forgotten) == 1
    assert limiter.locked_for(TOTP_FAILURES_PER_IP, forgotten, now=after, db=db) == 0


def test_twenty_failures_from_one_ip_do_not_lock_it(
    db: Session,
    make_resident: Callable[[], Resident],
    cipher: Fernet,
    limiter: DatabaseRateLimiter,
    client_ip: str,
) -> None:
    residents = [make_resident() for _ in range(5)]
    for each in residents:
        add_device(db, each, cipher)
    for attempt in range(20):
        with pytest.raises(TotpCodeInvalidError):
            sign_in(db, limiter, residents[attempt % 5], wrong_code(NOW), cipher=cipher, client_ip=client_ip)
    assert sign_in(db, limiter, residents[0], code_at(NOW), cipher=cipher, client_ip=client_ip)


def test_locked_attempt_is_not_checked_and_is_audited(
    db: Session, device: TotpDevice, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    for _ in range(6):
        limiter.fail(TOTP_FAILURES_PER_RESIDENT, str(resident.id), now=NOW, db=db)
    checked: list[TotpDevice | None] = []

    def check(device: TotpDevice | None) -> Consume:
        checked.append(device)
        return lambda: None

    with pytest.raises(LockedOutError):
        authenticate(
            db, limiter, resident, check, code=code_at(NOW), subject=str(resident.id), client_ip=client_ip, now=NOW
        )
    assert checked == []
    [event] = verify_events(db, client_ip)
    assert (event.result, event.resident_id, event.details) == ("failure", resident.id, {"reason": "locked"})
    # Refused attempts while locked do not lengthen the lock.
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, str(resident.id), now=NOW, db=db) == 30


def snapshot(db: Session, resident_id: uuid.UUID) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    devices = db.execute(select(*TotpDevice.__table__.columns).where(TotpDevice.resident_id == resident_id))
    codes = db.execute(
        select(*RecoveryCode.__table__.columns).where(RecoveryCode.resident_id == resident_id).order_by(RecoveryCode.id)
    )
    return [tuple(row) for row in devices], [tuple(row) for row in codes]


def test_failed_attempts_change_no_authenticator_or_recovery_code(
    db: Session, device: TotpDevice, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    codes = generate_recovery_codes(db, resident.id, key=RECOVERY_KEY, now=ENROLLED_AT)
    sign_in(db, limiter, resident, code_at(NOW), cipher=cipher, client_ip=client_ip)
    used = codes[0]
    authenticate(
        db,
        limiter,
        resident,
        recovery_check(db, used, key=RECOVERY_KEY, now=NOW),
        code=used,
        subject=str(resident.id),
        client_ip=client_ip,
        now=NOW,
    )
    before = snapshot(db, resident.id)
    attempts: list[tuple[str, Callable[[str], Check]]] = [
        (wrong_code(NOW), lambda code: totp_check(db, code, cipher=cipher, now=NOW)),
        ("12345", lambda code: totp_check(db, code, cipher=cipher, now=NOW)),
        (code_at(NOW), lambda code: totp_check(db, code, cipher=cipher, now=NOW)),  # replayed
        (code_at(NOW), lambda code: totp_check(db, code, cipher=Fernet(Fernet.generate_key()), now=NOW)),
        ("zzzzz-zzzzz", lambda code: recovery_check(db, code, key=RECOVERY_KEY, now=NOW)),
        (used, lambda code: recovery_check(db, code, key=RECOVERY_KEY, now=NOW)),
    ]
    for code, make_check in attempts:
        with pytest.raises(TotpError):
            authenticate(
                db,
                limiter,
                resident,
                make_check(code),
                code=code,
                subject=str(resident.id),
                client_ip=client_ip,
                now=NOW,
            )
    db.expire_all()
    assert snapshot(db, resident.id) == before


def test_no_secret_or_code_appears_in_audit_events(
    db: Session, resident: Resident, cipher: Fernet, limiter: DatabaseRateLimiter, client_ip: str
) -> None:
    enrolment = begin_enrolment(db, resident, cipher=cipher, issuer_name=ISSUER_NAME, now=ENROLLED_AT)
    secret = enrolment.secret
    typed: list[str] = []

    def typed_code(code: str) -> str:
        typed.append(code)
        return code

    with pytest.raises(TotpCodeInvalidError):
        confirm_enrolment(
            db,
            enrolment.device,
            typed_code(wrong_code(ENROLLED_AT, secret)),
            cipher=cipher,
            client_ip=client_ip,
            now=ENROLLED_AT,
        )
    confirm_enrolment(
        db,
        enrolment.device,
        typed_code(code_at(ENROLLED_AT, secret)),
        cipher=cipher,
        client_ip=client_ip,
        now=ENROLLED_AT,
    )
    recovery_codes = generate_recovery_codes(db, resident.id, key=RECOVERY_KEY, now=ENROLLED_AT)
    sign_in(db, limiter, resident, typed_code(code_at(NOW, secret)), cipher=cipher, client_ip=client_ip)
    for code in (code_at(NOW, secret), wrong_code(NOW, secret), "12345x"):
        with pytest.raises(TotpError):
            sign_in(db, limiter, resident, typed_code(code), cipher=cipher, client_ip=client_ip)

    def use_recovery_code(code: str) -> None:
        check = recovery_check(db, typed_code(code), key=RECOVERY_KEY, now=NOW)
        authenticate(db, limiter, resident, check, code=code, subject=str(resident.id), client_ip=client_ip, now=NOW)

    use_recovery_code(recovery_codes[0])
    for code in (recovery_codes[0], "zzzzz-zzzzz"):
        with pytest.raises(TotpError):
            use_recovery_code(code)
    events = list(db.scalars(select(AuditEvent).where(AuditEvent.resident_id == resident.id)))
    assert {event.event for event in events} >= {
        "totp.enrolment_started",
        "totp.enrolment_confirm",
        "totp.enrolled",
        "recovery_codes.generated",
        "totp.verify",
        "recovery_code.used",
    }
    forbidden = [secret, secret.lower(), enrolment.grouped_secret, *typed, *recovery_codes]
    forbidden += [code.replace("-", "") for code in recovery_codes]
    for event in events:
        text = json.dumps(event.details, ensure_ascii=False)
        assert not [value for value in forbidden if value in text], (event.event, text)
