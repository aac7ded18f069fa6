"""Lockouts with exponential back-off: the delay table, both limiters, and count → judge → settle."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from idp.authn.lockout import (
    TOTP_FAILURES_PER_IP,
    TOTP_FAILURES_PER_RESIDENT,
    Backoff,
    DatabaseRateLimiter,
    LockedOutError,
    RateLimiter,
    RedisRateLimiter,
    Slot,
    counter_key,
    judge_attempt,
)
from idp.models import RateLimitCounter

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
SECRET = b"test lockout key"
SECOND = dt.timedelta(seconds=1)
MINUTE = dt.timedelta(minutes=1)
TWO_FREE = Backoff(
    "test-two-free", 2, dt.timedelta(seconds=10), dt.timedelta(minutes=5), memory=dt.timedelta(minutes=10)
)
OTHER_KIND = Backoff("test-other", 2, dt.timedelta(seconds=10), dt.timedelta(minutes=5))
SHARED = Backoff("test-shared", 2, dt.timedelta(seconds=10), dt.timedelta(minutes=5), forgiven_by_success=False)
HOUR = dt.timedelta(hours=1)


class AttemptRefusedError(Exception):
    """What a failed attempt raises in these tests."""


# -- the delay table -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [
        (-1, 0),
        (0, 0),
        (1, 0),
        (5, 0),
        (6, 30),
        (7, 60),
        (8, 120),
        (9, 240),
        (10, 480),
        (11, 960),
        (12, 1920),
        (13, 3600),  # 3840 capped at an hour
        (14, 3600),
        (100, 3600),
        (10**9, 3600),
    ],
)
def test_resident_delay_table(failures: int, seconds: int) -> None:
    assert TOTP_FAILURES_PER_RESIDENT.delay(failures) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(("failures", "seconds"), [(19, 0), (20, 0), (21, 30), (22, 60), (28, 3600)])
def test_ip_delay_table(failures: int, seconds: int) -> None:
    assert TOTP_FAILURES_PER_IP.delay(failures) == dt.timedelta(seconds=seconds)


def test_delay_without_free_failures_starts_at_the_base() -> None:
    strict = Backoff("test-strict", 0, dt.timedelta(seconds=5), dt.timedelta(seconds=15))
    assert [strict.delay(n).total_seconds() for n in range(5)] == [0, 5, 10, 15, 15]


def test_default_memory_is_a_day_and_a_success_forgives() -> None:
    default = Backoff("test-default", 1, dt.timedelta(seconds=1), dt.timedelta(seconds=2))
    assert (default.memory, default.forgiven_by_success) == (dt.timedelta(days=1), True)


def test_resident_failures_are_remembered_a_day_and_forgiven_by_a_success() -> None:
    assert TOTP_FAILURES_PER_RESIDENT.memory == dt.timedelta(days=1)
    assert TOTP_FAILURES_PER_RESIDENT.forgiven_by_success is True


def test_ip_failures_are_remembered_an_hour_and_not_forgiven_by_a_success() -> None:
    # Many residents share an address behind carrier-grade NAT: one success there says nothing of the others'
    # failures, so they are forgotten with time instead.
    assert TOTP_FAILURES_PER_IP.memory == HOUR
    assert TOTP_FAILURES_PER_IP.forgiven_by_success is False


# -- both limiters ---------------------------------------------------------------------------------------------------


@pytest.fixture
def database_limiter(engine: Engine) -> DatabaseRateLimiter:
    return DatabaseRateLimiter(engine, SECRET)


@pytest.fixture
def redis_limiter(redis_url: str) -> Iterator[RedisRateLimiter]:
    limiter = RedisRateLimiter(redis_url, SECRET)
    yield limiter
    limiter.client.close()


@pytest.fixture(params=["database", "redis"])
def limiter(request: pytest.FixtureRequest, engine: Engine, redis_url: str) -> Iterator[RateLimiter]:
    """Each limiter in turn (Redis locks expire in real time, but no test here waits as long as a lock)."""
    if request.param == "database":
        yield DatabaseRateLimiter(engine, SECRET)
        return
    limiter = RedisRateLimiter(redis_url, SECRET)
    yield limiter
    limiter.client.close()


@pytest.fixture
def subject() -> str:
    # Unique per test: counters are committed to a database (and a Redis) every test shares.
    return f"subject-{uuid.uuid4().hex}"


def fail_times(limiter: RateLimiter, backoff: Backoff, subject: str, times: int, *, now: dt.datetime = NOW) -> int:
    count = 0
    for _ in range(times):
        count = limiter.fail(backoff, subject, now=now)
    return count


def test_failures_are_counted_one_by_one(limiter: RateLimiter, subject: str) -> None:
    assert [limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) for _ in range(7)] == [1, 2, 3, 4, 5, 6, 7]


def test_free_failures_do_not_lock(limiter: RateLimiter, subject: str) -> None:
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 0
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 5)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 0


def test_first_failure_past_the_free_ones_locks_for_the_base(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 6)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 30
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW + 10 * SECOND) == 20
    # Rounded up, never "retry in 0 seconds" while still locked.
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW + 9.5 * SECOND) == 21
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW + 29.5 * SECOND) == 1
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW + 30 * SECOND) == 0
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW + MINUTE) == 0


def test_each_further_failure_doubles_the_lock_up_to_the_cap(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 5)
    now = NOW
    locks = []
    for _ in range(9):
        limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=now)
        locks.append(limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=now))
        now += dt.timedelta(seconds=locks[-1])
    assert locks == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_reset_forgets_failures_and_lock(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 7)
    limiter.reset(TOTP_FAILURES_PER_RESIDENT, subject)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 0
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 1


def test_reset_of_an_unknown_subject_does_nothing(limiter: RateLimiter, subject: str) -> None:
    limiter.reset(TOTP_FAILURES_PER_RESIDENT, subject)
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 1


def test_subjects_and_kinds_are_locked_apart(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TWO_FREE, subject, 3)
    assert limiter.locked_for(TWO_FREE, subject, now=NOW) == 10
    assert limiter.locked_for(OTHER_KIND, subject, now=NOW) == 0
    assert limiter.locked_for(TWO_FREE, subject + "x", now=NOW) == 0
    assert limiter.fail(OTHER_KIND, subject, now=NOW) == 1
    limiter.reset(OTHER_KIND, subject)
    assert limiter.locked_for(TWO_FREE, subject, now=NOW) == 10


def test_another_process_sees_the_same_lock(limiter: RateLimiter, subject: str, engine: Engine, redis_url: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 6)
    other: RateLimiter = (
        DatabaseRateLimiter(engine, SECRET)
        if isinstance(limiter, DatabaseRateLimiter)
        else RedisRateLimiter(redis_url, SECRET)
    )
    assert other.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 30
    assert other.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 7
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 60


def test_limiters_under_another_secret_do_not_share_counts(
    limiter: RateLimiter, subject: str, engine: Engine, redis_url: str
) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 6)
    other: RateLimiter = (
        DatabaseRateLimiter(engine, b"another key")
        if isinstance(limiter, DatabaseRateLimiter)
        else RedisRateLimiter(redis_url, b"another key")
    )
    assert other.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 0


def test_concurrent_failures_are_all_counted(limiter: RateLimiter, subject: str) -> None:
    start = threading.Barrier(8, timeout=10)
    errors: list[str] = []

    def fail() -> None:
        try:
            start.wait()
            limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW)
        except Exception as error:  # reported by the assertion below, not lost in the thread
            errors.append(repr(error))

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 9


# -- the database limiter: memory on the injected clock --------------------------------------------------------------


def test_failures_are_forgotten_memory_after_the_last_one(database_limiter: DatabaseRateLimiter, subject: str) -> None:
    fail_times(database_limiter, TWO_FREE, subject, 2)
    assert database_limiter.fail(TWO_FREE, subject, now=NOW + 10 * MINUTE - SECOND) == 3
    # Memory runs from the last failure, not the first.
    assert database_limiter.fail(TWO_FREE, subject, now=NOW + 19 * MINUTE) == 4
    assert database_limiter.fail(TWO_FREE, subject, now=NOW + 29 * MINUTE) == 1


def test_forgotten_failures_are_free_again(database_limiter: DatabaseRateLimiter, subject: str) -> None:
    fail_times(database_limiter, TWO_FREE, subject, 4)
    later = NOW + 10 * MINUTE
    assert fail_times(database_limiter, TWO_FREE, subject, 2, now=later) == 2
    assert database_limiter.locked_for(TWO_FREE, subject, now=later) == 0
    assert database_limiter.fail(TWO_FREE, subject, now=later) == 3
    assert database_limiter.locked_for(TWO_FREE, subject, now=later) == 10


def test_ip_failures_are_forgotten_an_hour_after_the_last_one(
    database_limiter: DatabaseRateLimiter, subject: str
) -> None:
    fail_times(database_limiter, TOTP_FAILURES_PER_IP, subject, 20)
    last = NOW + 50 * MINUTE
    # Memory runs from the last failure: the 21st, fifty minutes on, still counts on and locks.
    assert database_limiter.fail(TOTP_FAILURES_PER_IP, subject, now=last) == 21
    assert database_limiter.locked_for(TOTP_FAILURES_PER_IP, subject, now=last) == 30
    assert database_limiter.fail(TOTP_FAILURES_PER_IP, subject, now=last + HOUR - SECOND) == 22
    # An hour after the last failure the address starts again with twenty free ones.
    later = last + HOUR - SECOND + HOUR
    assert database_limiter.fail(TOTP_FAILURES_PER_IP, subject, now=later) == 1
    assert fail_times(database_limiter, TOTP_FAILURES_PER_IP, subject, 19, now=later) == 20
    assert database_limiter.locked_for(TOTP_FAILURES_PER_IP, subject, now=later) == 0


def test_counters_hold_digests_not_subjects(database_limiter: DatabaseRateLimiter, engine: Engine) -> None:
    phone = f"+8210{uuid.uuid4().int % 10**8:08d}"
    database_limiter.fail(TOTP_FAILURES_PER_RESIDENT, phone, now=NOW)
    with engine.connect() as connection:
        keys = connection.execute(select(RateLimitCounter.key)).scalars().all()
    assert counter_key(TOTP_FAILURES_PER_RESIDENT, phone, SECRET) in keys
    assert not any(phone[3:] in key for key in keys)


# -- the Redis limiter: expiry is Redis's own --------------------------------------------------------------------------


def test_redis_keeps_the_count_for_the_memory_after_the_last_failure(
    redis_limiter: RedisRateLimiter, subject: str
) -> None:
    fail_times(redis_limiter, TWO_FREE, subject, 3)
    base = f"idp:lock:{counter_key(TWO_FREE, subject, SECRET)}"
    # Redis expires the keys in its own real time: the count after the memory, the lock after its delay.
    assert 595 <= redis_limiter.client.ttl(f"{base}:n") <= 600
    assert 8 <= redis_limiter.client.ttl(f"{base}:until") <= 10
    # A later failure starts the memory again.
    redis_limiter.client.expire(f"{base}:n", 100)
    assert redis_limiter.fail(TWO_FREE, subject, now=NOW) == 4
    assert 595 <= redis_limiter.client.ttl(f"{base}:n") <= 600


def test_redis_keeps_ip_failures_for_an_hour(redis_limiter: RedisRateLimiter, subject: str) -> None:
    fail_times(redis_limiter, TOTP_FAILURES_PER_IP, subject, 21)
    base = f"idp:lock:{counter_key(TOTP_FAILURES_PER_IP, subject, SECRET)}"
    assert 3595 <= redis_limiter.client.ttl(f"{base}:n") <= 3600
    assert 28 <= redis_limiter.client.ttl(f"{base}:until") <= 30


def test_redis_keys_hold_digests_not_subjects(redis_limiter: RedisRateLimiter) -> None:
    phone = f"+8210{uuid.uuid4().int % 10**8:08d}"
    fail_times(redis_limiter, TOTP_FAILURES_PER_RESIDENT, phone, 6)
    keys = [key.decode() for key in redis_limiter.client.keys("idp:lock:*")]
    assert keys
    assert not any(phone[3:] in key for key in keys)


# -- reserving an attempt: counted before it is judged -------------------------------------------------------------


def test_a_reserved_attempt_counts_as_a_failure_before_it_is_judged(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 2)
    assert limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=NOW) == (
        Slot(TOTP_FAILURES_PER_RESIDENT, subject, 3, None),
    )
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 4


def test_an_attempt_past_the_free_failures_locks_as_it_is_reserved(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 5)
    [slot] = limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=NOW)
    assert (slot.failures, slot.locked_until) == (6, NOW + 30 * SECOND)
    # Locked while it is being judged: an attempt beside it is refused, not judged.
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 30
    with pytest.raises(LockedOutError) as error:
        limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=NOW + SECOND)
    assert error.value.retry_after == 29


def test_reservations_follow_the_delay_table(limiter: RateLimiter, subject: str) -> None:
    now, locks = NOW, []
    for _ in range(14):
        [slot] = limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=now)
        wait = limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=now)
        assert slot.locked_until == (now + wait * SECOND if wait else None)
        locks.append(wait)
        now += wait * SECOND
    assert locks == [0, 0, 0, 0, 0, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_a_locked_subject_refuses_a_reservation_and_counts_nothing(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 6)
    with pytest.raises(LockedOutError) as error:
        limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=NOW + 10 * SECOND)
    assert (error.value.backoff, error.value.retry_after) == (TOTP_FAILURES_PER_RESIDENT, 20)
    # Neither counted nor lengthened.
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 30
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 7


def test_a_reservation_refused_for_one_subject_counts_against_none(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 3)
    fail_times(limiter, TOTP_FAILURES_PER_IP, subject + "-ip", 21)
    with pytest.raises(LockedOutError) as error:
        limiter.reserve(subjects_of(subject), now=NOW)
    assert error.value.backoff == TOTP_FAILURES_PER_IP
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 4


def test_release_uncounts_the_attempt_and_lifts_the_lock_it_earned(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 5)
    [slot] = limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=NOW)
    limiter.release(slot)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 0
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 6


def test_release_keeps_a_lock_a_later_attempt_earned(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 4)
    [first] = limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=NOW)
    [second] = limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=NOW)
    assert (first.locked_until, second.locked_until) == (None, NOW + 30 * SECOND)
    limiter.release(first)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 30
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 6


def test_release_after_a_reset_does_not_go_below_nothing(limiter: RateLimiter, subject: str) -> None:
    [slot] = limiter.reserve([(TOTP_FAILURES_PER_RESIDENT, subject)], now=NOW)
    limiter.reset(TOTP_FAILURES_PER_RESIDENT, subject)
    limiter.release(slot)
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 1


def test_concurrent_reservations_judge_no_more_than_a_sequence(limiter: RateLimiter, subject: str) -> None:
    start = threading.Barrier(16, timeout=10)
    outcomes: list[str] = []

    def reserve() -> None:
        try:
            start.wait()
            limiter.reserve(subjects_of(subject), now=NOW)
            outcomes.append("judged")
        except LockedOutError:
            outcomes.append("refused")
        except Exception as error:  # reported by the assertion below, not lost in the thread
            outcomes.append(repr(error))

    threads = [threading.Thread(target=reserve) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Five free failures and the sixth, which earns the first lock: as many as one after another.
    assert sorted(outcomes) == ["judged"] * 6 + ["refused"] * 10
    assert limiter.fail(TOTP_FAILURES_PER_IP, subject + "-ip", now=NOW) == 7


def test_reserved_failures_are_forgotten_memory_after_the_last_one(
    database_limiter: DatabaseRateLimiter, subject: str
) -> None:
    fail_times(database_limiter, TWO_FREE, subject, 2)
    [slot] = database_limiter.reserve([(TWO_FREE, subject)], now=NOW + 10 * MINUTE - SECOND)
    assert slot.failures == 3
    [slot] = database_limiter.reserve([(TWO_FREE, subject)], now=NOW + 20 * MINUTE)
    assert (slot.failures, slot.locked_until) == (1, None)


def test_redis_keeps_reserved_failures_for_the_memory_and_the_lock_for_its_delay(
    redis_limiter: RedisRateLimiter, subject: str
) -> None:
    fail_times(redis_limiter, TWO_FREE, subject, 2)
    redis_limiter.reserve([(TWO_FREE, subject)], now=NOW)
    base = f"idp:lock:{counter_key(TWO_FREE, subject, SECRET)}"
    assert 595 <= redis_limiter.client.ttl(f"{base}:n") <= 600
    assert 8 <= redis_limiter.client.ttl(f"{base}:until") <= 10
    assert redis_limiter.locked_for(TWO_FREE, subject, now=NOW) == 10


# -- judge_attempt: count → judge → settle ---------------------------------------------------------------------------


def subjects_of(subject: str) -> list[tuple[Backoff, str]]:
    return [(TOTP_FAILURES_PER_RESIDENT, subject), (TOTP_FAILURES_PER_IP, subject + "-ip")]


def test_judge_attempt_returns_the_result_and_resets_the_resident_but_not_the_ip(
    limiter: RateLimiter, subject: str
) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 4)
    fail_times(limiter, TOTP_FAILURES_PER_IP, subject + "-ip", 4)
    assert judge_attempt(
        limiter, subjects_of(subject), lambda: "signed in", failures=(AttemptRefusedError,), now=NOW
    ) == ("signed in")
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 1
    # The address's failures stay: a success there does not forgive them.
    assert limiter.fail(TOTP_FAILURES_PER_IP, subject + "-ip", now=NOW) == 5


def test_judge_attempt_resets_only_subjects_a_success_forgives(limiter: RateLimiter, subject: str) -> None:
    subjects = [(TWO_FREE, subject), (SHARED, subject), (OTHER_KIND, subject)]
    for backoff, each in subjects:
        fail_times(limiter, backoff, each, 2)
    assert judge_attempt(limiter, subjects, lambda: "signed in", failures=(AttemptRefusedError,), now=NOW) == (
        "signed in"
    )
    assert limiter.fail(TWO_FREE, subject, now=NOW) == 1
    assert limiter.fail(OTHER_KIND, subject, now=NOW) == 1
    assert limiter.fail(SHARED, subject, now=NOW) == 3
    assert limiter.locked_for(SHARED, subject, now=NOW) == 10


def test_success_between_failures_does_not_save_an_unforgiven_subject_from_its_lock(
    limiter: RateLimiter, subject: str
) -> None:
    # A guesser alternating wrong codes for others with a right one for their own account, from one address.
    def refuse() -> str:
        raise AttemptRefusedError

    own = [(TOTP_FAILURES_PER_RESIDENT, f"{subject}-own"), (TOTP_FAILURES_PER_IP, subject)]
    for round_ in range(10):
        victim = [(TOTP_FAILURES_PER_RESIDENT, f"{subject}-victim-{round_}"), (TOTP_FAILURES_PER_IP, subject)]
        for _ in range(2):
            with pytest.raises(AttemptRefusedError):
                judge_attempt(limiter, victim, refuse, failures=(AttemptRefusedError,), now=NOW)
        assert judge_attempt(limiter, own, lambda: "mine", failures=(AttemptRefusedError,), now=NOW) == "mine"
    assert limiter.locked_for(TOTP_FAILURES_PER_IP, subject, now=NOW) == 0
    victim = [(TOTP_FAILURES_PER_RESIDENT, f"{subject}-victim-10"), (TOTP_FAILURES_PER_IP, subject)]
    with pytest.raises(AttemptRefusedError):
        judge_attempt(limiter, victim, refuse, failures=(AttemptRefusedError,), now=NOW)
    # The 21st failure from the address locks it, ten successes in between notwithstanding.
    assert limiter.locked_for(TOTP_FAILURES_PER_IP, subject, now=NOW) == 30
    with pytest.raises(LockedOutError) as error:
        judge_attempt(limiter, own, lambda: "mine", failures=(AttemptRefusedError,), now=NOW)
    assert error.value.backoff == TOTP_FAILURES_PER_IP


def test_judge_attempt_counts_a_failure_against_every_subject(limiter: RateLimiter, subject: str) -> None:
    def refuse() -> str:
        raise AttemptRefusedError

    for _ in range(3):
        with pytest.raises(AttemptRefusedError):
            judge_attempt(limiter, subjects_of(subject), refuse, failures=(AttemptRefusedError,), now=NOW)
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 4
    assert limiter.fail(TOTP_FAILURES_PER_IP, subject + "-ip", now=NOW) == 4


def test_judge_attempt_refuses_a_locked_subject_without_attempting(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_IP, subject + "-ip", 21)
    attempted: list[bool] = []

    def attempt() -> str:
        attempted.append(True)
        return "signed in"

    with pytest.raises(LockedOutError) as error:
        judge_attempt(limiter, subjects_of(subject), attempt, failures=(AttemptRefusedError,), now=NOW + 10 * SECOND)
    assert attempted == []
    assert error.value.backoff == TOTP_FAILURES_PER_IP
    assert error.value.retry_after == 20
    assert "totp-ip" in str(error.value)
    # A refused attempt counts against nobody.
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 1


def test_judge_attempt_names_the_first_locked_subject(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 7)
    fail_times(limiter, TOTP_FAILURES_PER_IP, subject + "-ip", 21)
    with pytest.raises(LockedOutError) as error:
        judge_attempt(limiter, subjects_of(subject), lambda: None, failures=(AttemptRefusedError,), now=NOW)
    assert (error.value.backoff, error.value.retry_after) == (TOTP_FAILURES_PER_RESIDENT, 60)


def test_judge_attempt_tries_again_once_the_lock_ends(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 6)
    assert (
        judge_attempt(limiter, subjects_of(subject), lambda: 42, failures=(AttemptRefusedError,), now=NOW + 30 * SECOND)
        == 42
    )


def test_judge_attempt_lets_other_errors_through_uncounted(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 2)

    def crash() -> None:
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        judge_attempt(limiter, subjects_of(subject), crash, failures=(AttemptRefusedError,), now=NOW)
    # Neither counted nor reset: not a wrong guess, and not a success.
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 3
    assert limiter.fail(TOTP_FAILURES_PER_IP, subject + "-ip", now=NOW) == 1


def test_an_attempt_being_judged_is_counted_already(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 5)
    beside: list[str] = []

    def refuse_after_another_tries() -> str:
        # Another attempt arrives while this one (the sixth) is being judged: it is refused unjudged.
        with pytest.raises(LockedOutError) as error:
            judge_attempt(limiter, subjects_of(subject), lambda: "mine", failures=(AttemptRefusedError,), now=NOW)
        beside.append(f"{error.value.backoff.kind} {error.value.retry_after}")
        raise AttemptRefusedError

    with pytest.raises(AttemptRefusedError):
        judge_attempt(
            limiter, subjects_of(subject), refuse_after_another_tries, failures=(AttemptRefusedError,), now=NOW
        )
    assert beside == ["totp-resident 30"]
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 7


def test_a_success_lifts_the_lock_it_earned_in_advance_where_it_is_not_forgiven(
    limiter: RateLimiter, subject: str
) -> None:
    # The address's 21st attempt locks it in advance; it is a right code, so it was no failure after all.
    fail_times(limiter, TOTP_FAILURES_PER_IP, subject + "-ip", 20)
    assert judge_attempt(limiter, subjects_of(subject), lambda: "mine", failures=(AttemptRefusedError,), now=NOW) == (
        "mine"
    )
    assert limiter.locked_for(TOTP_FAILURES_PER_IP, subject + "-ip", now=NOW) == 0
    assert limiter.fail(TOTP_FAILURES_PER_IP, subject + "-ip", now=NOW) == 21


def test_an_attempt_that_crashed_lifts_the_lock_it_earned_in_advance(limiter: RateLimiter, subject: str) -> None:
    fail_times(limiter, TOTP_FAILURES_PER_RESIDENT, subject, 5)

    def crash() -> None:
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        judge_attempt(limiter, subjects_of(subject), crash, failures=(AttemptRefusedError,), now=NOW)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 0
    assert limiter.fail(TOTP_FAILURES_PER_RESIDENT, subject, now=NOW) == 6
