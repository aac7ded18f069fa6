"""TOTP pages: sign-in with a phone number and code (/login/totp), the second factor after carrier verification,
and set-up, recovery codes and removal on /account/totp."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Any

import segno
from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from markupsafe import Markup
from sqlalchemy import bindparam, select
from werkzeug.wrappers import Response as BaseResponse

from idp.audit import FAILURE, record_event
from idp.authn.assurance import AuthEvent, Method
from idp.authn.lockout import LockedOutError, RateLimiter
from idp.authn.recovery import (
    RecoveryCodeUsedError,
    generate_recovery_codes,
    recovery_check,
    remaining_recovery_codes,
)
from idp.authn.residents import ResidentLockedError
from idp.authn.sessions import recently_signed_in
from idp.authn.totp import (
    Enrolment,
    TotpAlreadyEnrolledError,
    TotpCodeReusedError,
    TotpEnrolmentExpiredError,
    TotpError,
    authenticate,
    begin_enrolment,
    confirm_enrolment,
    enrolment_expired,
    find_device,
    pending_enrolment_of,
    remove_totp,
    totp_check,
)
from idp.models import LoginSession, Resident, TotpDevice
from idp.oidc.interaction import carry_over, current_login
from idp.runtime import current, db_session, reading_only, request_time
from idp.settings import data_fernet, recovery_code_key
from idp.web import page_settings, render_error
from idp.web.account import confirmed, render_confirmation, report, take_report
from idp.web.forms import ActionForm, TotpCodeForm, TotpSignInForm
from idp.web.login import SECOND_FACTOR, open_or_step_up, safe_next

bp = Blueprint("totp", __name__)

# What a view answers: a page (with its status) or a redirect.
Answer = BaseResponse | tuple[str, int]


def _wrong_code_message() -> str:
    return str(_("The code is not right. Check the time on your phone and try the code your app shows now."))


def _client_ip() -> str:
    return request.remote_addr or "0.0.0.0"  # noqa: S104  (an address to report, not to bind)


def _limiter() -> RateLimiter:
    return current().limiter


def _issuer_name() -> str:
    # What authenticator apps list the account under.
    return str(_("Gyeonggi-do sign-in"))


def _second_factor(now: dt.datetime) -> dict[str, Any] | None:
    """A carrier sign-in waiting for this resident's code, while it is fresh."""
    pending = session.get(SECOND_FACTOR)
    if not isinstance(pending, dict):
        return None
    try:
        live = dt.datetime.fromisoformat(pending["expires_at"]) > now
    except (KeyError, TypeError, ValueError):
        live = False
    if not live:
        session.pop(SECOND_FACTOR, None)
        return None
    return pending


# A number may be stored on more than one resident (a line passed on); the one who set up TOTP is meant, the most
# recently verified first. Built once: every TOTP sign-in by phone number asks.
RESIDENT_BY_PHONE = (
    select(Resident)
    .join(TotpDevice, TotpDevice.resident_id == Resident.id)
    .where(Resident.phone == bindparam("phone"), TotpDevice.confirmed_at.is_not(None))
    .order_by(Resident.verified_at.desc())
    .limit(1)
)


def _resident_by_phone(phone: str) -> Resident | None:
    found: Resident | None = db_session().scalar(RESIDENT_BY_PHONE, {"phone": phone})
    return found


def _render_sign_in(
    form: TotpCodeForm, *, second: bool, status: int = 200, failure: str | None = None
) -> tuple[str, int]:
    return render_template("totp_login.html", form=form, second=second, failure=failure), status


