"""Always back to the service: the pages of a sign-in name the service that asked, the language switch keeps the
request, errors say where to turn, and the help-desk line is on the pages where residents get stuck."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from oidc_flow import KIM, KIM_E164, REDIRECT, REQUEST_ID, csrf_of, pkce, register
from sandbox_agency import SandboxAgency
from sqlalchemy import Connection, event
from werkzeug.test import TestResponse

from idp.runtime import of as runtime_of
from idp.settings import Settings

PORTAL = "경기 민원포털"
LANGUAGE_LINK = re.compile(r'<a href="([^"]+)"[^>]*hreflang="(en|ko)"')


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(
        replace(
            settings,
            carrier_agency_url=sandbox.url,
            database_url=fresh_database_url,
            help_phone="02-120-3456",
            help_hours="daily 08:00-22:00",
        )
    )
    app.config["TESTING"] = True
    return app


def browser_in(app: Flask, language: str = "ko") -> FlaskClient:
    browser = app.test_client()
    browser.environ_base["HTTP_ACCEPT_LANGUAGE"] = language
    return browser


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def authorize_query(client_id: str, *, scope: str = "openid profile phone", **extra: str) -> str:
    _, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "s1",
        "nonce": "n1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return "/authorize?" + urlencode(query)


def to_login(browser: FlaskClient, client_id: str, **extra: str) -> str:
    """/authorize of a browser without a session: the sign-in page it is sent to."""
    sent = browser.get(authorize_query(client_id, **extra))
    assert sent.status_code == 303, text(sent)[-500:]
    assert urlsplit(sent.headers["Location"]).path == "/login"
    return sent.headers["Location"]


def carrier_sign_in(browser: FlaskClient, sandbox: SandboxAgency) -> TestResponse:
    token = csrf_of(text(browser.get("/login/carrier")))
    started = browser.post("/login/carrier", data={"csrf_token": token, "method": "sms", "consent": "y", **KIM})
    assert started.status_code == 303, text(started)[-500:]
    token = csrf_of(text(browser.get("/login/carrier/verify")))
    done = browser.post(
        "/login/carrier/verify", data={"csrf_token": token, "action": "confirm", "code": sandbox.last_code(KIM_E164)}
    )
    assert done.status_code == 303, text(done)[-500:]
    return done


def follow(browser: FlaskClient, location: str, *, limit: int = 6) -> TestResponse:
    """Follow the IdP's own redirects; stop at a page or at a redirect to the service."""
    response = browser.get(location)
    for _ in range(limit):
        target = response.headers.get("Location", "")
        if response.status_code not in (302, 303) or target.startswith(REDIRECT):
            return response
        response = browser.get(target)
    raise AssertionError("too many redirects")


def language_link(page: str, language: str) -> str:
    links = {lang: html.unescape(href) for href, lang in LANGUAGE_LINK.findall(page)}
    assert language in links, page[:1500]
    return links[language]


# -- the service named on each page ---------------------------------------------------------------------------------


def test_login_page_names_the_service_that_asked(app: Flask) -> None:
    created = register(app, name=PORTAL)
    korean = browser_in(app, "ko")
    assert f"{PORTAL}에 로그인합니다" in text(korean.get(to_login(korean, created.client.id)))
    english = browser_in(app, "en")
    assert f"Sign in to {PORTAL}" in text(english.get(to_login(english, created.client.id)))


def test_a_service_name_is_escaped_in_the_sentences_that_name_it(app: Flask) -> None:
    # The pages' gettext puts the name into the translated sentence: markup in it is text, in either language.
    created = register(app, name='<b onclick="x()">포털</b>')
    escaped = "&lt;b onclick=&#34;x()&#34;&gt;포털&lt;/b&gt;"
    for language, sentence in (("ko", f"{escaped}에 로그인합니다"), ("en", f"Sign in to {escaped}")):
        browser = browser_in(app, language)
        page = text(browser.get(to_login(browser, created.client.id)))
        assert sentence in page
        assert "<b onclick" not in page


def test_the_sign_in_pages_read_the_service_without_a_transaction(app: Flask) -> None:
    # On PostgreSQL a page that only reads runs each statement on its own: no BEGIN and ROLLBACK around them.
    if runtime_of(app).engine.dialect.name != "postgresql":
        pytest.skip("SQLite reads cost no transaction of their own")
    created = register(app, name=PORTAL)
    browser = browser_in(app)
    login = to_login(browser, created.client.id)
    isolation: list[object] = []

    def statement(connection: Connection, *_: object) -> None:
        isolation.append(connection.get_execution_options().get("isolation_level"))

    event.listen(runtime_of(app).engine, "before_cursor_execute", statement)
    try:
        for path in (login, "/login/carrier", "/login/totp"):
            runtime_of(app).oidc.clients.clear()  # the service's name is read from the database again
            page = browser.get(path)
            assert page.status_code == 200
            assert PORTAL in text(page)
    finally:
        event.remove(runtime_of(app).engine, "before_cursor_execute", statement)
    assert isolation
    assert set(isolation) == {"AUTOCOMMIT"}


