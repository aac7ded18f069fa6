"""Rate limits: fixed windows counted in the database, shared by every process, keyed by digests."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import Engine, select

from idp.authn.lockout import (
    CARRIER_STARTS_PER_IP,
    DatabaseRateLimiter,
    Limit,
    RateLimitedError,
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
