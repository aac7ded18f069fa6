"""normalize_phone: what a resident types, to E.164."""

from __future__ import annotations

import pytest

from idp.phones import normalize_phone


@pytest.mark.parametrize(
    "typed",
    [
        "010-1234-5678",
        "01012345678",
        "010 1234 5678",
        "010.1234.5678",
        "(010) 1234-5678",
        "+82 10 1234 5678",
        "+82-10-1234-5678",
        "+821012345678",
        "+82 (0)10 1234 5678",
        "+82 010 1234 5678",
        "0082 10 1234 5678",
        "82 10 1234 5678",
        "821012345678",
        " 010-1234-5678 ",
        "０１０－１２３４－５６７８",  # full-width, as some Korean IMEs type
        "＋８２１０１２３４５６７８",
        "010\u00a01234\u00a05678",
    ],
)
def test_the_forms_residents_type_normalise_to_e164(typed: str) -> None:
    assert normalize_phone(typed) == "+821012345678"


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "010",
        "010-1234-567",
        "010-1234-56789",
        "02-1234-5678",
        "011-123-4567",
        "+1 415 555 0100",
        "+8210123456789",
        "1012345678",
        "010-1234-567a",
        "010_1234_5678",
        "٠١٠١٢٣٤٥٦٧٨",  # Arabic-Indic digits are digits to str.isdigit, not to a phone network
        "+82+1012345678",
    ],
)
def test_anything_else_is_refused(typed: str) -> None:
    with pytest.raises(ValueError, match="Korean mobile number"):
        normalize_phone(typed)