def test_carrier_pages_name_the_service_that_asked(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app, name=PORTAL)
    browser = browser_in(app)
    browser.get(to_login(browser, created.client.id))
    assert f"{PORTAL}에 로그인합니다" in text(browser.get("/login/carrier"))
    token = csrf_of(text(browser.get("/login/carrier")))
    started = browser.post("/login/carrier", data={"csrf_token": token, "method": "sms", "consent": "y", **KIM})
    assert started.status_code == 303
    assert f"{PORTAL}에 로그인합니다" in text(browser.get("/login/carrier/verify"))


def test_no_service_is_named_for_a_request_that_never_reached_authorize(app: Flask) -> None:
    created = register(app, name=PORTAL)
    browser = browser_in(app)
    # A link made to look like a service's request: nothing waits for it in this browser.
    crafted = authorize_query(created.client.id)
    page = text(browser.get("/login", query_string={"next": crafted}))
    assert PORTAL not in page
    assert PORTAL not in text(browser.get("/login/carrier"))
    assert PORTAL not in text(browser_in(app).get("/login"))


def test_welcome_page_names_the_service_and_continues_to_its_request(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app, name=PORTAL)
    browser = browser_in(app)
    login = to_login(browser, created.client.id)
    waiting = parse_qs(urlsplit(login).query)["next"][0]
    browser.get(login)
    assert carrier_sign_in(browser, sandbox).headers["Location"] == "/login/welcome"
    page = text(browser.get("/login/welcome"))
    assert f"{PORTAL}에서 계속하기" in page
    assert f'href="{html.escape(waiting)}"' in page
    # The passkey is added right on this page, and the browser then goes on to the same request.
    assert 'id="passkey-register"' in page
    assert f'data-next="{html.escape(waiting)}"' in page


# -- the consent page -----------------------------------------------------------------------------------------------


def test_consent_page_says_what_each_item_is_for_how_long_and_what_refusing_means(
    app: Flask, sandbox: SandboxAgency
) -> None:
    created = register(app, name=PORTAL)
    browser = browser_in(app)
    carrier_sign_in(browser, sandbox)
    page = text(browser.get(authorize_query(created.client.id, scope="openid profile phone")))
    assert REQUEST_ID.search(page), page[-500:]
    for sentence in (
        f"{PORTAL}에 제공하는 정보",
        "제공받는 곳",
        "이용 목적",
        "보유 및 이용 기간",
        "동의를 거부할 권리가 있습니다",
        "본인 확인",  # the purpose of the name and birth date
        "연락",  # the purpose of the phone number
    ):
        assert sentence in page, sentence

    english = browser_in(app, "en")
    carrier_sign_in(english, sandbox)
    page = text(english.get(authorize_query(created.client.id, scope="openid profile phone")))
    for sentence in (
        f"What {PORTAL} receives",
        "Purpose",
        "How long it may keep it",
        "You may refuse.",
        f"you go back to {PORTAL} without signing in",
    ):
        assert sentence in page, sentence


# -- the language switch keeps the request ---------------------------------------------------------------------------


def test_language_switch_on_the_consent_page_keeps_the_request(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app, name=PORTAL)
    browser = browser_in(app)
    carrier_sign_in(browser, sandbox)
    korean = text(browser.get(authorize_query(created.client.id)))
    assert REQUEST_ID.search(korean), korean[-500:]

    switched = follow(browser, language_link(korean, "en"))

    assert switched.status_code == 200, text(switched)[-800:]
    english = text(switched)
    assert '<html lang="en">' in english
    request_id = REQUEST_ID.search(english)
    assert request_id, english[-800:]
    answered = browser.post(
        "/consent", data={"csrf_token": csrf_of(english), "request_id": request_id.group(1), "decision": "allow"}
    )
    back = follow(browser, answered.headers["Location"])
    assert back.status_code == 302
    assert parse_qs(urlsplit(back.headers["Location"]).query)["code"]


def test_language_chosen_on_the_login_page_outlasts_the_services_ui_locales(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app, name=PORTAL)
    browser = browser_in(app, "ko")
    login = to_login(browser, created.client.id, ui_locales="ko")
    korean = text(browser.get(login))
    assert '<html lang="ko">' in korean

    switched = follow(browser, language_link(korean, "en"))

    assert switched.status_code == 200
    assert f"Sign in to {PORTAL}" in text(switched)
    assert "Mobile phone verification" in text(browser.get("/login/carrier"))
    done = carrier_sign_in(browser, sandbox)
    welcome = text(browser.get(done.headers["Location"]))
    assert f"Continue to {PORTAL}" in welcome
    consent = follow(browser, html.unescape(re.search(r'id="continue" href="([^"]+)"', welcome).group(1)))  # type: ignore[union-attr]
    assert '<html lang="en">' in text(consent), text(consent)[-500:]
    assert REQUEST_ID.search(text(consent))


