"""Device names on the account pages: the User-Agent strings of the browsers residents use, as they say them."""

from __future__ import annotations

import pytest
from flask import Flask

from idp.web.devices import Browser, Device, System, device_name, parse_user_agent

# Real User-Agent strings as these browsers sent them (versions vary; the tokens that name them do not).
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
)
SAMSUNG_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; SM-S921N) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 "
    "Chrome/121.0.0.0 Mobile Safari/537.36"
)
WHALE_ANDROID = (
    "Mozilla/5.0 (Linux; Android 13; SM-G991N) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.230 "
    "Whale/1.0.0.0 Crosswalk/28.120.6099.32 Mobile Safari/537.36"
)
KAKAOTALK_ANDROID = (
    "Mozilla/5.0 (Linux; Android 13; SM-A536N Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/119.0.6045.193 Mobile Safari/537.36;KAKAOTALK 2410420"
)
NAVER_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 "
    "NAVER(inapp; search; 2000; 12.1.4; 15PRO)"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1"
)
CHROME_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"
)
FIREFOX_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/124.0 "
    "Mobile/15E148 Safari/605.1.15"
)
EDGE_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Safari/537.36 Edg/124.0.2478.80"
)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
WHALE_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 "
    "Whale/3.25.232.19 Safari/537.36"
)
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 "
    "Safari/605.1.15"
)
FIREFOX_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0"
OPERA_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 "
    "Safari/537.36 OPR/109.0.0.0"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
HEADLESS_CHROME_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 Safari/537.36"
)
CHROME_OS = (
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
EDGE_ANDROID = (
    "Mozilla/5.0 (Linux; Android 10; HD1913) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile "
    "Safari/537.36 EdgA/124.0.2478.64"
)


@pytest.mark.parametrize(
    ("user_agent", "device"),
    [
        pytest.param(CHROME_ANDROID, Device(Browser.CHROME, System.ANDROID), id="chrome-android"),
        pytest.param(SAMSUNG_ANDROID, Device(Browser.SAMSUNG_INTERNET, System.ANDROID), id="samsung-internet"),
        pytest.param(WHALE_ANDROID, Device(Browser.WHALE, System.ANDROID), id="whale-android"),
        pytest.param(KAKAOTALK_ANDROID, Device(Browser.KAKAOTALK, System.ANDROID), id="kakaotalk-in-app"),
        pytest.param(NAVER_IPHONE, Device(Browser.NAVER, System.IPHONE), id="naver-app-iphone"),
        pytest.param(SAFARI_IPHONE, Device(Browser.SAFARI, System.IPHONE), id="safari-iphone"),
        pytest.param(CHROME_IPHONE, Device(Browser.CHROME, System.IPHONE), id="chrome-iphone"),
        pytest.param(FIREFOX_IPAD, Device(Browser.FIREFOX, System.IPAD), id="firefox-ipad"),
        pytest.param(EDGE_WINDOWS, Device(Browser.EDGE, System.WINDOWS), id="edge-windows"),
        pytest.param(CHROME_WINDOWS, Device(Browser.CHROME, System.WINDOWS), id="chrome-windows"),
        pytest.param(WHALE_WINDOWS, Device(Browser.WHALE, System.WINDOWS), id="whale-windows"),
        pytest.param(OPERA_WINDOWS, Device(Browser.OPERA, System.WINDOWS), id="opera-windows"),
        pytest.param(SAFARI_MAC, Device(Browser.SAFARI, System.MAC), id="safari-mac"),
        pytest.param(FIREFOX_MAC, Device(Browser.FIREFOX, System.MAC), id="firefox-mac"),
        pytest.param(FIREFOX_LINUX, Device(Browser.FIREFOX, System.LINUX), id="firefox-linux"),
        pytest.param(HEADLESS_CHROME_LINUX, Device(Browser.CHROME, System.LINUX), id="headless-chrome"),
        pytest.param(CHROME_OS, Device(Browser.CHROME, System.CHROME_OS), id="chromebook"),
        pytest.param(EDGE_ANDROID, Device(Browser.EDGE, System.ANDROID), id="edge-android"),
    ],
)
def test_common_browsers_and_systems_are_recognised(user_agent: str, device: Device) -> None:
    assert parse_user_agent(user_agent) == device


@pytest.mark.parametrize(
    ("user_agent", "device"),
    [
        pytest.param(None, Device(None, None), id="none"),
        pytest.param("", Device(None, None), id="empty"),
        pytest.param("pytest", Device(None, None), id="a-tool"),
        pytest.param("curl/8.5.0", Device(None, None), id="curl"),
        pytest.param("Mozilla/5.0 (Windows NT 10.0)", Device(None, System.WINDOWS), id="system-only"),
        pytest.param("Firefox/125.0", Device(Browser.FIREFOX, None), id="browser-only"),
        pytest.param("\x00\ud800" * 200, Device(None, None), id="garbage"),
    ],
)
def test_what_is_not_recognised_is_left_unnamed(user_agent: str | None, device: Device) -> None:
    assert parse_user_agent(user_agent) == device


@pytest.fixture
def app() -> Flask:
    from flask_babel import Babel

    from idp.web import TRANSLATIONS

    app = Flask(__name__)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    locale = {"value": "ko"}
    Babel(app, locale_selector=lambda: locale["value"])
    app.extensions["test.locale"] = locale
    return app


def name_in(app: Flask, language: str, user_agent: str | None) -> str:
    app.extensions["test.locale"]["value"] = language
    with app.test_request_context():
        return device_name(user_agent)


@pytest.mark.parametrize(
    ("user_agent", "korean", "english"),
    [
        (CHROME_ANDROID, "Android의 Chrome", "Chrome on Android"),
        (SAMSUNG_ANDROID, "Android의 삼성 인터넷", "Samsung Internet on Android"),
        (WHALE_WINDOWS, "Windows의 네이버 웨일", "Naver Whale on Windows"),
        (KAKAOTALK_ANDROID, "Android의 카카오톡", "KakaoTalk on Android"),
        (NAVER_IPHONE, "iPhone의 네이버 앱", "NAVER app on iPhone"),
        (SAFARI_MAC, "Mac의 Safari", "Safari on Mac"),
        ("Mozilla/5.0 (Windows NT 10.0)", "Windows의 브라우저", "A browser on Windows"),
        ("Firefox/125.0", "Firefox", "Firefox"),
        ("pytest", "알 수 없는 브라우저", "Unknown browser"),
        (None, "알 수 없는 브라우저", "Unknown browser"),
    ],
)
def test_device_names_read_as_residents_say_them(app: Flask, user_agent: str, korean: str, english: str) -> None:
    assert name_in(app, "ko", user_agent) == korean
    assert name_in(app, "en", user_agent) == english
