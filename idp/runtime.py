"""The runtime: what the composition root (`idp.create_app`) builds once per process (settings, keyring, database,
limiter, carrier service, clock, the OpenID provider's parts), and the one typed way a request reaches it, with the
request's own database session and clock reading."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from idp.authn.attestation import AttestationPolicy
from idp.authn.lockout import RateLimiter
from idp.authn.verification import CarrierSignIn
from idp.keyring import Keyring
from idp.settings import Settings

if TYPE_CHECKING:  # the provider's parts are built from this module's inputs; typing them needs no import cycle
    from idp.oidc.interaction import InteractionPages
    from idp.oidc.logout import DeliveryWorker
    from idp.oidc.published import PublishedDocuments
    from idp.oidc.server import IdpAuthorizationServer

EXTENSION = "idp.runtime"


class Clock(Protocol):
    """Where the time comes from: the system's in the server, a fixed or moving one in tests."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a request may need that outlives it, built once by `create_app`."""

    settings: Settings
    keyring: Keyring
    engine: Engine
    sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]  # without transactions, for requests that only read (`reading_only`)
    limiter: RateLimiter
    carrier: CarrierSignIn
    attestation: AttestationPolicy
    clock: Clock
    schema_revision: str | None
    oidc: IdpAuthorizationServer
    published: PublishedDocuments
    logout: DeliveryWorker
    pages: InteractionPages


def of(app: Flask) -> Runtime:
    """The runtime `create_app` built for `app`."""
    built: Runtime = app.extensions[EXTENSION]
    return built


def current() -> Runtime:
    """The runtime of the app handling the current request (or CLI command inside an app context)."""
    return of(current_app)


def db_session() -> Session:
    """The current request's database session, opened on first use and closed when the request ends; views
    commit it once."""
    if "db_session" not in g:
        runtime = current()
        g.db_session = runtime.read_sessions() if g.get("reading_only") else runtime.sessions()
    opened: Session = g.db_session
    return opened


def reading_only() -> None:
    """Declare that the current request only reads: its session runs each statement on its own, no transaction."""
    g.reading_only = True


def commit_if_used() -> None:
    """Commit the request's session if the request used the database (a token from cached parts may not)."""
    opened: Session | None = g.get("db_session")
    if opened is not None and opened.in_transaction():
        opened.commit()


def request_time() -> dt.datetime:
    """The time of the current request: the clock is read once, so every rule of a request sees the same time."""
    if "now" not in g:
        g.now = current().clock.now()
    moment: dt.datetime = g.now
    return moment


def close_db_session(_exc: BaseException | None) -> None:
    """Teardown: close the request's session if it was opened."""
    opened = g.pop("db_session", None)
    if opened is not None:
        opened.close()
