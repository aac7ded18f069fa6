"""Rate limits and lockouts for every guessable secret and costly action, shared by all server processes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, case, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from idp.models import RateLimitCounter


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `count` hits per `window` for one subject of one kind."""

    kind: str
    count: int
    window: dt.timedelta


# DESIGN section 8: 10 starts per IP per minute, 10 sends per phone per day, 5 wrong codes per transaction.
CARRIER_STARTS_PER_IP = Limit("carrier-start-ip", 10, dt.timedelta(minutes=1))
CARRIER_SENDS_PER_PHONE = Limit("carrier-send-phone", 10, dt.timedelta(days=1))
CARRIER_CODES_PER_TXN = Limit("carrier-code-txn", 5, dt.timedelta(minutes=10))


class RateLimitedError(Exception):
    """Too many hits; `retry_after` seconds until the window ends."""

    def __init__(self, limit: Limit, retry_after: int) -> None:
        super().__init__(f"{limit.kind}: retry after {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after


class RateLimiter(Protocol):
    def hit(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        """Count one hit; the hits in the window so far, this one included.

        Raises:
            RateLimitedError: the hit went over the limit (it is still counted).
        """

    def peek(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        """The hits in the current window, without counting one."""

    def reset(self, limit: Limit, subject: str) -> None:
        """Forget the subject's hits (after a success that should reset a lockout)."""


def counter_key(limit: Limit, subject: str, secret: bytes) -> str:
    # Subjects are phone numbers and IPs. A keyed digest: a plain hash of a phone number is undone by trying
    # all 10^8 numbers, so without the key a copy of the table says nothing about who tried.
    return hmac.new(secret, f"{limit.kind}\x00{subject}".encode(), hashlib.sha256).hexdigest()


def window_start(limit: Limit, now: dt.datetime) -> dt.datetime:
    seconds = limit.window.total_seconds()
    start = math.floor(now.timestamp() / seconds) * seconds
    return dt.datetime.fromtimestamp(start, dt.UTC)


def retry_after(limit: Limit, now: dt.datetime) -> int:
    end = window_start(limit, now) + limit.window
    return max(1, math.ceil((end - now).total_seconds()))


class DatabaseRateLimiter:
    """Fixed-window counters in the database, each hit committed at once in its own transaction.

    Its own transaction matters: the request that hit the limit usually fails and rolls back, and the
    failed attempt must still count.
    """

    def __init__(self, engine: Engine, secret: bytes) -> None:
        self.engine = engine
        self.secret = secret

    def hit(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        key = counter_key(limit, subject, self.secret)
        start = window_start(limit, now)
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        values = insert(RateLimitCounter).values(key=key, window_start=start, count=1, expires_at=start + limit.window)
        # One statement, so concurrent processes never lose a hit: a new window restarts the count at 1.
        same_window = RateLimitCounter.window_start == values.excluded.window_start
        statement = values.on_conflict_do_update(
            index_elements=[RateLimitCounter.key],
            set_={
                "count": case((same_window, RateLimitCounter.count + 1), else_=1),
                "window_start": start,
                "expires_at": start + limit.window,
            },
        ).returning(RateLimitCounter.count)
        with self.engine.begin() as connection:
            count = int(connection.execute(statement).scalar_one())
        if count > limit.count:
            raise RateLimitedError(limit, retry_after(limit, now))
        return count

    def peek(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(RateLimitCounter.count, RateLimitCounter.window_start).where(
                    RateLimitCounter.key == counter_key(limit, subject, self.secret)
                )
            ).first()
        if row is None or _aware(row[1]) != window_start(limit, now):
            return 0
        return int(row[0])

    def reset(self, limit: Limit, subject: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                delete(RateLimitCounter).where(RateLimitCounter.key == counter_key(limit, subject, self.secret))
            )

    def purge(self, *, now: dt.datetime) -> int:
        """Drop counters whose window has ended."""
        with self.engine.begin() as connection:
            result = connection.execute(delete(RateLimitCounter).where(RateLimitCounter.expires_at < now))
        return int(result.rowcount)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class RedisRateLimiter:
    """Fixed-window counters in Redis (`IDP_RATELIMIT_STORAGE=redis://…`), for a fleet."""

    def __init__(self, url: str, secret: bytes) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.secret = secret

    def _key(self, limit: Limit, subject: str, now: dt.datetime) -> str:
        return f"idp:rl:{counter_key(limit, subject, self.secret)}:{int(window_start(limit, now).timestamp())}"

    def hit(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        key = self._key(limit, subject, now)
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, int(limit.window.total_seconds()) + 1)
        count = int(pipe.execute()[0])
        if count > limit.count:
            raise RateLimitedError(limit, retry_after(limit, now))
        return count

    def peek(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        value = self.client.get(self._key(limit, subject, now))
        return int(value) if value is not None else 0

    def reset(self, limit: Limit, subject: str) -> None:
        # Only the current window matters; older keys expire on their own.
        self.client.delete(self._key(limit, subject, dt.datetime.now(dt.UTC)))


def make_rate_limiter(storage: str, engine: Engine, *, secret: str) -> RateLimiter:
    """The limiter IDP_RATELIMIT_STORAGE names: `database` (default) or a `redis://` URL; `secret` keys its keys."""
    key = hashlib.sha256(b"idp rate limits\x00" + secret.encode()).digest()
    if storage.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(storage, key)
    return DatabaseRateLimiter(engine, key)
