"""Input parsing and validation for the resident-facing forms (their field names and autocomplete values are a
contract: docs/architecture.md), with CSRF from Flask-WTF."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from flask import request
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.csrf import _FlaskFormCSRF
from wtforms import BooleanField, Field, HiddenField, RadioField, SelectField, StringField
from wtforms.fields.choices import SelectChoice  # type: ignore[attr-defined]  # new in WTForms 3.3; stubs lag
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


def _validate_birthdate(_form: FlaskForm, field: Field) -> None:
    value: str = field.data or ""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValidationError(_l("Enter your birth date as YYYY-MM-DD, for example 1990-03-15."))
    try:
        born = dt.date.fromisoformat(value)
    except ValueError:
        raise ValidationError(_l("This date does not exist. Check the month and day.")) from None
    today = dt.date.today()
    if born > today or born.year < today.year - OLDEST:
        raise ValidationError(_l("Enter your real birth date."))


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


class PageForm(FlaskForm):  # type: ignore[misc]  # Flask-WTF ships no type information
    """A form of the resident's pages: read from posted form fields only."""

    class Meta(FlaskForm.Meta):  # type: ignore[misc]  # as above
        csrf_class = PageCsrf

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
    consent = BooleanField(
        _l("I agree to the verification agency's terms and to passing my details to it."),
        validators=[InputRequired(_l("Agree to the terms to continue."))],
    )

    def details(self) -> CarrierDetails:
        """The parsed values; call only after `validate()` succeeded."""
        return CarrierDetails(
            carrier=Carrier(self.carrier.data),
            name=self.name.data or "",
            birthdate=dt.date.fromisoformat(self.birthdate.data or ""),
            rrn_digit7=self.rrn_digit7.data or "",
            phone=normalize_phone(self.phone.data or ""),
            method=VerificationMethod(self.method.data),
        )


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
