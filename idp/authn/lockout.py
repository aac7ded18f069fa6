"""Rate limits and lockouts for every guessable secret and costly action, shared by all server processes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import Engine, case, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from idp.models import RateLimitCounter

T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class Backoff:
    """A lockout with exponential back-off: after `free` consecutive failures each further one locks the subject
    for `base` × 2^(n − free − 1), at most `cap`; failures are forgotten `memory` after the last one, or at a success.
    """

    kind: str
    free: int
    base: dt.timedelta
    cap: dt.timedelta
    memory: dt.timedelta = dt.timedelta(days=1)
    # False for subjects shared by many people (an IP address): one success there says nothing about the
    # failures of others, and forgiving them would let a guesser reset the count with an account of their own.
    forgiven_by_success: bool = True

    def delay(self, failures: int) -> dt.timedelta:
        """How long the subject is locked after its `failures`-th consecutive failure."""
        over = failures - self.free
        if over <= 0:
            return dt.timedelta(0)
        # 2**20 × 30 s is past any sensible cap already; a bound keeps the arithmetic small.
        delay: dt.timedelta = self.base * (2 ** min(over - 1, 20))
        return min(self.cap, delay)


# TOTP codes have 10^6 values and three are valid at a time (RFC 6238 with one step either side): 5 free tries,
# then 30 s, 1 min, 2 min … up to an hour keep a guesser under ~30 tries a day per account. The per-IP lock is
# looser because many phones share an address behind carrier-grade NAT; a success there does not forgive it (it
# would let a guesser reset the count with their own account), so its failures are forgotten after an hour.
TOTP_FAILURES_PER_RESIDENT = Backoff("totp-resident", 5, dt.timedelta(seconds=30), dt.timedelta(hours=1))
TOTP_FAILURES_PER_IP = Backoff(
    "totp-ip",
    20,
    dt.timedelta(seconds=30),
    dt.timedelta(hours=1),
    memory=dt.timedelta(hours=1),
    forgiven_by_success=False,
)


class LockedOutError(Exception):
    """Too many failures for this subject: no attempt is judged for `retry_after` seconds."""

    def __init__(self, backoff: Backoff, retry_after: int) -> None:
        super().__init__(f"{backoff.kind}: locked for {retry_after} s")
        self.backoff = backoff
        self.retry_after = retry_after


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

    def reset(self, limit: Limit | Backoff, subject: str) -> None:
        """Forget the subject's hits or failures (after a success that should reset a lockout)."""

    def fail(self, backoff: Backoff, subject: str, *, now: dt.datetime) -> int:
        """Count one failure and lock the subject for the back-off it earned; the failures so far."""

    def locked_for(self, backoff: Backoff, subject: str, *, now: dt.datetime) -> int:
        """Seconds until the subject may try again; 0 when it is not locked."""


def judge_attempt(
    limiter: RateLimiter,
    subjects: Sequence[tuple[Backoff, str]],
    attempt: Callable[[], T],
    *,
    failures: tuple[type[Exception], ...],
    now: dt.datetime,
) -> T:
    """Lockout → verify → count: refuse while any subject is locked, count a failure against every subject,
    forget those a success forgives (`Backoff.forgiven_by_success`) at a success.

    Raises:
        LockedOutError: a subject is locked; `attempt` was not called.
        Any of `failures`: what `attempt` raised, after counting it.
    """
    for backoff, subject in subjects:
        wait = limiter.locked_for(backoff, subject, now=now)
        if wait > 0:
            raise LockedOutError(backoff, wait)
    try:
        result = attempt()
    except failures:
        for backoff, subject in subjects:
            limiter.fail(backoff, subject, now=now)
        raise
    for backoff, subject in subjects:
        if backoff.forgiven_by_success:
            limiter.reset(backoff, subject)
    return result


def counter_key(limit: Limit | Backoff, subject: str, secret: bytes) -> str:
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

    def reset(self, limit: Limit | Backoff, subject: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                delete(RateLimitCounter).where(RateLimitCounter.key == counter_key(limit, subject, self.secret))
            )

    def fail(self, backoff: Backoff, subject: str, *, now: dt.datetime) -> int:
        key = counter_key(backoff, subject, self.secret)
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        values = insert(RateLimitCounter).values(key=key, window_start=now, count=1, expires_at=now + backoff.memory)
        # One statement for the count, so concurrent failures are never lost; an expired memory starts again at 1.
        statement = values.on_conflict_do_update(
            index_elements=[RateLimitCounter.key],
            set_={
                "count": case((RateLimitCounter.expires_at > now, RateLimitCounter.count + 1), else_=1),
                "expires_at": now + backoff.memory,
            },
        ).returning(RateLimitCounter.count)
        with self.engine.begin() as connection:
            count = int(connection.execute(statement).scalar_one())
            delay = backoff.delay(count)
            if delay:
                connection.execute(
                    update(RateLimitCounter).where(RateLimitCounter.key == key).values(locked_until=now + delay)
                )
        return count

    def locked_for(self, backoff: Backoff, subject: str, *, now: dt.datetime) -> int:
        with self.engine.connect() as connection:
            until = connection.execute(
                select(RateLimitCounter.locked_until).where(
                    RateLimitCounter.key == counter_key(backoff, subject, self.secret)
                )
            ).scalar()
        if until is None or _aware(until) <= now:
            return 0
        return max(1, math.ceil((_aware(until) - now).total_seconds()))

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

    def reset(self, limit: Limit | Backoff, subject: str) -> None:
        if isinstance(limit, Backoff):
            base = self._backoff_key(limit, subject)
            self.client.delete(f"{base}:n", f"{base}:until")
            return
        # Only the current window matters; older keys expire on their own.
        self.client.delete(self._key(limit, subject, dt.datetime.now(dt.UTC)))

    def _backoff_key(self, backoff: Backoff, subject: str) -> str:
        return f"idp:lock:{counter_key(backoff, subject, self.secret)}"

    def fail(self, backoff: Backoff, subject: str, *, now: dt.datetime) -> int:
        base = self._backoff_key(backoff, subject)
        memory = int(backoff.memory.total_seconds())
        pipe = self.client.pipeline()
        pipe.incr(f"{base}:n")
        pipe.expire(f"{base}:n", memory)
        count = int(pipe.execute()[0])
        delay = backoff.delay(count)
        if delay:
            until = now + delay
            self.client.set(f"{base}:until", until.timestamp(), ex=max(1, math.ceil(delay.total_seconds())))
        return count

    def locked_for(self, backoff: Backoff, subject: str, *, now: dt.datetime) -> int:
        value = self.client.get(f"{self._backoff_key(backoff, subject)}:until")
        if value is None:
            return 0
        remaining = float(value) - now.timestamp()
        return max(1, math.ceil(remaining)) if remaining > 0 else 0


def make_rate_limiter(storage: str, engine: Engine, *, secret: str) -> RateLimiter:
    """The limiter IDP_RATELIMIT_STORAGE names: `database` (default) or a `redis://` URL; `secret` keys its keys."""
    key = hashlib.sha256(b"idp rate limits\x00" + secret.encode()).digest()
    if storage.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(storage, key)
    return DatabaseRateLimiter(engine, key)
