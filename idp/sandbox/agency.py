"""The sandbox agency's protocol logic, without HTTP: start, confirm, poll, resend, cancel, and app approvals.

Everything lives in memory behind one lock (the sandbox is one process). Times come from a `Clock` that tests can
advance; the poll interval is timed on the monotonic clock (a busy client must not dodge it when the wall clock
steps) plus the same offset, so that tests advance past it instead of sleeping.
"""

from __future__ import annotations

import enum
import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from idp.sandbox.residents import Carrier, Line, ResidentDirectory, normalize_name
from idp.sandbox.signing import AgencyKeys

AGENCY_NAME = "sandbox"
CODE_DIGITS = 6
CODE_TTL = 180  # seconds a code (or an app approval) lives: the agencies' usual 3 minutes
MAX_WRONG_CODES = 5  # the 5th wrong code locks the transaction
MAX_SENDS_PER_TXN = 5  # the first SMS and four resends
RESEND_COOLDOWN = 30  # seconds between two SMS of one transaction
SENDS_PER_PHONE_PER_DAY = 10  # text messages and app approvals to one number in any 24 hours
STARTS_PER_IP_PER_MINUTE = 10
START_WINDOW = 60
SEND_WINDOW = 86400
POLL_INTERVAL = 1.0  # seconds between two polls of one transaction (monotonic time plus the clock's offset)
RESULT_TTL = 600  # a result's exp - iat: 10 minutes
TXN_RETENTION = 3600  # transactions are forgotten an hour after they start
OUTBOX_LIMIT = 1000  # the outbox keeps the newest messages only, so a long-running sandbox does not grow
# The IdP's name as its pages show it (경기도 통합 로그인). "인증번호는 [code]입니다" needs no particle after the code,
# which would have to follow how its last digit is read (2 이, 5 오: 를; 3 삼, 8 팔: 을).
BRAND = "경기도 통합 로그인"
SMS_TEMPLATE = "[" + BRAND + "] 인증번호는 [{code}]입니다. 타인에게 알려주지 마세요."


class ErrorCode(enum.StrEnum):
    WRONG_CODE = "wrong_code"
    EXPIRED = "expired"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    RATE_LIMITED = "rate_limited"
    IDENTITY_MISMATCH = "identity_mismatch"
    CARRIER_MISMATCH = "carrier_mismatch"
    NOT_ELIGIBLE = "not_eligible"
    USER_DENIED = "user_denied"
    NUMBER_MISMATCH = "number_mismatch"
    INVALID_REQUEST = "invalid_request"
    AGENCY_UNAVAILABLE = "agency_unavailable"
    SLOW_DOWN = "slow_down"


# The HTTP status of each error; invalid_request also answers 401 (authentication) and 404 (unknown transaction).
ERROR_STATUS = {
    ErrorCode.WRONG_CODE: 400,
    ErrorCode.EXPIRED: 410,
    ErrorCode.TOO_MANY_ATTEMPTS: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.IDENTITY_MISMATCH: 400,
    ErrorCode.CARRIER_MISMATCH: 400,
    ErrorCode.NOT_ELIGIBLE: 403,
    ErrorCode.USER_DENIED: 403,
    ErrorCode.NUMBER_MISMATCH: 403,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.AGENCY_UNAVAILABLE: 503,
    ErrorCode.SLOW_DOWN: 429,
}


class AgencyError(Exception):
    """Every refusal of the agency protocol: one error code, an English sentence, and what the caller may retry.

    One class rather than one per outcome, because the only caller (the HTTP layer) renders them all alike and
    the code travels on the wire.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        attempts_remaining: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or ERROR_STATUS[code]
        self.retryable = retryable
        self.attempts_remaining = attempts_remaining
        self.retry_after = retry_after

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.code.value,
            "message": self.message,
            "retryable": self.retryable,
            "attempts_remaining": self.attempts_remaining,
            "retry_after": self.retry_after,
        }


class ApprovalClosedError(LookupError):
    """The virtual phone has no open approval with that id: unknown, answered, cancelled or expired."""


class Method(enum.StrEnum):
    SMS = "sms"
    APP = "app"


class TxnState(enum.StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    CANCELLED = "cancelled"
    DENIED = "denied"  # the resident tapped deny
    MISMATCHED = "mismatched"  # the resident picked another number than the sign-in page shows
    LOCKED = "locked"  # too many wrong codes


class Clock:
    """The sandbox's time: real time plus an offset that tests advance with POST /sandbox/clock."""

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self._base = base
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._base() + self._offset

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def reset(self) -> None:
        with self._lock:
            self._offset = 0.0