def test_language_link_writes_nothing_the_resident_typed_into_the_page(app: Flask, sandbox: SandboxAgency) -> None:
    browser = browser_in(app)
    page = text(browser.get("/login/totp?kind=recovery&phone=01012345678&code=123456"))
    link = language_link(page, "en")
    assert "kind%3Drecovery" in link
    assert "01012345678" not in link
    assert "123456" not in link
    # A consent page answering a POSTed request links back to it by name, not with its parameters.
    created = register(app, name=PORTAL)
    carrier_sign_in(browser, sandbox)
    form = parse_qs(urlsplit(authorize_query(created.client.id, login_hint="01099998888")).query)
    consent = browser.post("/authorize", data={key: values[0] for key, values in form.items()})
    assert REQUEST_ID.search(text(consent)), text(consent)[-500:]
    link = language_link(text(consent), "en")
    assert "01099998888" not in link
    assert "code_challenge" not in link
    switched = follow(browser, link)
    assert switched.status_code == 200
    assert REQUEST_ID.search(text(switched))
    assert '<html lang="en">' in text(switched)


@pytest.mark.parametrize("back", ["//evil.example/x", "https://evil.example/", "/\t/evil.example", ""])
def test_language_switch_goes_back_only_within_the_idp(app: Flask, back: str) -> None:
    switched = browser_in(app).get("/language", query_string={"to": "en", "back": back})
    assert switched.status_code == 303
    assert switched.headers["Location"] == "/login"


def test_language_switch_ignores_languages_the_pages_do_not_speak(app: Flask) -> None:
    browser = browser_in(app, "ko")
    assert browser.get("/language", query_string={"to": "fr", "back": "/login"}).status_code == 303
    assert '<html lang="ko">' in text(browser.get("/login"))


# -- errors that cannot go back to the service -----------------------------------------------------------------------


def test_unregistered_redirect_uri_names_the_service_and_whom_to_contact(app: Flask) -> None:
    created = register(app, name=PORTAL)
    query = authorize_query(created.client.id).replace(
        urlencode({"redirect_uri": REDIRECT}), urlencode({"redirect_uri": "https://evil.example/cb"})
    )
    page = browser_in(app, "en").get(query)
    assert page.status_code == 400
    body = text(page)
    assert f"Go back to {PORTAL}" in body
    assert f"contact {PORTAL}" in body
    assert "02-120-3456" in body
    assert "Go to the sign-in page" not in body  # signing in here would not take the resident back to the service


def test_unknown_client_says_to_go_back_to_the_service_the_resident_came_from(app: Flask) -> None:
    page = browser_in(app, "ko").get(authorize_query("no-such-client"))
    assert page.status_code == 400
    body = text(page)
    assert "이용하던 서비스로 돌아가" in body
    assert "서비스 운영 기관에 문의" in body
    assert "02-120-3456" in body


# -- the help-desk line and pages that say what to do ----------------------------------------------------------------


def test_error_pages_show_the_help_desk_line(app: Flask) -> None:
    korean = text(browser_in(app, "ko").get("/no-such-page", headers={"Accept": "text/html"}))
    assert 'href="tel:02-120-3456"' in korean
    assert "매일 08:00~22:00" in korean
    english = text(browser_in(app, "en").get("/no-such-page", headers={"Accept": "text/html"}))
    assert "every day, 08:00–22:00 (Korea time)" in english


def test_help_desk_line_is_on_the_recovery_code_page(app: Flask) -> None:
    assert 'href="tel:02-120-3456"' in text(browser_in(app).get("/login/totp?kind=recovery"))


def test_totp_lockout_page_says_what_to_do(app: Flask) -> None:
    browser = browser_in(app, "en")
    answers = []
    for _ in range(7):
        token = csrf_of(text(browser.get("/login/totp")))
        answers.append(
            browser.post("/login/totp", data={"csrf_token": token, "phone": "010-9999-0000", "code": "000000"})
        )
    locked = answers[-1]
    assert locked.status_code == 429, text(locked)[-500:]
    page = text(locked)
    assert "Please wait before you try again" in page
    assert 'href="/login/carrier"' in page  # another way in, right now
    assert "02-120-3456" in page
    assert "Error code: 429" not in page


def test_expired_form_page_says_to_fill_it_in_again(app: Flask) -> None:
    browser = browser_in(app, "en")
    expired = browser.post("/login/carrier", data={"method": "sms", **KIM})
    assert expired.status_code == 400
    page = text(expired)
    assert "This page has expired" in page
    assert re.search(r'<a class="button primary" href="/login/carrier">Fill in the form again</a>', page), page
    assert "Error code" not in page
    assert "02-120-3456" in page


def test_expired_consent_form_leads_back_to_the_waiting_service(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app, name=PORTAL)
    browser = browser_in(app, "en")
    login = to_login(browser, created.client.id)
    browser.get(login)
    carrier_sign_in(browser, sandbox)
    expired = browser.post("/consent", data={"request_id": "x", "decision": "allow"})
    assert expired.status_code == 400
    assert f"Continue signing in to {PORTAL}" in text(expired)
