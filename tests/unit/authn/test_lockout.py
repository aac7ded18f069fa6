"""Rate limits: fixed windows counted in the database or Redis, shared by every process, keyed by digests; a hit
never judged is taken back."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from idp.authn.lockout import (
    CARRIER_STARTS_PER_IP,
    DatabaseRateLimiter,
    Limit,
    RateLimitedError,
    RateLimiter,
    RedisRateLimiter,
    counter_key,
    make_rate_limiter,
    retry_after,
)
from idp.models import RateLimitCounter

NOW = dt.datetime(2026, 11, 26, 6, 0, 30, tzinfo=dt.UTC)
SECRET = b"test rate-limit key"
THREE_PER_MINUTE = Limit("test", 3, dt.timedelta(minutes=1))


@pytest.fixture
def limiter(engine: Engine) -> DatabaseRateLimiter:
    return DatabaseRateLimiter(engine, SECRET)


@pytest.fixture
def subject() -> str:
    return f"203.0.113.{uuid.uuid4().int % 250}-{uuid.uuid4().hex}"


def test_hits_within_the_limit_are_counted(limiter: DatabaseRateLimiter, subject: str) -> None:
    assert [limiter.hit(THREE_PER_MINUTE, subject, now=NOW) for _ in range(3)] == [1, 2, 3]
    assert limiter.peek(THREE_PER_MINUTE, subject, now=NOW) == 3


def test_hit_over_the_limit_says_when_the_window_ends(limiter: DatabaseRateLimiter, subject: str) -> None:
    for _ in range(3):
        limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    with pytest.raises(RateLimitedError) as error:
        limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    assert error.value.retry_after == 30
    # The refused hit still counts: hammering does not slip through.
    assert limiter.peek(THREE_PER_MINUTE, subject, now=NOW) == 4


def test_a_new_window_starts_from_one(limiter: DatabaseRateLimiter, subject: str) -> None:
    for _ in range(3):
        limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    later = NOW + dt.timedelta(minutes=1)
    assert limiter.peek(THREE_PER_MINUTE, subject, now=later) == 0
    assert limiter.hit(THREE_PER_MINUTE, subject, now=later) == 1


def test_subjects_and_kinds_are_counted_apart(limiter: DatabaseRateLimiter, subject: str) -> None:
    limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    limiter.hit(CARRIER_STARTS_PER_IP, subject, now=NOW)
    assert limiter.peek(THREE_PER_MINUTE, subject + "x", now=NOW) == 0
    assert limiter.peek(THREE_PER_MINUTE, subject, now=NOW) == 1


def test_reset_forgets_the_subject(limiter: DatabaseRateLimiter, subject: str) -> None:
    limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    limiter.reset(THREE_PER_MINUTE, subject)
    assert limiter.peek(THREE_PER_MINUTE, subject, now=NOW) == 0


def test_counters_hold_digests_not_phone_numbers(limiter: DatabaseRateLimiter, engine: Engine) -> None:
    phone = f"+8210{uuid.uuid4().int % 10**8:08d}"
    limiter.hit(THREE_PER_MINUTE, phone, now=NOW)
    with engine.connect() as connection:
        keys = connection.execute(select(RateLimitCounter.key)).scalars().all()
    assert counter_key(THREE_PER_MINUTE, phone, SECRET) in keys
    assert not any(phone in key or phone[3:] in key for key in keys)


def test_purge_drops_ended_windows(limiter: DatabaseRateLimiter, subject: str) -> None:
    limiter.hit(THREE_PER_MINUTE, subject, now=NOW - dt.timedelta(hours=1))
    assert limiter.purge(now=NOW) >= 1
    assert limiter.peek(THREE_PER_MINUTE, subject, now=NOW - dt.timedelta(hours=1)) == 0


def test_retry_after_is_at_least_one_second() -> None:
    end_of_window = dt.datetime(2026, 11, 26, 6, 0, 59, 999000, tzinfo=dt.UTC)
    assert retry_after(THREE_PER_MINUTE, end_of_window) == 1


def test_storage_setting_chooses_the_limiter(engine: Engine) -> None:
    assert isinstance(make_rate_limiter("database", engine, secret="s"), DatabaseRateLimiter)
    assert isinstance(make_rate_limiter("redis://127.0.0.1:1/0", engine, secret="s"), RedisRateLimiter)


def test_redis_limiter_counts_windows_like_the_database(redis_url: str, engine: Engine, subject: str) -> None:
    limiter = make_rate_limiter(redis_url, engine, secret="s")
    assert isinstance(limiter, RedisRateLimiter)
    assert [limiter.hit(THREE_PER_MINUTE, subject, now=NOW) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(RateLimitedError) as error:
        limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    assert error.value.retry_after == 30
    assert limiter.peek(THREE_PER_MINUTE, subject, now=NOW + dt.timedelta(minutes=1)) == 0
    other = make_rate_limiter(redis_url, engine, secret="s")
    # Another process (another client) sees the same counts: limits hold across the fleet.
    assert other.peek(THREE_PER_MINUTE, subject, now=NOW) == 4


def test_redis_keys_hold_digests_not_phone_numbers(redis_url: str, engine: Engine) -> None:
    limiter = make_rate_limiter(redis_url, engine, secret="s")
    assert isinstance(limiter, RedisRateLimiter)
    limiter.hit(THREE_PER_MINUTE, "+821000000001", now=NOW)
    keys = [key.decode() for key in limiter.client.keys("*")]
    assert keys
    assert not any("1000000001" in key for key in keys)


# -- taking back a hit that was never judged -------------------------------------------------------------------------


@pytest.fixture(params=["database", "redis"])
def either_limiter(request: pytest.FixtureRequest, engine: Engine, redis_url: str) -> Iterator[RateLimiter]:
    if request.param == "database":
        yield DatabaseRateLimiter(engine, SECRET)
        return
    limiter = RedisRateLimiter(redis_url, SECRET)
    yield limiter
    limiter.client.close()


def test_a_hit_taken_back_is_uncounted(either_limiter: RateLimiter, subject: str) -> None:
    for _ in range(3):
        either_limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    either_limiter.take_back(THREE_PER_MINUTE, subject, now=NOW)
    assert either_limiter.peek(THREE_PER_MINUTE, subject, now=NOW) == 2
    assert either_limiter.hit(THREE_PER_MINUTE, subject, now=NOW) == 3


def test_a_hit_is_taken_back_only_from_its_own_window(either_limiter: RateLimiter, subject: str) -> None:
    either_limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    later = NOW + dt.timedelta(minutes=1)
    either_limiter.take_back(THREE_PER_MINUTE, subject, now=later)
    assert either_limiter.peek(THREE_PER_MINUTE, subject, now=later) == 0
    assert either_limiter.hit(THREE_PER_MINUTE, subject, now=later) == 1
    either_limiter.take_back(THREE_PER_MINUTE, subject, now=NOW)
    assert either_limiter.peek(THREE_PER_MINUTE, subject, now=later) == 1


def test_taking_back_more_than_was_counted_stops_at_nothing(either_limiter: RateLimiter, subject: str) -> None:
    either_limiter.take_back(THREE_PER_MINUTE, subject, now=NOW)
    either_limiter.hit(THREE_PER_MINUTE, subject, now=NOW)
    either_limiter.take_back(THREE_PER_MINUTE, subject, now=NOW)
    either_limiter.take_back(THREE_PER_MINUTE, subject, now=NOW)
    assert either_limiter.peek(THREE_PER_MINUTE, subject, now=NOW) == 0
    assert either_limiter.hit(THREE_PER_MINUTE, subject, now=NOW) == 1


def test_redis_does_not_bring_back_an_ended_window_to_take_a_hit_back(redis_url: str, subject: str) -> None:
    limiter = RedisRateLimiter(redis_url, SECRET)
    limiter.take_back(THREE_PER_MINUTE, subject, now=NOW)
    assert limiter.client.keys(f"idp:rl:{counter_key(THREE_PER_MINUTE, subject, SECRET)}:*") == []
    limiter.client.close()