@dataclass(frozen=True, slots=True)
class StartRequest:
    """A validated start request (the HTTP layer checks types and formats)."""

    carrier: Carrier
    name: str
    birthdate: str
    rrn_digit7: str
    phone: str
    method: Method
    session_binding: str
    client_ip: str


@dataclass(frozen=True, slots=True)
class Started:
    txn_id: str
    method: Method
    expires_at: float
    resend_after: float
    sends_remaining: int
    attempts_remaining: int
    match_number: str | None


@dataclass(frozen=True, slots=True)
class Resent:
    expires_at: float
    resend_after: float
    sends_remaining: int
    attempts_remaining: int


@dataclass(frozen=True, slots=True)
class Verified:
    result: str


@dataclass(frozen=True, slots=True)
class Pending:
    expires_at: float


@dataclass(frozen=True, slots=True)
class SentMessage:
    phone: str
    text: str
    code: str
    txn_id: str
    sent_at: float


@dataclass(frozen=True, slots=True)
class Approval:
    """An app approval waiting on the virtual phone: the match number hidden among decoys."""

    txn_id: str
    phone: str
    choices: tuple[str, ...]
    created_at: float
    expires_at: float


@dataclass(slots=True)
class _Transaction:
    txn_id: str
    line: Line
    method: Method
    session_binding: str
    created_at: float
    expires_at: float
    state: TxnState = TxnState.PENDING
    code: str = ""
    last_sent_at: float = 0.0
    sends: int = 0
    wrong_codes: int = 0
    match_number: str = ""
    choices: tuple[str, ...] = ()
    result: str = ""
    last_poll: float | None = None

    @property
    def attempts_remaining(self) -> int:
        return MAX_WRONG_CODES - self.wrong_codes

    @property
    def sends_remaining(self) -> int:
        return MAX_SENDS_PER_TXN - self.sends

    @property
    def resend_after(self) -> float:
        return self.last_sent_at + RESEND_COOLDOWN


