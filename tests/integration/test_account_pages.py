"""The account pages in human terms: Korea time, device names, what each service may read, failed sign-in attempts,
the authenticator app's set-up on a phone, and destructive actions that ask once and then say what happened."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from factories import SignIn, make_client
from flask import Flask
from flask.testing import FlaskClient
from oidc_flow import csrf_of
from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.audit import FAILURE, record_event
from idp.authn.assurance import AuthEvent, Method
from idp.authn.sessions import start_session
from idp.models import AuditEvent, Consent, LoginSession, Passkey, Resident, TotpDevice
from idp.runtime import of as runtime_of
from idp.settings import Settings

CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1"
)
# 06:05 UTC is 15:05 (오후 3:05) in Korea.
VERIFIED_AT = dt.datetime(2025, 3, 14, 6, 5, tzinfo=dt.UTC)
STATUS = re.compile(r'<p class="notice" role="status">(.*?)</p>', re.S)


@pytest.fixture
def settings(settings: Settings, module_database_url: str) -> Settings:
    """A database of this module's own: its sign-ins commit, and on SQLite the app fixture's savepoint is the
    outermost transaction, so what they commit stays and other modules' tests that count rows would see it."""
    return dataclasses.replace(settings, database_url=module_database_url)


def db_of(app: Flask) -> Session:
    return runtime_of(app).sessions()


def resident_of(app: Flask, resident_id: uuid.UUID) -> Resident:
    with db_of(app) as db:
        resident = db.get(Resident, resident_id)
        assert resident is not None
        db.expunge(resident)
        return resident


def add_session(app: Flask, resident_id: uuid.UUID, user_agent: str, *, at: dt.datetime) -> LoginSession:
    with db_of(app) as db:
        resident = db.get(Resident, resident_id)
        assert resident is not None
        event = AuthEvent.of(Method.PASSKEY, issuer="http://localhost:8000", at=at)
        started = start_session(db, resident, event, client_ip="203.0.113.9", user_agent=user_agent, now=at)
        db.commit()
        return started.session


def add_passkey(app: Flask, resident_id: uuid.UUID, name: str) -> uuid.UUID:
    with db_of(app) as db:
        passkey = Passkey(
            id=uuid.uuid4(),
            resident_id=resident_id,
            credential_id=uuid.uuid4().bytes,
            public_key=b"key",
            aaguid="00000000-0000-0000-0000-000000000000",
            name=name,
        )
        db.add(passkey)
        db.commit()
        return passkey.id


def passkey_names(app: Flask, resident_id: uuid.UUID) -> list[str]:
    with db_of(app) as db:
        return sorted(db.scalars(select(Passkey.name).where(Passkey.resident_id == resident_id)))


def add_authenticator_app(app: Flask, resident_id: uuid.UUID) -> None:
    with db_of(app) as db:
        db.add(
            TotpDevice(resident_id=resident_id, secret_encrypted=b"not read here", confirmed_at=dt.datetime.now(dt.UTC))
        )
        db.commit()


def has_authenticator_app(app: Flask, resident_id: uuid.UUID) -> bool:
    with db_of(app) as db:
        return db.scalar(select(TotpDevice).where(TotpDevice.resident_id == resident_id)) is not None


def text(response: object) -> str:
    return response.get_data(as_text=True)  # type: ignore[attr-defined, no-any-return]


def meta_csrf(page: str) -> str:
    """The page's CSRF token from its <meta name="csrf-token"> (pages whose actions are links have no form)."""
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert match, page[:400]
    return match.group(1)