@bp.route("/login/totp", methods=["GET", "POST"])
def sign_in() -> Answer:
    """Sign in with a code from the authenticator app (or a recovery code), or finish a carrier sign-in with it."""
    now = request_time()
    pending = _second_factor(now)
    form = TotpCodeForm() if pending else TotpSignInForm()
    if request.method == "GET":
        reading_only()  # the service's name is all the page reads
        form.kind.data = "recovery" if request.args.get("kind") == "recovery" else "totp"
        if not pending and request.args.get("phone"):
            form.phone.data = request.args["phone"][:20]
        return _render_sign_in(form, second=pending is not None)
    if not form.validate():
        # Not a code at all: nothing is checked or counted, but the attempt is on record.
        record_event(db_session(), "totp.verify", result=FAILURE, client_ip=_client_ip(), reason="malformed")
        db_session().commit()
        return _render_sign_in(form, second=pending is not None, status=400)
    if pending:
        resident = db_session().get(Resident, uuid.UUID(pending["resident"]))
        subject = pending["resident"]
    else:
        phone = form.phone_number()
        resident = _resident_by_phone(phone)
        subject = str(resident.id) if resident is not None else phone
    recovery = form.kind.data == "recovery"
    code = form.code.data or ""
    settings = page_settings()

    if recovery:
        check = recovery_check(db_session(), code, key=recovery_code_key(settings), now=now)
    else:
        check = totp_check(db_session(), code, cipher=data_fernet(settings), now=now)
    try:
        authenticate(
            db_session(), _limiter(), resident, check, code=code, subject=subject, client_ip=_client_ip(), now=now
        )
    except LockedOutError as error:
        db_session().commit()
        return render_error(
            429, _("Too many wrong codes. Wait a while before you try again."), retry_after=error.retry_after
        )
    except ResidentLockedError:
        db_session().commit()
        session.pop(SECOND_FACTOR, None)
        return render_error(403, _("This account is locked. Contact the help desk to unlock it."))
    except TotpError as error:
        db_session().commit()
        return _render_sign_in(form, second=pending is not None, status=400, failure=_failure_message(error, pending))
    assert resident is not None  # authenticate refuses every code when there is nobody to check it against
    event = AuthEvent.of(Method.RECOVERY_CODE if recovery else Method.TOTP, issuer=settings.issuer, at=now)
    events = [AuthEvent.from_json(pending["event"]), event] if pending else [event]
    session.pop(SECOND_FACTOR, None)
    cookie_value = open_or_step_up(resident, events, now=now)
    db_session().commit()
    target = safe_next(session.get("next"))
    if recovery and not target:
        # A recovery code was used up: the account page says how many are left and how to set up a new app.
        target = url_for("totp.manage")
    response = redirect(target or url_for("account.overview"), 303)
    carry_over(response, cookie_value)
    return response


def _failure_message(error: TotpError, pending: dict[str, Any] | None) -> str:
    if isinstance(error, TotpCodeReusedError):
        # Only someone who saw a right code can get here, so this says nothing about who has an account.
        return str(_("This code was already used. Wait for the next code in your app."))
    if isinstance(error, RecoveryCodeUsedError):
        return str(_("This recovery code was already used. Each recovery code works once."))
    if pending:
        return _wrong_code_message()
    # The same sentence whether the number is unknown, has no authenticator, or the code is wrong.
    return str(_("The phone number or the code is not right."))


# -- /account/totp -----------------------------------------------------------------------------------------------


def _qr_svg(enrolment: Enrolment) -> Markup:
    # Rendered here as SVG: the secret never leaves the server for a QR service, and no script draws it.
    # No width or height, only a viewBox (omitsize): the page's style sizes it, so it scales down to a 320 px
    # screen instead of being cut off, with the 4-module quiet zone of ISO/IEC 18004 §7.3.8 kept around it.
    qr = segno.make(enrolment.provisioning_uri, error="m")
    svg = qr.svg_inline(border=4, omitsize=True, title=_("QR code for your authenticator app"), svgclass="qr")
    return Markup(svg)  # noqa: S704  (segno's own SVG markup; the URI inside it is encoded as modules)


def _render_manage(
    device: TotpDevice | None,
    login: LoginSession,
    *,
    status: int = 200,
    form: TotpCodeForm | None = None,
    failure: str | None = None,
) -> tuple[str, int]:
    resident = login.resident
    now = request_time()
    recent = recently_signed_in(login, now=now)
    enrolment = None
    if device is not None and not device.is_confirmed:
        if recent and not enrolment_expired(device, now=now):
            # The secret is shown only within the recent sign-in that may finish the set-up.
            enrolment = pending_enrolment_of(
                device, resident, cipher=data_fernet(page_settings()), issuer_name=_issuer_name()
            )
        else:
            device = None  # the page offers to start again
    return (
        render_template(
            "totp.html",
            device=device,
            enrolment=enrolment,
            qr=_qr_svg(enrolment) if enrolment else None,
            remaining=remaining_recovery_codes(db_session(), resident.id) if device and device.is_confirmed else 0,
            report=take_report(),
            sign_in_again=not recent,
            form=form or TotpCodeForm(),
            action_form=ActionForm(),
            failure=failure,
        ),
        status,
    )


@bp.get("/account/totp")
def manage() -> Answer:
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    device = find_device(db_session(), login.resident_id)
    response = _render_manage(device, login)
    db_session().commit()
    return response