class Agency:
    """The verification agency: what each protocol call does to the in-memory state, under one lock."""

    def __init__(
        self,
        directory: ResidentDirectory,
        keys: AgencyKeys,
        *,
        issuer: str,
        site_code: str,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.keys = keys
        self.issuer = issuer
        self.site_code = site_code
        self.clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._transactions: dict[str, _Transaction] = {}
        self._outbox: deque[SentMessage] = deque(maxlen=OUTBOX_LIMIT)
        self._starts_by_ip: dict[str, deque[float]] = {}
        self._sends_by_phone: dict[str, deque[float]] = {}

    # -- the protocol --------------------------------------------------------------------------------------------

    def start(self, request: StartRequest) -> Started:
        """Check the resident against the line's holder and send a code or an app approval.

        Raises:
            AgencyError: rate_limited, identity_mismatch, carrier_mismatch or not_eligible.
        """
        now = self.clock.now()
        with self._lock:
            self._forget_old(now)
            # Limits come first and count failed starts too, so probing who holds which line stays slow.
            starts = _window(self._starts_by_ip, request.client_ip, now, START_WINDOW)
            if len(starts) >= STARTS_PER_IP_PER_MINUTE:
                raise _rate_limited(
                    "Too many verifications from this address; wait a minute.", starts, now, START_WINDOW
                )
            # Every push to the phone counts, a text message or an app approval alike (docs/carrier.md).
            self._check_phone_sends(request.phone, now)
            starts.append(now)

            line = self.directory.find_line(request.phone)
            # An agency never says "no such number": an unknown line reads like a wrong name.
            if line is None:
                raise _identity_mismatch()
            # The holder's identity comes first: otherwise anyone who knows a number could learn its carrier or
            # that it is a corporate line without knowing whose it is.
            if (normalize_name(request.name).casefold(), request.birthdate, request.rrn_digit7) != (
                line.name.casefold(),
                line.birthdate,
                line.rrn_digit7,
            ):
                raise _identity_mismatch()
            if line.carrier is not request.carrier:
                raise AgencyError(ErrorCode.CARRIER_MISMATCH, "The phone number is not on the chosen carrier.")
            if not line.eligible:
                raise AgencyError(
                    ErrorCode.NOT_ELIGIBLE, "This line cannot be used for identity verification (corporate line)."
                )
            if request.method is Method.APP and not line.has_app:
                raise AgencyError(
                    ErrorCode.NOT_ELIGIBLE,
                    "The carrier app is not installed for this line; verify by SMS instead.",
                )

            txn = _Transaction(
                txn_id=secrets.token_urlsafe(24),
                line=line,
                method=request.method,
                session_binding=request.session_binding,
                created_at=now,
                expires_at=now + CODE_TTL,
            )
            self._transactions[txn.txn_id] = txn
            if txn.method is Method.SMS:
                self._send_code(txn, now)
                return Started(
                    txn.txn_id,
                    txn.method,
                    txn.expires_at,
                    txn.resend_after,
                    txn.sends_remaining,
                    txn.attempts_remaining,
                    None,
                )
            txn.match_number, txn.choices = _match_numbers()
            _window(self._sends_by_phone, line.phone, now, SEND_WINDOW).append(now)
            # An app approval cannot be resent and allows one answer: the fields keep their types for the client.
            return Started(txn.txn_id, txn.method, txn.expires_at, txn.expires_at, 0, 1, txn.match_number)

    def confirm(self, txn_id: str, code: str) -> Verified:
        """Check an SMS code; the signed result when it is right.

        Raises:
            AgencyError: invalid_request (unknown, app, finished), too_many_attempts, expired or wrong_code.
        """
        now = self.clock.now()
        with self._lock:
            txn = self._transaction(txn_id)
            if txn.method is not Method.SMS:
                raise _invalid("This verification is approved in the carrier app; poll it instead.")
            self._check_open(txn)
            if now >= txn.expires_at:
                raise self._expired(txn)
            if not hmac.compare_digest(code.encode(), txn.code.encode()):
                txn.wrong_codes += 1
                if txn.attempts_remaining <= 0:
                    txn.state = TxnState.LOCKED
                    raise _too_many_attempts()
                raise AgencyError(
                    ErrorCode.WRONG_CODE,
                    "The code is wrong.",
                    retryable=True,
                    attempts_remaining=txn.attempts_remaining,
                )
            txn.state = TxnState.VERIFIED
            txn.result = self._sign_result(txn, now)
            return Verified(txn.result)

    def poll(self, txn_id: str) -> Verified | Pending:
        """The state of an app approval: pending, or verified with the signed result.

        Raises:
            AgencyError: invalid_request (unknown, SMS, cancelled), slow_down, user_denied or expired.
        """
        now = self.clock.now()
        polled_at = self._monotonic() + self.clock.offset
        with self._lock:
            txn = self._transaction(txn_id)
            if txn.method is not Method.APP:
                raise _invalid("This verification uses an SMS code; confirm the code instead of polling.")
            # Only answered polls restart the interval, so a client polling a little too fast still progresses.
            # A clock put back (POST /sandbox/clock reset) must not hold a transaction back by the offset it lost.
            if txn.last_poll is not None and 0 <= polled_at - txn.last_poll < POLL_INTERVAL:
                raise AgencyError(
                    ErrorCode.SLOW_DOWN,
                    "Polling too fast; wait at least one second between polls.",
                    retryable=True,
                    retry_after=math.ceil(POLL_INTERVAL),
                )
            txn.last_poll = polled_at
            if txn.state is TxnState.VERIFIED:
                return Verified(txn.result)
            self._check_open(txn)
            if now >= txn.expires_at:
                raise self._expired(txn)
            return Pending(txn.expires_at)

    def resend(self, txn_id: str) -> Resent:
        """Send a new code with a new expiry; wrong attempts are not restored.

        Raises:
            AgencyError: invalid_request (unknown, app, finished), too_many_attempts or rate_limited.
        """
        now = self.clock.now()
        with self._lock:
            txn = self._transaction(txn_id)
            if txn.method is not Method.SMS:
                raise _invalid("An app approval cannot be resent; start a new verification.")
            self._check_open(txn)
            if txn.sends_remaining <= 0:
                raise AgencyError(
                    ErrorCode.RATE_LIMITED,
                    f"This verification has used its {MAX_SENDS_PER_TXN} codes; start a new verification.",
                )
            if now < txn.resend_after:
                raise AgencyError(
                    ErrorCode.RATE_LIMITED,
                    f"Wait {RESEND_COOLDOWN} seconds between two codes.",
                    retryable=True,
                    retry_after=max(1, math.ceil(txn.resend_after - now)),
                )
            self._check_phone_sends(txn.line.phone, now)
            self._send_code(txn, now)
            return Resent(txn.expires_at, txn.resend_after, txn.sends_remaining, txn.attempts_remaining)

    def cancel(self, txn_id: str) -> None:
        """End a transaction (idempotent); its code or approval no longer works.

        Raises:
            AgencyError: invalid_request (unknown, or already verified).
        """
        with self._lock:
            txn = self._transaction(txn_id)
            if txn.state is TxnState.VERIFIED:
                raise _invalid("This verification is already complete.")
            txn.state = TxnState.CANCELLED

    # -- the virtual phone ---------------------------------------------------------------------------------------

    def answer_approval(self, phone: str, txn_id: str, *, number: str | None) -> TxnState:
        """The resident picks `number` (None: taps deny) on the phone; the state that left the transaction in
        (verified, denied or mismatched).

        Raises:
            ApprovalClosedError: no open approval `txn_id` on this phone.
        """
        now = self.clock.now()
        with self._lock:
            txn = self._transactions.get(txn_id)
            if (
                txn is None
                or txn.method is not Method.APP
                or txn.line.phone != phone
                or txn.state is not TxnState.PENDING
                or now >= txn.expires_at
            ):
                raise ApprovalClosedError(txn_id)
            if number is not None and hmac.compare_digest(number.encode(), txn.match_number.encode()):
                txn.state = TxnState.VERIFIED
                txn.result = self._sign_result(txn, now)
                return txn.state
            # A wrong number ends the transaction like a denial: number matching exists to stop a resident
            # approving a sign-in someone else started, so guessing again is not allowed. It keeps its own code,
            # so that the sign-in page does not tell a resident who tried to approve that they declined.
            txn.state = TxnState.DENIED if number is None else TxnState.MISMATCHED
            return txn.state

    def approvals(self, phone: str) -> list[Approval]:
        """The open app approvals on this phone, newest first."""
        now = self.clock.now()
        with self._lock:
            open_txns = [
                txn
                for txn in self._transactions.values()
                if txn.method is Method.APP
                and txn.line.phone == phone
                and txn.state is TxnState.PENDING
                and now < txn.expires_at
            ]
        return [
            Approval(txn.txn_id, phone, txn.choices, txn.created_at, txn.expires_at)
            for txn in sorted(open_txns, key=lambda txn: txn.created_at, reverse=True)
        ]

    def outbox(self, phone: str | None = None) -> list[SentMessage]:
        """The SMS messages sent, oldest first; only those to `phone` (E.164) when given."""
        with self._lock:
            return [message for message in self._outbox if phone is None or message.phone == phone]

    def reset(self) -> None:
        """Forget transactions, the outbox and every limit (residents and CI versions stay)."""
        with self._lock:
            self._transactions.clear()
            self._outbox.clear()
            self._starts_by_ip.clear()
            self._sends_by_phone.clear()

    # -- inside the lock -----------------------------------------------------------------------------------------

    def _transaction(self, txn_id: str) -> _Transaction:
        txn = self._transactions.get(txn_id)
        if txn is None:
            raise _invalid("No verification has this id.", status=404)
        return txn

    def _check_open(self, txn: _Transaction) -> None:
        if txn.state is TxnState.LOCKED:
            raise _too_many_attempts()
        if txn.state is TxnState.DENIED:
            raise AgencyError(ErrorCode.USER_DENIED, "The resident declined the request in the carrier app.")
        if txn.state is TxnState.MISMATCHED:
            raise AgencyError(
                ErrorCode.NUMBER_MISMATCH,
                "The resident picked another number than the one shown at the site; start a new verification.",
            )
        if txn.state is TxnState.VERIFIED:
            raise _invalid("This verification is already complete.")
        if txn.state is TxnState.CANCELLED:
            raise _invalid("This verification was cancelled.")

    def _expired(self, txn: _Transaction) -> AgencyError:
        if txn.method is Method.SMS:
            # Resending gives a new code, so an expired SMS verification can go on while sends remain.
            return AgencyError(
                ErrorCode.EXPIRED,
                "The code has expired; ask for a new one.",
                retryable=txn.sends_remaining > 0,
            )
        return AgencyError(ErrorCode.EXPIRED, "The approval request has expired; start a new verification.")

    def _check_phone_sends(self, phone: str, now: float) -> None:
        sends = _window(self._sends_by_phone, phone, now, SEND_WINDOW)
        if len(sends) >= SENDS_PER_PHONE_PER_DAY:
            raise _rate_limited("Too many codes were sent to this number today.", sends, now, SEND_WINDOW)

    def _send_code(self, txn: _Transaction, now: float) -> None:
        txn.code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        txn.last_sent_at = now
        txn.expires_at = now + CODE_TTL
        txn.sends += 1
        _window(self._sends_by_phone, txn.line.phone, now, SEND_WINDOW).append(now)
        text = SMS_TEMPLATE.format(code=txn.code)
        self._outbox.append(SentMessage(txn.line.phone, text, txn.code, txn.txn_id, now))

    def _sign_result(self, txn: _Transaction, now: float) -> str:
        line = txn.line
        version = self.directory.ci_version(line.person_id)
        issued_at = int(now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.site_code,
            "jti": secrets.token_urlsafe(16),
            "iat": issued_at,
            "exp": issued_at + RESULT_TTL,
            "txn": txn.txn_id,
            "session_binding": txn.session_binding,
            "ci": self.keys.ci(line.person_id, version),
        }
        if version > 1:
            claims["ci_previous"] = self.keys.ci(line.person_id, version - 1)
        claims.update(
            di=self.keys.di(self.site_code, line.person_id),
            name=line.name,
            birthdate=line.birthdate,
            sex=line.sex,
            nationality=line.nationality,
            phone=line.phone,
            carrier=line.carrier.value,
            method=txn.method.value,
            agency=AGENCY_NAME,
            verified_at=issued_at,
        )
        return self.keys.sign(claims)

    def _forget_old(self, now: float) -> None:
        for txn_id in [t.txn_id for t in self._transactions.values() if now - t.created_at > TXN_RETENTION]:
            del self._transactions[txn_id]
        for windows, width in ((self._starts_by_ip, START_WINDOW), (self._sends_by_phone, SEND_WINDOW)):
            for key in [key for key, times in windows.items() if not times or times[-1] <= now - width]:
                del windows[key]


def _window(windows: dict[str, deque[float]], key: str, now: float, width: int) -> deque[float]:
    """The times within the last `width` seconds for `key` (a sliding window), older ones dropped."""
    times = windows.setdefault(key, deque())
    while times and times[0] <= now - width:
        times.popleft()
    return times


def _match_numbers() -> tuple[str, tuple[str, ...]]:
    """A two-digit match number and the three choices the phone shows: it and two decoys, shuffled."""
    picks: list[int] = []
    while len(picks) < 3:
        number = 10 + secrets.randbelow(90)  # 10-99, so no choice starts with a 0 that reads as missing
        if number not in picks:
            picks.append(number)
    choices = [f"{number:02d}" for number in picks]
    match = choices[0]
    secrets.SystemRandom().shuffle(choices)
    return match, tuple(choices)


def _invalid(message: str, *, status: int = 400) -> AgencyError:
    return AgencyError(ErrorCode.INVALID_REQUEST, message, status=status)


def _identity_mismatch() -> AgencyError:
    return AgencyError(
        ErrorCode.IDENTITY_MISMATCH,
        "The name, birth date, registration digit or phone number does not match the carrier's records.",
    )


def _too_many_attempts() -> AgencyError:
    return AgencyError(
        ErrorCode.TOO_MANY_ATTEMPTS,
        f"{MAX_WRONG_CODES} wrong codes: this verification is locked; start a new one.",
        attempts_remaining=0,
    )


def _rate_limited(message: str, times: deque[float], now: float, width: int) -> AgencyError:
    return AgencyError(
        ErrorCode.RATE_LIMITED,
        message,
        retryable=True,
        retry_after=max(1, math.ceil(times[0] + width - now)),
    )
