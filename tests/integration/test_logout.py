"""RP-initiated logout and back-channel logout tokens, delivered over real HTTP with retries from the table.

The tests are about what follows a sign-in, so the resident is signed in directly (the `signed_in` fixture).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode

import pytest
from factories import SignIn
from flask import Flask
from oidc_flow import authorize, csrf_of, decode, exchange, register
from sandbox_agency import SandboxAgency
from sqlalchemy import select
from waiting import wait_until

from idp.models import AuditEvent, LoginSession, LogoutDelivery
from idp.oidc.logout import LOGOUT_EVENT, deliver_due
from idp.runtime import of as runtime_of
from idp.settings import Settings

AFTER_LOGOUT = "https://rp.example.kr/signed-out"


class Receiver:
    """A relying service's back-channel logout endpoint on 127.0.0.1: records tokens and connections, fails on
    demand."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.connections = 0
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                receiver.connections += 1  # one handler per accepted connection, before any request is read
                super().setup()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    self.send_response(503)
                else:
                    receiver.tokens.extend(form.get("logout_token", []))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/backchannel"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 10) -> list[str]:
        wait_until(
            lambda: len(self.tokens) >= count, timeout=timeout, waiting_for=f"{count} logout token(s) at {self.url}"
        )
        return self.tokens

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def signed_in_with_tokens(app: Flask, signed_in: SignIn, **client: object):  # type: ignore[no-untyped-def]
    created = register(app, post_logout_redirect_uris=(AFTER_LOGOUT,), **client)
    browser = app.test_client()
    signed_in(browser)
    tokens = exchange(browser, created, authorize(browser, created.client.id)).get_json()
    return created, browser, tokens


def test_rp_initiated_logout_ends_the_session_and_returns_with_state(app: Flask, signed_in: SignIn) -> None:
    _, browser, tokens = signed_in_with_tokens(app, signed_in)
    query = urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": AFTER_LOGOUT, "state": "s1"})
    response = browser.get(f"/logout?{query}")
    assert response.status_code == 303
    assert response.headers["Location"] == f"{AFTER_LOGOUT}?state=s1"
    assert browser.get("/account").status_code == 303
    with runtime_of(app).sessions() as db:
        assert db.scalars(select(LoginSession.ended_at)).all()[0] is not None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"post_logout_redirect_uri": "https://evil.example/"}, 400),
        ({"post_logout_redirect_uri": AFTER_LOGOUT + "/"}, 400),
        ({"id_token_hint": "forged.token.value"}, 400),
        ({"client_id": "someone-else"}, 400),
    ],
    ids=["unregistered-uri", "near-miss-uri", "forged-hint", "hint-of-another-client"],
)
def test_bad_logout_requests_get_a_page_and_no_redirect(
    app: Flask, signed_in: SignIn, change: dict[str, str], expected: int
) -> None:
    _, browser, tokens = signed_in_with_tokens(app, signed_in)
    query = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": AFTER_LOGOUT, **change}
    response = browser.get("/logout?" + urlencode(query))
    assert response.status_code == expected
    assert "Location" not in response.headers
    assert browser.get("/account").status_code == 200


def test_logout_without_a_hint_asks_first(app: Flask, signed_in: SignIn) -> None:
    _, browser, _ = signed_in_with_tokens(app, signed_in)
    page = browser.get("/logout")
    assert page.status_code == 200
    assert browser.get("/account").status_code == 200

    html = page.get_data(as_text=True)
    # The confirmation goes to the page's own form action (a CSRF-protected page of idp.web).
    action = re.search(r'<form method="post" action="([^"]+)"', html)
    assert action
    done = browser.post(action.group(1), data={"csrf_token": csrf_of(html), "confirm": "yes"})
    assert done.status_code == 200
    assert browser.get("/account").status_code == 303


def test_back_channel_logout_token_reaches_the_client(app: Flask, signed_in: SignIn, receiver: Receiver) -> None:
    created, browser, tokens = signed_in_with_tokens(app, signed_in, backchannel_logout_uri=receiver.url)
    id_token = decode(app, tokens["id_token"]).claims
    browser.get("/logout?" + urlencode({"id_token_hint": tokens["id_token"]}))
    received = receiver.wait(1)
    assert len(received) == 1
    logout = decode(app, received[0])
    assert logout.header["typ"] == "logout+jwt"
    claims = logout.claims
    assert claims["events"] == {LOGOUT_EVENT: {}}
    assert claims["sid"] == id_token["sid"]
    assert claims["sub"] == id_token["sub"]
    assert claims["aud"] == created.client.id
    assert "nonce" not in claims


def test_failed_delivery_is_retried_from_the_table(app: Flask, signed_in: SignIn, receiver: Receiver) -> None:
    receiver.fail_next = 1
    _, browser, tokens = signed_in_with_tokens(app, signed_in, backchannel_logout_uri=receiver.url)
    browser.get("/logout?" + urlencode({"id_token_hint": tokens["id_token"]}))
    factory = runtime_of(app).sessions

    def attempted_once() -> LogoutDelivery | None:
        with factory() as db:
            found = db.scalars(select(LogoutDelivery)).one()
            return found if found.attempts == 1 else None

    # The first attempt runs at once, off the request thread (DeliveryWorker.deliver_now).
    delivery = wait_until(attempted_once, timeout=10, waiting_for="the first delivery attempt to be recorded")
    assert delivery.attempts == 1
    assert delivery.last_error == "HTTP 503"
    assert delivery.delivered_at is None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    assert deliver_due(factory, runtime_of(app).keyring, runtime_of(app).settings, now=later) == 1
    assert len(receiver.wait(1)) == 1
    with factory() as db:
        outcomes = db.scalars(
            select(AuditEvent.result).where(AuditEvent.event == "logout.backchannel").order_by(AuditEvent.id)
        ).all()
    assert outcomes == ["failure", "success"]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_outside_development_a_loopback_uri_is_never_connected_to(app: Flask, receiver: Receiver, scheme: str) -> None:
    # Registered in development (or before the rule), delivered by a production server: refused at connection time.
    created = register(app, backchannel_logout_uri=receiver.url.replace("http:", f"{scheme}:"))
    factory = runtime_of(app).sessions
    now = dt.datetime.now(dt.UTC)
    with factory() as db:
        db.add(LogoutDelivery(client_id=created.client.id, sid="sid-1", sub="sub-1", next_attempt_at=now))
        db.commit()
    production = replace(runtime_of(app).settings, env="production")
    assert deliver_due(factory, runtime_of(app).keyring, production, now=now) == 0
    assert receiver.connections == 0
    with factory() as db:
        delivery = db.scalars(select(LogoutDelivery)).one()
        assert (delivery.attempts, delivery.delivered_at) == (1, None)
        assert delivery.last_error == "DestinationRefusedError"
