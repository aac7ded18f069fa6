"""Rate limits and lockouts for every guessable secret and costly action, shared by all server processes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import Engine, case, delete, null, select, update
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


# docs/carrier.md: 10 starts per IP per minute, 10 sends per phone per day, 5 wrong codes per transaction.
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


@dataclass(frozen=True, slots=True)
class Slot:
    """One attempt counted as a failure against one subject before it was judged (`RateLimiter.reserve`)."""

    backoff: Backoff
    subject: str
    failures: int  # the subject's failures, this attempt included
    locked_until: dt.datetime | None  # the lock this attempt earned in advance; None within the free failures


class RateLimiter(Protocol):
    def hit(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        """Count one hit; the hits in the window so far, this one included.

        Raises:
            RateLimitedError: the hit went over the limit (it is still counted).
        """

    def take_back(self, limit: Limit, subject: str, *, now: dt.datetime) -> None:
        """Uncount one hit counted at `now` and let through (one that was never judged), in the window it was
        counted in; nothing once that window has ended."""

    def peek(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        """The hits in the current window, without counting one."""

    def reset(self, limit: Limit | Backoff, subject: str) -> None:
        """Forget the subject's hits or failures (after a success that should reset a lockout)."""

    def reserve(self, subjects: Sequence[tuple[Backoff, str]], *, now: dt.datetime) -> tuple[Slot, ...]:
        """Count one attempt as a failure against every subject at once, before it is judged, and lock each subject
        for the back-off that failure earns; a slot per subject, in order.

        One atomic step for all the subjects: of attempts made at the same moment, each sees the failures of those
        before it, so a burst is judged no more often than a sequence.

        Raises:
            LockedOutError: a subject is locked (the first in order is named); nothing was counted.
        """

    def release(self, slot: Slot) -> None:
        """Uncount an attempt that did not fail: one failure fewer, and the lock it earned in advance lifted unless
        a later one has replaced it."""

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
    """Count → judge → settle: count the attempt as a failure against every subject first (refused while any is
    locked), then judge it; a failure stays counted, a success is forgiven where `Backoff.forgiven_by_success` and
    uncounted elsewhere, and any other outcome is uncounted.

    Raises:
        LockedOutError: a subject is locked; `attempt` was not called and nothing was counted.
        Any of `failures`: what `attempt` raised, counted.
    """
    slots = limiter.reserve(subjects, now=now)
    try:
        result = attempt()
    except failures:
        raise
    except Exception:
        # Not a wrong guess (the database went away, an admin locked the account): neither counted nor forgiven.
        for slot in slots:
            limiter.release(slot)
        raise
    for slot in slots:
        if slot.backoff.forgiven_by_success:
            limiter.reset(slot.backoff, slot.subject)
        else:
            limiter.release(slot)
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

    def take_back(self, limit: Limit, subject: str, *, now: dt.datetime) -> None:
        counter = RateLimitCounter
        with self.engine.begin() as connection:
            connection.execute(
                update(counter)
                .where(
                    counter.key == counter_key(limit, subject, self.secret),
                    counter.window_start == window_start(limit, now),
                    counter.count > 0,
                )
                .values(count=counter.count - 1)
            )

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

    def reserve(self, subjects: Sequence[tuple[Backoff, str]], *, now: dt.datetime) -> tuple[Slot, ...]:
        keys = [counter_key(backoff, subject, self.secret) for backoff, subject in subjects]
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        counter = RateLimitCounter
        counted: dict[int, tuple[int, dt.datetime | None]] = {}
        with self.engine.begin() as connection:
            # Each upsert counts the attempt and keeps the row locked (PostgreSQL; SQLite has one writer at a time)
            # until the lock it earns is written, so no other attempt reads a count between the two. Rows are taken
            # in key order, so two attempts over the same subjects cannot deadlock.
            for index in sorted(range(len(keys)), key=keys.__getitem__):
                backoff = subjects[index][0]
                values = insert(counter).values(
                    key=keys[index], window_start=now, count=1, expires_at=now + backoff.memory
                )
                locked = counter.locked_until > now
                statement = values.on_conflict_do_update(
                    index_elements=[counter.key],
                    set_={
                        # A locked subject's attempt is refused below: it neither counts nor lengthens the memory.
                        # An expired memory starts again at 1.
                        "count": case((locked, counter.count), (counter.expires_at > now, counter.count + 1), else_=1),
                        "expires_at": case((locked, counter.expires_at), else_=values.excluded.expires_at),
                    },
                ).returning(counter.count, counter.locked_until)
                row = connection.execute(statement).one()
                counted[index] = (int(row[0]), _aware(row[1]) if row[1] is not None else None)
            for index, (backoff, _) in enumerate(subjects):
                until = counted[index][1]
                if until is not None and until > now:
                    # Leaving the block rolls back what was counted against the other subjects.
                    raise LockedOutError(backoff, _seconds_until(until, now))
            slots = []
            for index, (backoff, subject) in enumerate(subjects):
                failures = counted[index][0]
                delay = backoff.delay(failures)
                lock = now + delay if delay else None
                if lock is not None:
                    connection.execute(update(counter).where(counter.key == keys[index]).values(locked_until=lock))
                slots.append(Slot(backoff, subject, failures, lock))
        return tuple(slots)

    def release(self, slot: Slot) -> None:
        counter = RateLimitCounter
        lifted = (
            case((counter.locked_until == slot.locked_until, null()), else_=counter.locked_until)
            if slot.locked_until is not None
            else counter.locked_until
        )
        with self.engine.begin() as connection:
            connection.execute(
                update(counter)
                .where(counter.key == counter_key(slot.backoff, slot.subject, self.secret), counter.count > 0)
                .values(count=counter.count - 1, locked_until=lifted)
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
        return _seconds_until(_aware(until), now)

    def purge(self, *, now: dt.datetime) -> int:
        """Drop counters whose window has ended."""
        with self.engine.begin() as connection:
            result = connection.execute(delete(RateLimitCounter).where(RateLimitCounter.expires_at < now))
        return int(result.rowcount)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _seconds_until(until: dt.datetime, now: dt.datetime) -> int:
    # Rounded up, never "retry in 0 seconds" while still locked.
    return max(1, math.ceil((until - now).total_seconds()))


# Lua runs atomically in Redis: no other client's command comes between its reads and writes.
# KEYS: each subject's failure count, then its lock. ARGV: now in milliseconds, then each subject's free failures,
# back-off base and cap (milliseconds) and memory (seconds). Answers {"locked", subject number, lock} when a subject
# is locked (nothing counted), else {"counted", failures, lock or "", …} per subject, locks in seconds as
# locked_for reads them.
_RESERVE = """
local now = tonumber(ARGV[1])
local subjects = #KEYS / 2
for i = 1, subjects do
  local lock = redis.call('GET', KEYS[2 * i])
  if lock and tonumber(lock) * 1000 > now then
    return {'locked', i, lock}
  end
end
local answer = {'counted'}
for i = 1, subjects do
  local free, base = tonumber(ARGV[4 * i - 2]), tonumber(ARGV[4 * i - 1])
  local cap, memory = tonumber(ARGV[4 * i]), tonumber(ARGV[4 * i + 1])
  local failures = redis.call('INCR', KEYS[2 * i - 1])
  redis.call('EXPIRE', KEYS[2 * i - 1], memory)
  local lock = ''
  if failures > free then
    local delay = math.min(cap, base * 2 ^ math.min(failures - free - 1, 20))
    lock = string.format('%.3f', (now + delay) / 1000)
    redis.call('SET', KEYS[2 * i], lock, 'PX', math.max(1, math.ceil(delay)))
  end
  table.insert(answer, failures)
  table.insert(answer, lock)
end
return answer
"""
# KEYS: the failure count and the lock of one subject. ARGV: the lock the attempt earned, or "".
_RELEASE = """
local failures = redis.call('GET', KEYS[1])
if failures and tonumber(failures) > 0 then
  redis.call('DECR', KEYS[1])
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 0
"""
# KEYS: one window's hit count. A window that has ended (its key expired) is not brought back at -1.
_TAKE_BACK = """
local hits = redis.call('GET', KEYS[1])
if hits and tonumber(hits) > 0 then
  redis.call('DECR', KEYS[1])
end
return 0
"""


class RedisRateLimiter:
    """Fixed-window counters in Redis (`IDP_RATELIMIT_STORAGE=redis://…`), for a fleet."""

    def __init__(self, url: str, secret: bytes) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.secret = secret
        self._reserve = self.client.register_script(_RESERVE)
        self._release = self.client.register_script(_RELEASE)
        self._take_back = self.client.register_script(_TAKE_BACK)

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

    def take_back(self, limit: Limit, subject: str, *, now: dt.datetime) -> None:
        self._take_back(keys=[self._key(limit, subject, now)])

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

    def reserve(self, subjects: Sequence[tuple[Backoff, str]], *, now: dt.datetime) -> tuple[Slot, ...]:
        keys: list[str] = []
        arguments: list[str | int] = [_milliseconds(now)]
        for backoff, subject in subjects:
            base = self._backoff_key(backoff, subject)
            keys += [f"{base}:n", f"{base}:until"]
            arguments += [
                backoff.free,
                _milliseconds(backoff.base),
                _milliseconds(backoff.cap),
                math.ceil(backoff.memory.total_seconds()),
            ]
        answer = self._reserve(keys=keys, args=arguments)
        if answer[0] == b"locked":
            backoff = subjects[int(answer[1]) - 1][0]
            raise LockedOutError(backoff, self._wait(float(answer[2]), now))
        slots = []
        for index, (backoff, subject) in enumerate(subjects):
            failures, lock = int(answer[1 + 2 * index]), answer[2 + 2 * index].decode()
            until = dt.datetime.fromtimestamp(float(lock), dt.UTC) if lock else None
            slots.append(Slot(backoff, subject, failures, until))
        return tuple(slots)

    def release(self, slot: Slot) -> None:
        base = self._backoff_key(slot.backoff, slot.subject)
        # The lock as the script wrote it: it is lifted only while it is still the one this attempt earned.
        lock = f"{slot.locked_until.timestamp():.3f}" if slot.locked_until is not None else ""
        self._release(keys=[f"{base}:n", f"{base}:until"], args=[lock])

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
        return self._wait(float(value), now)

    @staticmethod
    def _wait(until: float, now: dt.datetime) -> int:
        remaining = until - now.timestamp()
        return max(1, math.ceil(remaining)) if remaining > 0 else 0


def _milliseconds(value: dt.datetime | dt.timedelta) -> int:
    seconds = value.timestamp() if isinstance(value, dt.datetime) else value.total_seconds()
    return round(seconds * 1000)


def make_rate_limiter(storage: str, engine: Engine, *, secret: str) -> RateLimiter:
    """The limiter IDP_RATELIMIT_STORAGE names: `database` (default) or a `redis://` URL; `secret` keys its keys."""
    key = hashlib.sha256(b"idp rate limits\x00" + secret.encode()).digest()
    if storage.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(storage, key)
    return DatabaseRateLimiter(engine, key)
