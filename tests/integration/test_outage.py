"""A database outage: protocol endpoints answer 503 with Retry-After, pages say so in the resident's language,
the log has one line and no traceback, and everything works again once the database is back."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from flask import Flask
from oidc_flow import basic, register
from outage_proxy import OutageProxy
from sqlalchemy.engine import make_url

from idp.oidc.tokens import new_jti
from idp.runtime import of as runtime_of
from idp.settings import Settings


@pytest.fixture
def proxy(fresh_database_url: str) -> Iterator[OutageProxy]:
    if not fresh_database_url.startswith("postgresql"):
        pytest.skip("an outage of a server: SQLite is a file in the same process")
    url = make_url(fresh_database_url)
    proxy = OutageProxy((url.host or "127.0.0.1", url.port or 5432))
    yield proxy
    proxy.close()


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, fresh_database_url: str, proxy: OutageProxy
) -> Flask:
    through_proxy = make_url(fresh_database_url).set(port=proxy.port).render_as_string(hide_password=False)
    # Clients are cached for a second; asked for on every request, the client lookup meets the outage at once.
    app = make_app(replace(settings, database_url=through_proxy, client_cache_interval=0))
    app.config["TESTING"] = True
    return app


def test_endpoints_answer_503_while_the_database_is_down_and_recover(
    app: Flask, proxy: OutageProxy, caplog: pytest.LogCaptureFixture
) -> None:
    service = register(app, redirect_uris=(), grant_types=("client_credentials",), scopes=("profile",))
    browser = app.test_client()
    auth = basic(service.client.id, service.secret or "")
    token = browser.post("/token", data={"grant_type": "client_credentials"}, headers=auth)
    assert token.status_code == 200
    access = token.get_json()["access_token"]
    # A resident's token names a grant, which UserInfo must look up (a service's own token needs no lookup there).
    now = int(time.time())
    resident_claims = {"iss": runtime_of(app).settings.issuer, "aud": service.client.id, "client_id": service.client.id}
    resident_claims |= {"sub": "a-resident", "scope": "openid", "jti": new_jti(uuid.uuid4()), "iat": now}
    resident_token = (
        runtime_of(app).keyring.current().active("ES256").sign(resident_claims | {"exp": now + 600}, typ="at+jwt")
    )

    proxy.cut()
    caplog.clear()
    answers = {
        "/token": browser.post("/token", data={"grant_type": "client_credentials"}, headers=auth),
        "/introspect": browser.post("/introspect", data={"token": access}, headers=auth),
        "/userinfo": browser.get("/userinfo", headers={"Authorization": f"Bearer {resident_token}"}),
        "/revoke": browser.post("/revoke", data={"token": access}, headers=auth),
    }
    browser.set_cookie("idp_sid", "x" * 43)  # a page that must look the session up
    page = browser.get("/account", headers={"Accept-Language": "ko"})
    english = browser.get("/account", headers={"Accept-Language": "en"})

    for path, answer in answers.items():
        assert answer.status_code == 503, (path, answer.get_data(as_text=True))
        assert answer.get_json() == {"error": "temporarily_unavailable"}, path
        assert int(answer.headers["Retry-After"]) > 0, path
        assert answer.headers["Cache-Control"] == "no-store", path
    assert page.status_code == 503
    assert "잠시 후 다시 시도해 주세요" in page.get_data(as_text=True)
    assert english.status_code == 503
    assert "temporarily unavailable" in english.get_data(as_text=True)
    assert int(page.headers["Retry-After"]) > 0
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert any("database unavailable" in r.getMessage() for r in caplog.records)

    proxy.restore()
    again = browser.post("/token", data={"grant_type": "client_credentials"}, headers=auth)
    assert again.status_code == 200, again.get_data(as_text=True)
    assert browser.post("/introspect", data={"token": access}, headers=auth).get_json()["active"] is True
