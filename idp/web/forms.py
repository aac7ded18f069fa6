"""Input parsing and validation for the resident-facing forms (their field names and autocomplete values are a
contract: docs/architecture.md), with CSRF from Flask-WTF."""

from __future__ import annotations

import datetime as dt
import gettext
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from babel import support
from flask import current_app, request
from flask_babel import get_locale
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.csrf import _FlaskFormCSRF
from wtforms import BooleanField, Field, HiddenField, RadioField, SelectField, StringField
from wtforms.fields.choices import SelectChoice  # type: ignore[attr-defined]  # new in WTForms 3.3; stubs lag
from wtforms.i18n import messages_path
from wtforms.validators import InputRequired, ValidationError

from idp.authn.carrier import CODE_LENGTH, VerificationMethod
from idp.authn.recovery import normalize_recovery_code
from idp.models import Carrier
from idp.phones import normalize_phone

NAME_MAX = 50  # 실명: Korean names are 2–5 syllables; foreign residents' registered names stay well under 50
OLDEST = 130  # years; anything older is a typing mistake

CARRIER_LABELS = {
    Carrier.SKT: "SKT",
    Carrier.KT: "KT",
    Carrier.LGU: "LG U+",
    Carrier.SKT_MVNO: _l("SKT budget phone (MVNO)"),
    Carrier.KT_MVNO: _l("KT budget phone (MVNO)"),
    Carrier.LGU_MVNO: _l("LG U+ budget phone (MVNO)"),
}


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _validate_name(_form: FlaskForm, field: Field) -> None:
    value: str = field.data or ""
    if not value:
        raise ValidationError(_l("Enter your name as registered."))
    if len(value) > NAME_MAX:
        raise ValidationError(_l("A name can have at most %(max)d characters.", max=NAME_MAX))
    if any(unicodedata.category(char).startswith("C") for char in value):
        raise ValidationError(_l("The name contains characters that cannot be part of a name."))


# Birth dates as residents type them: 19850314, 1985-03-14, 1985.03.14, 1985. 3. 14. (the Korean way of writing a
# date), 1985/03/14, and the 6-digit 850314 of the resident registration number's front half.
BIRTHDATE_DIGITS = re.compile(r"(\d{4})(\d{2})(\d{2})|(\d{2})(\d{2})(\d{2})")
BIRTHDATE_SEPARATED = re.compile(r"(\d{4})\s*[-./,]\s*(\d{1,2})\s*[-./,]\s*(\d{1,2})\s*\.?")
# The century a registration digit stands for: 1, 2 and (foreign residents) 5, 6 for the 1900s; 3, 4, 7, 8 for the
# 2000s (주민등록법 시행규칙 별표 1's numbering).
CENTURY_OF_DIGIT = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}
KOREA = dt.timezone(dt.timedelta(hours=9), "KST")  # Korea has kept UTC+9 without summer time since 1988


class BirthdateInvalidError(ValueError):
    """The text is no birth date; the message says what to type instead."""


def parse_birthdate(text: str, rrn_digit7: str | None, *, today: dt.date) -> dt.date:
    """The birth date in `text`, as residents type it; a 6-digit date takes its century from `rrn_digit7`.

    Raises:
        BirthdateInvalidError: not a date in an accepted form, a date that does not exist, or not a real birth date.
    """
    value = unicodedata.normalize("NFKC", text).strip()
    digits = BIRTHDATE_DIGITS.fullmatch(value)
    separated = BIRTHDATE_SEPARATED.fullmatch(value)
    if digits and digits.group(1):
        year, month, day = (int(part) for part in digits.group(1, 2, 3))
    elif digits:
        century = CENTURY_OF_DIGIT.get(rrn_digit7 or "")
        if century is None:
            # Without a valid registration digit the century is unknown: the 8-digit form needs none.
            raise BirthdateInvalidError(_l("Enter your birth date in 8 digits, for example 19850314."))
        year, month, day = century + int(digits.group(4)), int(digits.group(5)), int(digits.group(6))
    elif separated:
        year, month, day = (int(part) for part in separated.groups())
    else:
        raise BirthdateInvalidError(_l("Enter your birth date in 8 digits, for example 19850314."))
    try:
        born = dt.date(year, month, day)
    except ValueError:
        raise BirthdateInvalidError(_l("This date does not exist. Check the month and day.")) from None
    if born > today or born.year < today.year - OLDEST:
        raise BirthdateInvalidError(_l("Enter your real birth date."))
    return born


