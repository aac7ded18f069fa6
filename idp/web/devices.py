"""Device names for the account pages: a browser's User-Agent string as residents say it ("Chrome on Android")."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flask_babel import gettext as _


class Browser(enum.StrEnum):
    CHROME = "chrome"
    EDGE = "edge"
    FIREFOX = "firefox"
    SAFARI = "safari"
    OPERA = "opera"
    SAMSUNG_INTERNET = "samsung_internet"
    WHALE = "whale"
    KAKAOTALK = "kakaotalk"
    NAVER = "naver"


class System(enum.StrEnum):
    ANDROID = "android"
    IPHONE = "iphone"
    IPAD = "ipad"
    WINDOWS = "windows"
    MAC = "mac"
    CHROME_OS = "chrome_os"
    LINUX = "linux"


# First match wins. In-app browsers (KakaoTalk, the NAVER app) and browsers built on Chromium (Whale, Samsung
# Internet, Edge, Opera) also send "Chrome/" and "Safari/", so their own token is looked for first; on iOS every
# browser is Safari's engine and says so, and only its own token (CriOS, FxiOS, EdgiOS) tells them apart.
BROWSER_TOKENS: tuple[tuple[str, Browser], ...] = (
    ("KAKAOTALK", Browser.KAKAOTALK),
    ("NAVER(inapp", Browser.NAVER),
    ("Whale/", Browser.WHALE),
    ("SamsungBrowser/", Browser.SAMSUNG_INTERNET),
    ("Edg/", Browser.EDGE),
    ("EdgA/", Browser.EDGE),
    ("EdgiOS/", Browser.EDGE),
    ("OPR/", Browser.OPERA),
    ("OPiOS/", Browser.OPERA),
    ("Firefox/", Browser.FIREFOX),
    ("FxiOS/", Browser.FIREFOX),
    ("CriOS/", Browser.CHROME),
    ("HeadlessChrome/", Browser.CHROME),
    ("Chrome/", Browser.CHROME),
    ("Chromium/", Browser.CHROME),
)
# Android's string also says "Linux", and an iPhone's says "like Mac OS X": the specific names come first.
SYSTEM_TOKENS: tuple[tuple[str, System], ...] = (
    ("Android", System.ANDROID),
    ("iPhone", System.IPHONE),
    ("iPod", System.IPHONE),
    ("iPad", System.IPAD),
    ("CrOS", System.CHROME_OS),
    ("Windows", System.WINDOWS),
    ("Macintosh", System.MAC),
    ("Linux", System.LINUX),
)


@dataclass(frozen=True, slots=True)
class Device:
    """What a User-Agent string says about the browser and the system it runs on; None where it says nothing
    recognisable."""

    browser: Browser | None
    system: System | None


def parse_user_agent(user_agent: str | None) -> Device:
    """The browser and system a User-Agent string names, for showing a resident where they are signed in.

    Not for deciding anything: the string is whatever the browser (or anyone) sent."""
    text = user_agent or ""
    browser = next((name for token, name in BROWSER_TOKENS if token in text), None)
    if browser is None and "Safari/" in text and "Version/" in text:
        browser = Browser.SAFARI
    system = next((name for token, name in SYSTEM_TOKENS if token in text), None)
    return Device(browser, system)


def _browser_name(browser: Browser) -> str:
    names: dict[Browser, str] = {
        Browser.CHROME: "Chrome",
        Browser.EDGE: "Edge",
        Browser.FIREFOX: "Firefox",
        Browser.SAFARI: "Safari",
        Browser.OPERA: "Opera",
        Browser.SAMSUNG_INTERNET: _("Samsung Internet"),
        Browser.WHALE: _("Naver Whale"),
        Browser.KAKAOTALK: _("KakaoTalk"),
        Browser.NAVER: _("NAVER app"),
    }
    return names[browser]


SYSTEM_NAMES = {
    System.ANDROID: "Android",
    System.IPHONE: "iPhone",
    System.IPAD: "iPad",
    System.WINDOWS: "Windows",
    System.MAC: "Mac",
    System.CHROME_OS: "ChromeOS",
    System.LINUX: "Linux",
}


def device_name(user_agent: str | None) -> str:
    """The browser and system of a User-Agent string in the resident's language ("Chrome on Android")."""
    device = parse_user_agent(user_agent)
    if device.browser is not None and device.system is not None:
        browser, system = _browser_name(device.browser), SYSTEM_NAMES[device.system]
        return str(_("%(browser)s on %(system)s", browser=browser, system=system))
    if device.browser is not None:
        return _browser_name(device.browser)
    if device.system is not None:
        return str(_("A browser on %(system)s", system=SYSTEM_NAMES[device.system]))
    return str(_("Unknown browser"))


def new_passkey_name(user_agent: str | None) -> str:
    """A first name for a passkey added in this browser, after the device it is on ("iPhone", "Android phone")."""
    system = parse_user_agent(user_agent).system
    names: dict[System, str] = {
        System.ANDROID: _("Android phone"),
        System.IPHONE: "iPhone",
        System.IPAD: "iPad",
        System.WINDOWS: _("Windows PC"),
        System.MAC: "Mac",
        System.CHROME_OS: "Chromebook",
        System.LINUX: _("Linux PC"),
    }
    return names[system] if system is not None else str(_("My phone"))