def visible(page: str) -> str:
    """The page's text as read: tags dropped, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def status_of(page: str) -> list[str]:
    return [" ".join(message.split()) for message in STATUS.findall(page)]


# -- times, devices, services and attempts in human terms ---------------------------------------------------------


def test_account_page_shows_times_in_korea_time(client: FlaskClient, signed_in: SignIn) -> None:
    signed_in(client, verified_at=VERIFIED_AT)

    korean = text(client.get("/account"))
    english = text(client.get("/account?ui_locales=en"))

    assert "2025년 3월 14일 오후 3:05" in korean
    assert "14 March 2025, 3:05 PM (Korea time)" in english
    assert "UTC" not in korean
    assert "UTC" not in english


def test_sessions_are_named_by_browser_and_system_not_by_user_agent(
    app: Flask, client: FlaskClient, signed_in: SignIn
) -> None:
    started = signed_in(client)
    add_session(app, started.session.resident_id, CHROME_ANDROID, at=dt.datetime.now(dt.UTC))
    add_session(app, started.session.resident_id, SAFARI_IPHONE, at=dt.datetime.now(dt.UTC))

    korean = text(client.get("/account"))
    english = text(client.get("/account?ui_locales=en"))

    assert "Android의 Chrome" in korean
    assert "iPhone의 Safari" in korean
    assert "Chrome on Android" in english
    assert "Mozilla/5.0" not in korean
    assert "pytest" not in korean  # the signed-in test client's own string names no browser
    assert "알 수 없는 브라우저 (지금 이 브라우저)" in visible(korean)


def test_failed_sign_in_attempts_are_in_the_history_with_a_was_that_me_hint(
    app: Flask, client: FlaskClient, signed_in: SignIn
) -> None:
    started = signed_in(client)
    resident_id = started.session.resident_id
    with db_of(app) as db:
        record_event(
            db,
            "totp.verify",
            result=FAILURE,
            resident_id=resident_id,
            client_ip="198.51.100.23",
            now=VERIFIED_AT,
            reason="wrong_code",
        )
        # Someone else's failure is not this resident's business.
        record_event(db, "totp.verify", result=FAILURE, resident_id=uuid.uuid4(), now=VERIFIED_AT, reason="wrong_code")
        db.commit()

    page = visible(text(client.get("/account")))
    english = visible(text(client.get("/account?ui_locales=en")))

    assert "2025년 3월 14일 오후 3:05 · 틀린 코드로 로그인을 시도했습니다 · 198.51.100.23" in page
    assert "본인이 시도하지 않았나요?" in page
    assert "Someone tried to sign in with a wrong code" in english
    assert "Was that not you?" in english
    assert page.count("틀린 코드로 로그인을 시도했습니다") == 1


def test_no_was_that_me_hint_without_failed_attempts(client: FlaskClient, signed_in: SignIn) -> None:
    signed_in(client)

    page = text(client.get("/account"))

    assert "본인이 시도하지 않았나요?" not in page


def test_successful_sign_ins_say_how(app: Flask, client: FlaskClient, signed_in: SignIn) -> None:
    started = signed_in(client)
    with db_of(app) as db:
        record_event(db, "signin", result="success", resident_id=started.session.resident_id, method="carrier_sms+totp")
        db.commit()

    page = text(client.get("/account?ui_locales=en"))

    assert "Signed in with mobile-phone verification (SMS) + authenticator app" in page


def test_services_are_listed_by_name_with_what_they_may_read(
    app: Flask, client: FlaskClient, signed_in: SignIn
) -> None:
    started = signed_in(client)
    with db_of(app) as db:
        portal = make_client(db, name="경기 민원포털").client
        db.add(
            Consent(
                resident_id=started.session.resident_id,
                client_id=portal.id,
                scopes=["openid", "phone", "profile"],
                granted_at=VERIFIED_AT,
            )
        )
        db.commit()

    page = text(client.get("/account/services"))

    assert "경기 민원포털" in page
    assert "휴대폰 번호" in page
    assert "openid, phone, profile" not in page
    assert "2025년 3월 14일" in page


# -- the authenticator app on a phone -------------------------------------------------------------------------------


def test_authenticator_set_up_offers_a_link_for_an_app_on_this_phone_and_a_scalable_qr(
    client: FlaskClient, signed_in: SignIn
) -> None:
    signed_in(client)
    started = client.post("/account/totp/setup", data={"csrf_token": csrf_of(text(client.get("/account/totp")))})
    assert started.status_code == 303

    page = text(client.get("/account/totp"))

    link = re.search(r'<a [^>]*href="(otpauth://totp/[^"]+)"', page)
    assert link, page[-2000:]
    uri = urlsplit(link.group(1).replace("&amp;", "&"))
    query = parse_qs(uri.query)
    secret = re.search(r'<code class="secret"[^>]*>([A-Z2-7 ]+)</code>', page)
    assert secret
    assert query["secret"] == [secret.group(1).replace(" ", "")]
    assert "issuer" in query
    svg = re.search(r"<svg[^>]*>", page)
    assert svg
    assert re.search(r'viewBox="0 0 \d+ \d+"', svg.group(0)), svg.group(0)
    assert 'width="' not in svg.group(0)  # the page's style sizes it, so it scales with the screen


def test_recovery_codes_are_laid_out_as_whole_codes(client: FlaskClient, signed_in: SignIn) -> None:
    # Made with the resident's authenticator confirmed: shown in the answer to the POST.
    started = signed_in(client)
    add_authenticator_app(client.application, started.session.resident_id)
    token = csrf_of(text(client.get("/account/totp")))

    shown = text(client.post("/account/totp/recovery-codes", data={"csrf_token": token}))

    codes = re.findall(r'<li><code class="recovery-code">([a-z2-9]{5}-[a-z2-9]{5})</code></li>', shown)
    assert len(codes) == 10, shown[-1500:]


# -- destructive actions ask once, then say what happened ------------------------------------------------------------


def test_removing_a_passkey_asks_first(app: Flask, client: FlaskClient, signed_in: SignIn) -> None:
    started = signed_in(client)
    phone = add_passkey(app, started.session.resident_id, "휴대폰")
    add_passkey(app, started.session.resident_id, "노트북")
    page = text(client.get("/account/passkeys"))
    assert "‘휴대폰’ 패스키 삭제" in page

    unasked = client.post(f"/account/passkeys/{phone}/remove", data={"csrf_token": csrf_of(page)})

    assert unasked.status_code == 303
    assert unasked.headers["Location"] == f"/account/passkeys/{phone}/remove"
    assert passkey_names(app, started.session.resident_id) == ["노트북", "휴대폰"]
    question = text(client.get(unasked.headers["Location"]))
    assert "‘휴대폰’ 패스키를 삭제할까요?" in question
    assert 'name="confirm" value="yes"' in question
    assert 'href="/account/passkeys"' in question  # cancel

    removed = client.post(f"/account/passkeys/{phone}/remove", data={"csrf_token": csrf_of(question), "confirm": "yes"})

    assert removed.status_code == 303
    assert removed.headers["Location"] == "/account/passkeys"
    assert passkey_names(app, started.session.resident_id) == ["노트북"]
    after = text(client.get("/account/passkeys"))
    assert status_of(after) == ["‘휴대폰’ 패스키를 삭제했습니다. 이 패스키로는 더 이상 로그인할 수 없습니다."]
    assert status_of(text(client.get("/account/passkeys"))) == []  # said once


def test_removing_the_last_passkey_says_how_the_resident_will_sign_in(
    app: Flask, client: FlaskClient, signed_in: SignIn
) -> None:
    started = signed_in(client)
    only = add_passkey(app, started.session.resident_id, "휴대폰")

    question = text(client.get(f"/account/passkeys/{only}/remove"))

    assert "마지막 패스키" in question
    removed = client.post(f"/account/passkeys/{only}/remove", data={"csrf_token": csrf_of(question), "confirm": "yes"})
    assert removed.status_code == 303
    assert passkey_names(app, started.session.resident_id) == []


def test_removing_a_passkey_from_the_account_warning_returns_there(
    app: Flask, client: FlaskClient, signed_in: SignIn
) -> None:
    started = signed_in(client)
    stranger = add_passkey(app, started.session.resident_id, "모르는 기기")
    with db_of(app) as db:
        passkey = db.get(Passkey, stranger)
        assert passkey is not None
        passkey.provisional_until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=20)
        db.commit()
    account = text(client.get("/account"))
    link = re.search(r'href="(/account/passkeys/[^"]+/remove\?back=account)"', account)
    assert link, account

    question = text(client.get(link.group(1)))
    removed = client.post(
        f"/account/passkeys/{stranger}/remove",
        data={"csrf_token": csrf_of(question), "confirm": "yes", "back": "account"},
    )

    assert removed.headers["Location"] == "/account"
    assert status_of(text(client.get("/account"))) == [
        "‘모르는 기기’ 패스키를 삭제했습니다. 이 패스키로는 더 이상 로그인할 수 없습니다."
    ]


def test_confirming_another_residents_passkey_removal_is_not_found(
    app: Flask, client: FlaskClient, signed_in: SignIn
) -> None:
    signed_in(client)
    other = app.test_client()
    theirs = signed_in(other, name="이수원", phone="+821000000002")
    passkey_id = add_passkey(app, theirs.session.resident_id, "이수원 휴대폰")

    assert client.get(f"/account/passkeys/{passkey_id}/remove").status_code == 404
    assert client.get("/account/passkeys/not-a-uuid/remove").status_code == 404


def test_removing_the_authenticator_app_asks_first(app: Flask, client: FlaskClient, signed_in: SignIn) -> None:
    started = signed_in(client)
    add_authenticator_app(app, started.session.resident_id)
    page = text(client.get("/account/totp"))

    unasked = client.post("/account/totp/remove", data={"csrf_token": csrf_of(page)})

    assert unasked.status_code == 303
    assert unasked.headers["Location"] == "/account/totp/remove"
    assert has_authenticator_app(app, started.session.resident_id)
    question = text(client.get("/account/totp/remove"))
    assert "인증 앱을 삭제할까요?" in question
    removed = client.post("/account/totp/remove", data={"csrf_token": csrf_of(question), "confirm": "yes"})
    assert removed.status_code == 303
    assert removed.headers["Location"] == "/account/totp"
    assert not has_authenticator_app(app, started.session.resident_id)
    assert status_of(text(client.get("/account/totp"))) == [
        "인증 앱을 삭제했습니다. 인증 앱의 코드와 복구 코드로는 더 이상 로그인할 수 없습니다."
    ]


def test_signing_out_everywhere_asks_first_then_says_how_many_devices(
    app: Flask, client: FlaskClient, signed_in: SignIn
) -> None:
    started = signed_in(client)
    add_session(app, started.session.resident_id, CHROME_ANDROID, at=dt.datetime.now(dt.UTC))
    page = text(client.get("/account"))

    unasked = client.post("/account/sessions/end-all", data={"csrf_token": csrf_of(page)})

    assert unasked.status_code == 303
    assert unasked.headers["Location"] == "/account/sessions/end-all"
    with db_of(app) as db:
        assert (
            len(
                db.scalars(
                    select(LoginSession).where(
                        LoginSession.resident_id == started.session.resident_id, LoginSession.ended_at.is_(None)
                    )
                ).all()
            )
            == 2
        )
    question = text(client.get("/account/sessions/end-all"))
    assert "기기 2대에서 로그아웃할까요?" in visible(question)
    assert "Android의 Chrome" in question

    ended = client.post("/account/sessions/end-all", data={"csrf_token": csrf_of(question), "confirm": "yes"})

    assert ended.status_code == 303
    assert ended.headers["Location"] == "/account/signed-out"
    with db_of(app) as db:
        assert (
            db.scalars(
                select(LoginSession).where(
                    LoginSession.resident_id == started.session.resident_id, LoginSession.ended_at.is_(None)
                )
            ).all()
            == []
        )
    report = text(client.get("/account/signed-out"))
    assert status_of(report) == ["기기 2대에서 로그아웃했습니다."]
    assert client.get("/account").status_code == 303  # signed out here too


def test_withdrawing_a_service_asks_first_then_says_what_it_no_longer_gets(
    app: Flask, client: FlaskClient, signed_in: SignIn
) -> None:
    started = signed_in(client)
    with db_of(app) as db:
        portal = make_client(db, name="경기 민원포털").client
        db.add(Consent(resident_id=started.session.resident_id, client_id=portal.id, scopes=["openid", "profile"]))
        db.commit()
        portal_id = portal.id
    page = text(client.get("/account/services"))
    assert "경기 민원포털 연결 해제" in page

    unasked = client.post("/account/services/revoke", data={"csrf_token": meta_csrf(page), "client_id": portal_id})

    assert unasked.status_code == 303
    assert urlsplit(unasked.headers["Location"]).path == "/account/services/revoke"
    with db_of(app) as db:
        assert db.scalar(select(Consent).where(Consent.resident_id == started.session.resident_id)) is not None
    question = text(client.get(unasked.headers["Location"]))
    assert "경기 민원포털의 연결을 해제할까요?" in question
    withdrawn = client.post(
        "/account/services/revoke", data={"csrf_token": csrf_of(question), "client_id": portal_id, "confirm": "yes"}
    )
    assert withdrawn.headers["Location"] == "/account/services"
    with db_of(app) as db:
        assert db.scalar(select(Consent).where(Consent.resident_id == started.session.resident_id)) is None
        assert (
            db.scalar(
                select(AuditEvent).where(
                    AuditEvent.event == "consent.revoked", AuditEvent.resident_id == started.session.resident_id
                )
            )
            is not None
        )
    assert status_of(text(client.get("/account/services"))) == [
        "경기 민원포털의 연결을 해제했습니다. "
        "이 서비스는 더 이상 내 정보를 받을 수 없으며, 다시 이용하면 동의를 다시 묻습니다."
    ]


@pytest.mark.parametrize(
    "path",
    ["/account/services/revoke?client_id=nobody", "/account/services/revoke", "/account/services/revoke?client_id="],
)
def test_withdrawing_an_unknown_service_is_not_found(client: FlaskClient, signed_in: SignIn, path: str) -> None:
    signed_in(client)

    assert client.get(path).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/account/sessions/end-all",
        "/account/totp/remove",
        "/account/services/revoke?client_id=x",
        f"/account/passkeys/{uuid.uuid4()}/remove",
    ],
)
def test_confirmation_pages_send_a_signed_out_browser_to_sign_in(client: FlaskClient, path: str) -> None:
    answer = client.get(path)

    assert answer.status_code == 303
    assert urlsplit(answer.headers["Location"]).path == "/login"


def test_a_forged_report_in_the_flow_cookie_is_ignored(client: FlaskClient, signed_in: SignIn) -> None:
    signed_in(client)
    with client.session_transaction() as flow:
        flow["account_report"] = {"kind": ["not", "text"], "subject": 5}

    page = client.get("/account/passkeys")

    assert page.status_code == 200
    assert status_of(text(page)) == []