def _korea_today() -> dt.date:
    return dt.datetime.now(KOREA).date()


def _validate_birthdate(form: FlaskForm, field: Field) -> None:
    try:
        parse_birthdate(field.data or "", form.rrn_digit7.data, today=_korea_today())
    except BirthdateInvalidError as exc:
        raise ValidationError(exc.args[0]) from None


def _validate_rrn_digit(_form: FlaskForm, field: Field) -> None:
    if not re.fullmatch(r"[1-8]", field.data or ""):
        raise ValidationError(_l("Enter the first digit of the back half of your resident number (1 to 8)."))


def _validate_phone(_form: FlaskForm, field: Field) -> None:
    try:
        normalize_phone(field.data or "")
    except ValueError:
        raise ValidationError(_l("Enter a Korean mobile number, for example 010-1234-5678.")) from None


def _validate_code(_form: FlaskForm, field: Field) -> None:
    if not re.fullmatch(rf"\d{{{CODE_LENGTH}}}", field.data or ""):
        raise ValidationError(_l("Enter the %(n)d-digit code from the text message.", n=CODE_LENGTH))


def _compact_code(value: Any) -> Any:
    # Residents paste codes with spaces or hyphens ("123 456"); keep only what they meant.
    return re.sub(r"[\s\-]", "", value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class CarrierDetails:
    """What the carrier form says, parsed."""

    carrier: Carrier
    name: str
    birthdate: dt.date
    rrn_digit7: str
    phone: str
    method: VerificationMethod


class PageCsrf(_FlaskFormCSRF):  # type: ignore[misc]  # Flask-WTF ships no type information
    """Flask-WTF's CSRF check, with a signed token whose payload is not ASCII text refused like any wrong token
    (hmac.compare_digest raises TypeError on it; only a holder of the secret key can sign one)."""

    def validate_csrf_token(self, form: FlaskForm, field: Field) -> None:
        try:
            super().validate_csrf_token(form, field)
        except TypeError:
            raise ValidationError("The CSRF tokens do not match.") from None


# WTForms' own messages ("This field is required.") per language, read once per process: Flask-WTF reads the
# catalogue from disk again for every request that makes a form.
_WTFORMS_MESSAGES: dict[str, gettext.NullTranslations] = {}


def wtforms_messages(language: str) -> gettext.NullTranslations:
    """WTForms' message catalogue in `language` (English when it has none)."""
    found = _WTFORMS_MESSAGES.get(language)
    if found is None:
        found = _WTFORMS_MESSAGES[language] = support.Translations.load(messages_path(), [language], domain="wtforms")
    return found


class PageForm(FlaskForm):  # type: ignore[misc]  # Flask-WTF ships no type information
    """A form of the resident's pages: read from posted form fields only."""

    class Meta(FlaskForm.Meta):  # type: ignore[misc]  # as above
        csrf_class = PageCsrf

        def get_translations(self, form: FlaskForm) -> Any:
            if not current_app.config.get("WTF_I18N_ENABLED", True):
                return super().get_translations(form)
            return wtforms_messages(str(get_locale()))

        def wrap_formdata(self, form: FlaskForm, formdata: Any) -> Any:
            # Flask-WTF would read a JSON body as the form, and fails on one that is not an object; the pages post
            # form fields, so a JSON body is an empty form (and so an invalid one).
            if request.is_json:
                return request.form
            return super().wrap_formdata(form, formdata)


class CarrierStartForm(PageForm):
    carrier = SelectField(
        _l("Mobile carrier"),
        choices=[SelectChoice(carrier.value, label) for carrier, label in CARRIER_LABELS.items()],
        validators=[InputRequired(_l("Choose your mobile carrier."))],
        validate_choice=True,
    )
    name = StringField(_l("Name"), filters=[_strip], validators=[_validate_name])
    birthdate = StringField(_l("Birth date"), filters=[_strip], validators=[_validate_birthdate])
    rrn_digit7 = StringField(_l("Resident number, 7th digit"), filters=[_strip], validators=[_validate_rrn_digit])
    phone = StringField(_l("Mobile phone number"), filters=[_strip], validators=[_validate_phone])
    method = RadioField(
        _l("How to confirm"),
        choices=[
            SelectChoice(VerificationMethod.SMS.value, _l("Text message (SMS) code")),
            SelectChoice(VerificationMethod.APP.value, _l("Approval in the carrier's app")),
        ],
        default=VerificationMethod.SMS.value,
        validators=[InputRequired(_l("Choose how to confirm."))],
    )
    # PIPA §22(1) asks for each consent apart: the agency's terms, the collection and use of the details, and their
    # provision to the agency. `consent` is "agree to all", which stands for each of them.
    consent = BooleanField(_l("I agree to all of the following."))
    consent_terms = BooleanField(_l("I agree to the verification agency's terms of service."))
    consent_collection = BooleanField(_l("I agree to the collection and use of my personal information."))
    consent_provision = BooleanField(
        _l("I agree to my personal information being provided to the verification agency.")
    )

    def validate(self, extra_validators: Any = None) -> bool:
        valid: bool = super().validate(extra_validators)
        if self.consent.data:
            for item in self.consent_items():
                item.data = True
        missing = [item for item in self.consent_items() if not item.data]
        for item in missing:
            item.errors = [_l("Agree to this item to verify with your mobile phone.")]
        return valid and not missing

    def consent_items(self) -> list[BooleanField]:
        """The consents the agency needs, each asked for apart."""
        return [self.consent_terms, self.consent_collection, self.consent_provision]

    def details(self) -> CarrierDetails:
        """The parsed values; call only after `validate()` succeeded."""
        return CarrierDetails(
            carrier=Carrier(self.carrier.data),
            name=self.name.data or "",
            birthdate=parse_birthdate(self.birthdate.data or "", self.rrn_digit7.data, today=_korea_today()),
            rrn_digit7=self.rrn_digit7.data or "",
            phone=normalize_phone(self.phone.data or ""),
            method=VerificationMethod(self.method.data),
        )

    def typed(self) -> dict[str, str]:
        """What the resident typed, as typed, to fill the form again when the verification ends."""
        return {
            "carrier": self.carrier.data or "",
            "name": self.name.data or "",
            "birthdate": self.birthdate.data or "",
            "rrn_digit7": self.rrn_digit7.data or "",
            "phone": self.phone.data or "",
            "method": self.method.data or "",
        }


class CodeForm(PageForm):
    code = StringField(_l("Verification code"), filters=[_compact_code], validators=[_validate_code])


class ActionForm(PageForm):
    """A form that is only a button: it carries the CSRF token."""


def _validate_totp_code(form: FlaskForm, field: Field) -> None:
    if form.kind.data == "recovery":
        if normalize_recovery_code(field.data or "") is None:
            raise ValidationError(_l("A recovery code has 10 letters and digits, for example abcde-23456."))
    elif not re.fullmatch(r"[0-9]{6}", _compact_code(field.data or "")):
        raise ValidationError(_l("Enter the 6 digits your authenticator app shows now."))


class TotpCodeForm(PageForm):
    """A code from the resident's authenticator app, or one of their recovery codes (`kind`)."""

    kind = HiddenField(default="totp", filters=[lambda value: "recovery" if value == "recovery" else "totp"])
    code = StringField(_l("Code"), filters=[_strip], validators=[_validate_totp_code])


class TotpSignInForm(TotpCodeForm):
    """Sign-in with a phone number and a code from the authenticator app (docs/architecture.md section 5)."""

    phone = StringField(_l("Mobile phone number"), filters=[_strip], validators=[_validate_phone])

    def phone_number(self) -> str:
        """The number in E.164; call only after `validate()` succeeded."""
        return normalize_phone(self.phone.data or "")
