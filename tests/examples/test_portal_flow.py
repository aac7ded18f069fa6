"""The sample portal against the real IdP, both served on 127.0.0.1 and registered as `make run` registers it:
the registration is idempotent, a sign-in goes through the code flow, the permit API's RFC 9470 challenge sends the
resident back to /authorize with its acr_values and max_age, and the IdP's back-channel logout ends the session."""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from factories import SignIn
from flask import Flask
from flask.testing import FlaskClient
from oidc_flow import csrf_of
from sandbox_agency import IDP_COMMAND, SandboxAgency
from waiting import wait_until
from werkzeug.serving import BaseWSGIServer, make_server

from examples.portal import PortalSettings, create_app
from examples.portal.registration import CLIENT_NAME, Credentials, _idp, ensure_client
from idp.oidc.clients import find_client
from idp.oidc.logout import logout_token
from idp.runtime import of as runtime_of
from idp.settings import Settings


def serve(target: dict[str, Any]) -> tuple[BaseWSGIServer, str]:
    """A threaded server on a free port for the app later put in `target["app"]` (its URL is needed first)."""
    server = make_server("127.0.0.1", 0, lambda environ, start: target["app"](environ, start), threaded=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Iterator[Flask]:
    served: dict[str, Any] = {}
    server, issuer = serve(served)
    app = make_app(replace(settings, issuer=issuer, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    served["app"] = app
    yield app
    server.shutdown()
    server.server_close()


@pytest.fixture
def cli_env(app: Flask, tmp_path: Path) -> dict[str, str]:
    """What `idp clients` needs to reach the served IdP's database, with the same digest key for secrets."""
    settings = runtime_of(app).settings
    env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    env.update(
        IDP_DATABASE_URL=str(settings.database_url),
        IDP_SECRET_KEY=settings.secret_key,
        IDP_INSTANCE_DIR=str(tmp_path / "cli-instance"),
        IDP_ISSUER=settings.issuer,
    )
    return env


@dataclass
class Served:
    app: Flask
    url: str


@pytest.fixture
def portal(app: Flask, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    served: dict[str, Any] = {}
    server, url = serve(served)
    credentials, _ = ensure_client(
        url, credentials_file=tmp_path / "portal-client.json", idp_command=IDP_COMMAND, env=cli_env
    )
    settings = PortalSettings(
        issuer=runtime_of(app).settings.issuer,
        portal_url=url,
        client_id=credentials.client_id,
        client_secret=credentials.client_secret,
        secret_key=credentials.secret_key,
    )
    served["app"] = portal_app = create_app(settings)
    yield Served(portal_app, url)
    server.shutdown()
    server.server_close()


def test_registration_creates_the_client_once_and_keeps_its_secret_private(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    url, path = "http://127.0.0.1:8001", tmp_path / "instance" / "portal-client.json"
    first, done = ensure_client(url, credentials_file=path, idp_command=IDP_COMMAND, env=cli_env)
    assert done == "created"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, done = ensure_client(url, credentials_file=path, idp_command=IDP_COMMAND, env=cli_env)
    assert (again, done) == (first, "kept")
    path.unlink()
    rotated, done = ensure_client(url, credentials_file=path, idp_command=IDP_COMMAND, env=cli_env)
    assert done == "secret rotated"
    assert rotated.client_id == first.client_id
    assert rotated.client_secret != first.client_secret
    assert Credentials.read(path) == rotated
    clients = _idp(IDP_COMMAND, cli_env, "clients", "show", first.client_id)
    assert clients["client_name"] == CLIENT_NAME
    assert clients["backchannel_logout_uri"] == f"{url}/backchannel-logout"
    assert clients["post_logout_redirect_uris"] == [f"{url}/"]
    assert clients["first_party"] is True
    assert clients["scope"] == "openid profile"
    assert len(_idp(IDP_COMMAND, cli_env, "clients", "list")) == 1


def sign_in_through_portal(resident: FlaskClient, browser: FlaskClient, idp_url: str) -> None:
    """The resident's browser: the portal's /login, the IdP's /authorize (already signed in there), the callback."""
    to_idp = browser.get("/login")
    assert to_idp.status_code == 303
    location = urlsplit(to_idp.headers["Location"])
    assert f"{location.scheme}://{location.netloc}" == idp_url
    back = resident.get(f"{location.path}?{location.query}")
    assert back.status_code == 302, back.headers.get("Location")
    callback = urlsplit(back.headers["Location"])
    done = browser.get(f"{callback.path}?{callback.query}")
    assert done.status_code == 303, done.get_data(as_text=True)[-400:]


def test_permit_api_challenge_sends_the_resident_to_step_up_and_logout_ends_the_session(
    app: Flask, portal: Served, signed_in: SignIn
) -> None:
    issuer = runtime_of(app).settings.issuer
    resident = app.test_client()
    signed_in(resident)
    browser = portal.app.test_client()
    sign_in_through_portal(resident, browser, issuer)
    home = browser.get("/").get_data(as_text=True)
    assert f"<code>{issuer}/acr/aal1</code>" in home
    assert "<code>sms mca</code>" in home
    assert "김경기" in home  # the name, from /userinfo

    form = browser.get("/permits/new").get_data(as_text=True)
    answer = browser.post(
        "/permits/new", data={"csrf_token": csrf_of(form), "address": "수원시 팔달구 효원로 1", "purpose": "house"}
    )
    assert answer.status_code == 303
    step_up = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert (step_up["acr_values"], step_up["max_age"]) == (["phr phrh"], ["300"])
    assert step_up["code_challenge_method"] == ["S256"]
    assert "수원시 팔달구 효원로 1" in browser.get("/permits/new").get_data(as_text=True)  # the draft waits

    # The resident signs out at the IdP: its back-channel logout reaches the portal over HTTP and ends the session.
    sessions = portal.app.extensions["portal"].sessions
    assert len(sessions) == 1
    account = resident.get("/account").get_data(as_text=True)
    assert resident.post("/logout/session", data={"csrf_token": csrf_of(account)}).status_code == 303
    wait_until(lambda: len(sessions) == 0, timeout=10, waiting_for="the back-channel logout to reach the portal")
    assert 'href="/login"' in browser.get("/").get_data(as_text=True)


def test_backchannel_logout_takes_a_logout_token_once_and_never_an_id_token(
    app: Flask, portal: Served, signed_in: SignIn
) -> None:
    resident = app.test_client()
    signed_in(resident)
    browser = portal.app.test_client()
    sign_in_through_portal(resident, browser, runtime_of(app).settings.issuer)
    sessions = portal.app.extensions["portal"].sessions
    ((session_id, data),) = [(key, entry.data) for key, entry in sessions._entries.items()]
    receiver = portal.app.test_client()

    refused = receiver.post("/backchannel-logout", data={"logout_token": data["tokens"]["id_token"]})
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid_request"
    assert sessions.load(session_id) is not None

    runtime = runtime_of(app)
    with runtime.sessions() as db:
        client = find_client(db, portal.app.extensions["portal"].client_id)
        assert client is not None
        delivery = SimpleNamespace(sub=data["user"]["sub"], sid=data["user"]["sid"])
        token = logout_token(
            client,
            delivery,  # type: ignore[arg-type]  # what logout_token reads of a LogoutDelivery
            runtime.keyring.current(),
            runtime.settings,
            dt.datetime.now(dt.UTC),
        )
    assert receiver.post("/backchannel-logout", data={"logout_token": token}).status_code == 200
    assert sessions.load(session_id) is None
    replayed = receiver.post("/backchannel-logout", data={"logout_token": token})
    assert replayed.status_code == 400
    assert replayed.get_json()["error"] == "invalid_request"
