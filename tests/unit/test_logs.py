"""Log lines: one per event in either format, whatever the request carried."""

from __future__ import annotations

import json
import logging

import pytest

from idp.logs import JsonFormatter, ReadableFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("idp.request", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


@pytest.mark.parametrize("path", ["/login\nforged 12:00:00 INFO idp.audit: signin success", "/a\rb", "/x\x1b[31m"])
def test_a_readable_line_stays_one_line_whatever_the_path(path: str) -> None:
    line = ReadableFormatter().format(record("%s %s", "GET", path, client_ip="127.0.0.1\nx"))

    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert path.encode("unicode_escape").decode() in line  # shown, escaped, not dropped


def test_a_json_line_keeps_the_path_as_it_came() -> None:
    line = JsonFormatter().format(record("%s %s", "GET", "/login\nforged"))
    assert json.loads(line)["message"] == "GET /login\nforged"
