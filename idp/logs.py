"""Logging: one JSON object a line in production, readable lines in development; request lines without secrets."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from idp.settings import Settings

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Attributes every LogRecord has; anything else was passed with `extra=` and belongs in the JSON line.
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers: time, level, logger, message and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _one_line(text: object) -> str:
    # A path or header may carry newlines and terminal escapes: shown escaped, so a request cannot forge a line.
    return CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], str(text))


class ReadableFormatter(logging.Formatter):
    """`time level logger: message key=value …` for a developer's terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={_one_line(value)}"
            for key, value in vars(record).items()
            if key not in STANDARD_ATTRS and not key.startswith("_")
        )
        message = _one_line(record.getMessage())
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {message}"
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(settings: Settings) -> None:
    """Send the `idp` loggers to stderr in the format the environment wants; idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.is_production else ReadableFormatter())
    logger = logging.getLogger("idp")
    for existing in list(logger.handlers):
        if getattr(existing, "_idp_handler", False):
            logger.removeHandler(existing)
    handler._idp_handler = True  # type: ignore[attr-defined]  # marks ours, so a second call replaces it
    logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False


def mask_phone(phone: str | None) -> str | None:
    """+821012345678 → +8210****5678: enough for support to match a call, too little to dial."""
    if not phone:
        return phone
    if len(phone) <= 8:
        return "*" * len(phone)
    return phone[:5] + "*" * (len(phone) - 9) + phone[-4:]
