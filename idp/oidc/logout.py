"""Logout: end a login session, and tell every client that took part through back-channel logout tokens
(OpenID Connect Back-Channel Logout 1.0), retried from a table until delivered or given up."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from idp.audit import FAILURE, SUCCESS, record_event
from idp.authn.sessions import end_session
from idp.keyring import Keyring, KeyringStateError, LoadedKeys
from idp.models import Client, LoginSession, LogoutDelivery, SessionClient
from idp.oidc.outbound import allows_local_destinations, outbound_client
from idp.settings import Settings

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"  # Back-Channel Logout §2.4
LOGOUT_TOKEN_TYPE = "logout+jwt"  # noqa: S105  Back-Channel Logout §2.4 (a media type, not a secret)
LOGOUT_TOKEN_TTL = 120
DELIVERY_TIMEOUT = 3.0
MAX_ATTEMPTS = 8
FIRST_RETRY = dt.timedelta(seconds=30)
CLAIM_LEASE = dt.timedelta(seconds=60)
log = logging.getLogger("idp.logout")

Sender = Callable[[str, str], int]


class IdTokenHintInvalidError(Exception):
    """The id_token_hint was not issued by this provider (forged, or from another issuer)."""


def read_id_token_hint(token: str, keys: LoadedKeys, settings: Settings) -> dict[str, Any]:
    """The claims of an ID token this provider signed; expiry is not checked (RP-Initiated Logout §2).

    Raises:
        IdTokenHintInvalidError: not one of our ID tokens.
    """
    if not token or len(token) > 8192 or token.count(".") != 2:
        raise IdTokenHintInvalidError("malformed")
    try:
        decoded = jwt.decode(token, keys.public_keys, registry=keys.verifier)
    except (JoseError, ValueError, TypeError):
        raise IdTokenHintInvalidError("bad signature") from None
    claims = decoded.claims
    if claims.get("iss") != settings.issuer or decoded.header.get("typ") not in (None, "JWT"):
        raise IdTokenHintInvalidError("not our ID token")
    return claims


def end_login_session(db: Session, login: LoginSession, *, now: dt.datetime, client_ip: str | None) -> list[str]:
    """End the session and queue a logout token for each client of it with a back-channel logout URI.

    Returns the ids of the queued deliveries (to attempt at once, after the caller commits).
    """
    end_session(db, login, now=now)
    record_event(db, "signout", result=SUCCESS, resident_id=login.resident_id, client_ip=client_ip)
    rows = db.execute(
        select(SessionClient, Client)
        .join(Client, Client.id == SessionClient.client_id)
        .where(SessionClient.session_id == login.id, Client.backchannel_logout_uri.is_not(None))
    ).all()
    queued = []
    for participation, client in rows:
        delivery = LogoutDelivery(client_id=client.id, sid=login.sid, sub=participation.sub, next_attempt_at=now)
        db.add(delivery)
        db.flush()
        queued.append(str(delivery.id))
    return queued


def logout_token(
    client: Client, delivery: LogoutDelivery, keys: LoadedKeys, settings: Settings, now: dt.datetime
) -> str:
    """A logout token: iss, aud, iat, exp, jti, sub, sid and the event; never a nonce (§2.4)."""
    issued = int(now.timestamp())
    claims = {
        "iss": settings.issuer,
        "aud": client.id,
        "iat": issued,
        "exp": issued + LOGOUT_TOKEN_TTL,
        "jti": secrets.token_urlsafe(16),
        "sub": delivery.sub,
        "sid": delivery.sid,
        "events": {LOGOUT_EVENT: {}},
    }
    return keys.active(client.id_token_signed_response_alg).sign(claims, typ=LOGOUT_TOKEN_TYPE)


def post_logout_token(uri: str, token: str, *, http: httpx.Client) -> int:
    """Deliver over `http` (an `outbound_client`, which refuses local destinations outside development): the status
    code the client answered.

    Raises:
        httpx.HTTPError: no answer, or a destination refused (outbound.DestinationRefusedError).
    """
    response = http.post(uri, data={"logout_token": token}, timeout=DELIVERY_TIMEOUT)
    return response.status_code


def deliver_due(
    factory: sessionmaker[Session],
    keyring: Keyring,
    settings: Settings,
    *,
    now: dt.datetime,
    send: Sender | None = None,
    only: list[str] | None = None,
) -> int:
    """Attempt every due delivery once; each is claimed first so that several processes never send it twice.
    Without `send`, tokens go out through an outbound client following `settings`' rules for destinations.
    Returns how many were delivered."""
    if send is None:
        with outbound_client(allow_local=allows_local_destinations(settings)) as http:
            send = partial(post_logout_token, http=http)
            return deliver_due(factory, keyring, settings, now=now, send=send, only=only)
    delivered = 0
    with factory() as db:
        query = select(LogoutDelivery.id).where(
            LogoutDelivery.delivered_at.is_(None),
            LogoutDelivery.given_up_at.is_(None),
            LogoutDelivery.next_attempt_at <= now,
        )
        ids = [str(value) for value in db.scalars(query.limit(100))]
    for delivery_id in ids:
        if only is not None and delivery_id not in only:
            continue
        if _attempt(factory, keyring, settings, delivery_id, now=now, send=send):
            delivered += 1
    return delivered


def _attempt(
    factory: sessionmaker[Session],
    keyring: Keyring,
    settings: Settings,
    delivery_id: str,
    *,
    now: dt.datetime,
    send: Sender,
) -> bool:
    key = uuid.UUID(delivery_id)
    with factory() as db:
        # Claim: push next_attempt_at forward only if it is still due (compare-and-set).
        claimed = db.execute(
            update(LogoutDelivery)
            .where(
                LogoutDelivery.id == key,
                LogoutDelivery.delivered_at.is_(None),
                LogoutDelivery.given_up_at.is_(None),
                LogoutDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + CLAIM_LEASE)
            .execution_options(synchronize_session=False)
        )
        db.commit()
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
            return False
        delivery = db.get(LogoutDelivery, key)
        client = db.get(Client, delivery.client_id) if delivery else None
        if delivery is None or client is None or not client.backchannel_logout_uri:
            return False
        delivery.attempts += 1
        token_for = partial(logout_token, client, delivery, settings=settings, now=now)
        error = _send_once(client.id, client.backchannel_logout_uri, token_for, keyring, send=send)
        if error is None:
            delivery.delivered_at = now
            record_event(db, "logout.backchannel", result=SUCCESS, client_id=client.id, attempts=delivery.attempts)
        else:
            delivery.last_error = error
            if delivery.attempts >= MAX_ATTEMPTS:
                delivery.given_up_at = now
                record_event(db, "logout.backchannel", result=FAILURE, client_id=client.id, error=error, given_up=True)
                log.warning(
                    "back-channel logout to %s given up after %d attempts: %s", client.id, delivery.attempts, error
                )
            else:
                # Exponential back-off: 30 s, 1 min, 2 min … so a client that is down for a while still hears.
                delivery.next_attempt_at = now + FIRST_RETRY * (2 ** (delivery.attempts - 1))
                record_event(db, "logout.backchannel", result=FAILURE, client_id=client.id, error=error, retry=True)
        db.commit()
        return error is None


def _send_once(
    client_id: str, uri: str, token_for: Callable[[LoadedKeys], str], keyring: Keyring, *, send: Sender
) -> str | None:
    """One attempt: None when the client took the token, else the error to record. Whatever goes wrong (no key left
    for the client's algorithm, no answer, a bug) is a failed attempt of this delivery alone: it is counted, retried
    and in the end given up, and the round goes on to the other clients."""
    try:
        token = token_for(keyring.current())
    except KeyringStateError as exc:
        log.warning("back-channel logout to %s cannot be signed: %s", client_id, exc)
        return "KeyringStateError"
    try:
        status = send(uri, token)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    except Exception as exc:  # a delivery must never stop the round; the traceback goes to the log
        log.exception("back-channel logout to %s failed", client_id)
        return type(exc).__name__
    return None if 200 <= status < 300 else f"HTTP {status}"


class DeliveryWorker:
    """A daemon thread per server process that retries due deliveries every `interval` seconds."""

    def __init__(self, factory: sessionmaker[Session], keyring: Keyring, settings: Settings, interval: float = 15.0):
        self.factory = factory
        self.keyring = keyring
        self.settings = settings
        self.interval = interval
        # One client for every round and every thread (httpx documents its Client as shareable between threads).
        self.send: Sender = partial(
            post_logout_token, http=outbound_client(allow_local=allows_local_destinations(settings))
        )
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._run, name="idp-logout-delivery", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                deliver_due(self.factory, self.keyring, self.settings, now=dt.datetime.now(dt.UTC), send=self.send)
            except Exception:  # a retry loop must outlive a bad round; the next round tries again
                log.exception("back-channel logout round failed")

    def deliver_now(self, ids: list[str]) -> None:
        """Try the given deliveries at once, off the request thread."""
        if not ids:
            return
        threading.Thread(
            target=deliver_due,
            args=(self.factory, self.keyring, self.settings),
            kwargs={"now": dt.datetime.now(dt.UTC), "send": self.send, "only": ids},
            daemon=True,
        ).start()
