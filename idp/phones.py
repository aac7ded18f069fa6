"""Korean mobile numbers: what a resident types, to E.164 (shared by the IdP and the sandbox agency)."""

from __future__ import annotations

import re
import unicodedata

COUNTRY_CODE = "82"  # ITU-T E.164 country code of the Republic of Korea
# The old 011 and 016-019 prefixes were retired in favour of 010, so a mobile number is 010 and 8 digits
# (national form), that is 10 and 8 digits after the country code.
_NATIONAL = re.compile(r"10[0-9]{8}")
# Separators people type or paste: spaces (also NBSP after NFKC), hyphens, dots, slashes, parentheses.
_SEPARATORS = re.compile(r"[\s\-./()]")


def normalize_phone(value: str) -> str:
    """The E.164 form (`+821012345678`) of a mobile number typed as `010-1234-5678`, `01012345678`,
    `+82 10 1234 5678`, `+82 (0)10 1234 5678`, `82 10 …`, `0082 10 …` or with full-width digits.

    Raises:
        ValueError: the value is not a Korean mobile number.
    """
    # NFKC folds full-width digits, plus and hyphen (a Korean IME may type them) into ASCII.
    compact = _SEPARATORS.sub("", unicodedata.normalize("NFKC", value))
    if compact.startswith("+"):
        national = _without_country_code(compact[1:])
    elif compact.startswith("00" + COUNTRY_CODE):
        national = _without_country_code(compact[2:])
    elif compact.startswith(COUNTRY_CODE):
        # A national number starts with the trunk prefix 0, so a leading 82 can only be the country code.
        national = _without_country_code(compact)
    elif compact.startswith("0"):
        national = compact[1:]
    else:
        national = ""
    if not _NATIONAL.fullmatch(national):
        raise ValueError("not a Korean mobile number (010-XXXX-XXXX)")
    return f"+{COUNTRY_CODE}{national}"


def _without_country_code(international: str) -> str:
    if not international.startswith(COUNTRY_CODE):
        return ""
    national = international.removeprefix(COUNTRY_CODE)
    # "+82 (0)10 …" and "+82 010 …" keep the trunk prefix 0, which E.164 drops.
    return national[1:] if national.startswith("0") else national
