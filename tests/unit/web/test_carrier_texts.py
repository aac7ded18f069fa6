"""The carrier pages' texts that depend on numbers and time: waits (plurals, Korea-time clock times) and birth dates
as residents type them."""

from __future__ import annotations

import datetime as dt

import pytest
from flask import Flask

from idp.web.forms import BirthdateInvalidError, parse_birthdate
from idp.web.login import wait_text

KST = dt.timezone(dt.timedelta(hours=9))
# 2026-11-26 15:20:30 in Korea, 06:20:30 UTC.
NOW = dt.datetime(2026, 11, 26, 6, 20, 30, tzinfo=dt.UTC)


def say(app: Flask, locale: str, seconds: int, now: dt.datetime = NOW) -> str:
    with app.test_request_context(headers={"Accept-Language": locale}):
        return wait_text(seconds, now=now)


@pytest.mark.parametrize(
    ("seconds", "english", "korean"),
    [
        (1, "You can try again in 1 second.", "1초 후에 다시 시도할 수 있습니다."),
        (30, "You can try again in 30 seconds.", "30초 후에 다시 시도할 수 있습니다."),
        (61, "You can try again in 2 minutes.", "2분 후에 다시 시도할 수 있습니다."),
        (3600, "You can try again in 60 minutes.", "60분 후에 다시 시도할 수 있습니다."),
    ],
)
def test_short_waits_are_counted_with_plurals(app: Flask, seconds: int, english: str, korean: str) -> None:
    assert say(app, "en", seconds) == english
    assert say(app, "ko", seconds) == korean


def test_a_wait_of_one_minute_is_singular(app: Flask) -> None:
    assert say(app, "en", 60) == "You can try again in 60 seconds."
    assert say(app, "en", 90) == "You can try again in 2 minutes."


def test_a_long_wait_is_a_clock_time_in_korea(app: Flask) -> None:
    # Until 09:00 tomorrow in Korea (00:00 UTC), however the server's clock is set.
    until = dt.datetime(2026, 11, 27, 9, 0, tzinfo=KST)
    seconds = int((until - NOW).total_seconds())
    assert say(app, "ko", seconds) == "내일 오전 9시부터 다시 시도할 수 있습니다."
    assert say(app, "en", seconds) == "You can try again from tomorrow at 9 AM."


def test_a_clock_time_rounds_up_to_the_minute_and_says_today(app: Flask) -> None:
    assert say(app, "ko", 2 * 3600) == "오늘 오후 5시 21분부터 다시 시도할 수 있습니다."
    assert say(app, "en", 2 * 3600) == "You can try again from today at 5:21 PM."


def test_a_wait_past_tomorrow_names_the_date(app: Flask) -> None:
    assert say(app, "ko", 3 * 86400 - 30) == "11월 29일 오후 3시 20분부터 다시 시도할 수 있습니다."


TODAY = dt.date(2026, 11, 26)


@pytest.mark.parametrize(
    ("typed", "digit", "born"),
    [
        ("19850314", "1", dt.date(1985, 3, 14)),
        ("1985-03-14", "1", dt.date(1985, 3, 14)),
        ("1985.03.14", "1", dt.date(1985, 3, 14)),
        ("1985. 3. 14.", "1", dt.date(1985, 3, 14)),
        ("1985/3/4", "1", dt.date(1985, 3, 4)),
        ("１９８５０３１４", "1", dt.date(1985, 3, 14)),  # full-width digits from a Korean keyboard
        ("850314", "1", dt.date(1985, 3, 14)),
        ("850314", "2", dt.date(1985, 3, 14)),
        ("900817", "5", dt.date(1990, 8, 17)),  # a foreign resident born in the 1900s
        ("041225", "4", dt.date(2004, 12, 25)),
        ("041225", "8", dt.date(2004, 12, 25)),
    ],
)
def test_birth_dates_are_read_as_typed(typed: str, digit: str, born: dt.date) -> None:
    assert parse_birthdate(typed, digit, today=TODAY) == born


@pytest.mark.parametrize(
    ("typed", "digit"),
    [
        ("850314", "9"),  # no century without a valid digit: the 8-digit form is asked for
        ("850314", ""),
        ("1985031", "1"),
        ("85-03-14", "1"),
        ("19850230", "1"),
        ("2085.03.14", "1"),
        ("850314", "3"),  # 2085
        ("18850314", "1"),
        ("", "1"),
        ("1985-03-14T00:00", "1"),
    ],
)
def test_anything_else_is_not_a_birth_date(typed: str, digit: str) -> None:
    with pytest.raises(BirthdateInvalidError):
        parse_birthdate(typed, digit, today=TODAY)