def _signed_in_form_post() -> LoginSession | BaseResponse:
    """The signed-in resident's session for a change on /account/totp, or the answer to give instead.

    The change needs a recent sign-in: a session left open on a lost phone must not be able to turn off the
    second factor or take the recovery codes."""
    if not ActionForm().validate():
        return render_error(400, _("This form has expired. Please try again."))
    login = current_login()
    if login is None:
        return redirect(url_for("web.login"), 303)
    if not recently_signed_in(login, now=request_time()):
        return redirect(url_for("web.login", next=url_for("totp.manage")), 303)
    return login


@bp.post("/account/totp/setup")
def setup() -> Answer:
    login = _signed_in_form_post()
    if isinstance(login, BaseResponse):
        return login
    # Already confirmed (a second tab): the page shows the authenticator that counts.
    with contextlib.suppress(TotpAlreadyEnrolledError):
        begin_enrolment(
            db_session(),
            login.resident,
            cipher=data_fernet(page_settings()),
            issuer_name=_issuer_name(),
            now=request_time(),
        )
    db_session().commit()
    return redirect(url_for("totp.manage"), 303)


@bp.post("/account/totp/confirm")
def confirm() -> Answer:
    login = _signed_in_form_post()
    if isinstance(login, BaseResponse):
        return login
    device = find_device(db_session(), login.resident_id)
    if device is None or device.is_confirmed:
        return redirect(url_for("totp.manage"), 303)
    form = TotpCodeForm()
    form.kind.data = "totp"
    if not form.validate():
        return _render_manage(device, login, status=400, form=form)
    now = request_time()
    try:
        confirm_enrolment(
            db_session(),
            device,
            form.code.data or "",
            cipher=data_fernet(page_settings()),
            client_ip=_client_ip(),
            now=now,
        )
    except TotpEnrolmentExpiredError:
        db_session().commit()
        expired = _("This set-up has expired. Start again to get a new QR code.")
        return _render_manage(device, login, status=400, failure=str(expired))
    except TotpError:
        db_session().commit()
        form.code.errors = [_wrong_code_message()]
        return _render_manage(device, login, status=400, form=form)
    codes = generate_recovery_codes(
        db_session(), login.resident_id, key=recovery_code_key(page_settings()), client_ip=_client_ip(), now=now
    )
    db_session().commit()
    return _show_recovery_codes(codes, first=True)


@bp.post("/account/totp/recovery-codes")
def new_recovery_codes() -> Answer:
    login = _signed_in_form_post()
    if isinstance(login, BaseResponse):
        return login
    device = find_device(db_session(), login.resident_id)
    if device is None or not device.is_confirmed:
        return redirect(url_for("totp.manage"), 303)
    codes = generate_recovery_codes(
        db_session(),
        login.resident_id,
        key=recovery_code_key(page_settings()),
        client_ip=_client_ip(),
        now=request_time(),
    )
    db_session().commit()
    return _show_recovery_codes(codes, first=False)


def _show_recovery_codes(codes: list[str], *, first: bool) -> tuple[str, int]:
    # Shown in the answer to the POST, once: only their digests are stored, so no later page can show them.
    return render_template("recovery_codes.html", codes=codes, first=first), 200


@bp.get("/account/totp/remove")
def confirm_remove() -> Answer:
    """Ask once before the authenticator app is removed, saying what stops working."""
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    if not recently_signed_in(login, now=request_time()):
        return redirect(url_for("web.login", next=url_for("totp.manage")), 303)
    device = find_device(db_session(), login.resident_id)
    if device is None or not device.is_confirmed:
        db_session().commit()
        return redirect(url_for("totp.manage"), 303)
    remaining = remaining_recovery_codes(db_session(), login.resident_id)
    db_session().commit()
    page = render_confirmation(
        title=_("Remove the authenticator app?"),
        explanations=[
            ngettext(
                "The codes your app makes and your %(num)d recovery code left will no longer sign you in.",
                "The codes your app makes and your %(num)d recovery codes left will no longer sign you in.",
                remaining,
            ),
            _(
                "You can set up an authenticator app again at any time. Delete the account from the app on your "
                "phone too."
            ),
        ],
        action=url_for("totp.remove"),
        confirm_label=_("Remove the authenticator app"),
        cancel=url_for("totp.manage"),
    )
    return page, 200


@bp.post("/account/totp/remove")
def remove() -> Answer:
    login = _signed_in_form_post()
    if isinstance(login, BaseResponse):
        return login
    if not confirmed():
        return redirect(url_for("totp.confirm_remove"), 303)
    if remove_totp(db_session(), login.resident_id, actor="resident", client_ip=_client_ip(), now=request_time()):
        report("totp_removed")
    db_session().commit()
    return redirect(url_for("totp.manage"), 303)
