"""Sign-in pages: /login and the mobile-carrier verification flow (/login/carrier)."""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from babel.dates import format_datetime
from cryptography.fernet import InvalidToken
from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from flask_babel import get_locale, ngettext
from flask_babel import gettext as _
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse

from idp.authn.assurance import AuthEvent
from idp.authn.carrier import (
    CarrierErrorCode,
    CarrierVerificationError,
    Pending,
    Transaction,
    VerificationMethod,
    VerificationRequest,
    VerifiedIdentity,
    session_binding_for,
)
from idp.authn.residents import AccountOutcome, ResidentLockedError
from idp.authn.sessions import sign_in_resident
from idp.authn.verification import (
    CarrierSignIn,
    cancel_verification,
    check_approval,
    confirm_code,
    resend_code,
    sign_in,
    start_verification,
)
from idp.logs import mask_phone
from idp.models import Resident
from idp.oidc.clients import find_client
from idp.oidc.consent import hold_raw_ci
from idp.oidc.interaction import authorize_url, carry_over, current_login, hold_ci, waiting_by_key, waiting_client
from idp.phones import normalize_phone
from idp.runtime import current, db_session, reading_only, request_time
from idp.settings import data_fernet
from idp.web import LOCALES, page_settings, render_error
from idp.web.forms import CARRIER_LABELS, KOREA, ActionForm, CarrierStartForm, CodeForm

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

FLOW_KEY = "carrier"
SECOND_FACTOR = "second_factor"  # a carrier sign-in waiting for the resident's TOTP code
SECOND_FACTOR_TTL = dt.timedelta(minutes=5)
MAX_NEXT = 8192  # an /authorize request with all its parameters fits (the flow cookie caps it lower)
# What the resident typed on the carrier form waits (encrypted) this long to fill the form again after a failure.
TYPED_TTL = dt.timedelta(minutes=30)
CANCELLED = "cancelled"  # the resident's own ending of a verification, beside the agency's error codes
SHORT_WAIT = 60  # seconds; waits up to this are counted in seconds, up to an hour in minutes, then a clock time
LONG_WAIT = 3600


def _service() -> CarrierSignIn:
    return current().carrier


def _client_ip() -> str:
    # WSGI servers always give REMOTE_ADDR; the fallback only keeps the type honest.
    return request.remote_addr or "0.0.0.0"  # noqa: S104  (an address to report, not to bind)


def safe_next(target: str | None) -> str | None:
    """Only a path on this server: an open redirect would make the login page a phishing tool.

    Browsers drop tabs and newlines anywhere in a URL and strip leading spaces and controls (WHATWG URL §4.4), so
    `/<TAB>/evil.example` is `//evil.example` to them: only printable ASCII without spaces is accepted, parsed
    with no scheme and no host, and starting with one slash."""
    if not target or len(target) > MAX_NEXT or not target.isascii() or not target.isprintable():
        return None
    if " " in target or "\\" in target or not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _see_other(endpoint: str, **values: Any) -> BaseResponse:
    return redirect(url_for(endpoint, **values), 303)


def error_message(error: CarrierVerificationError, *, method: str = VerificationMethod.SMS.value) -> str:
    """What the resident reads: what happened and what to do, never whether a number has an account."""
    code = error.code
    if code is CarrierErrorCode.EXPIRED and method == VerificationMethod.APP.value:
        return str(_("The approval request in the carrier's app has expired. Send the request again."))
    if code is CarrierErrorCode.EXPIRED and not error.retryable:
        return str(_("The code has expired, and no more codes can be sent for this request. Send the request again."))
    messages = {
        CarrierErrorCode.WRONG_CODE: _("The code is not right. Check the text message and try again."),
        CarrierErrorCode.EXPIRED: _("The code has expired. Ask for a new code."),
        CarrierErrorCode.TOO_MANY_ATTEMPTS: _(
            "A wrong code was entered too many times, so this verification has ended. Send the request again."
        ),
        CarrierErrorCode.RATE_LIMITED: _("Too many verification requests. Try again later."),
        CarrierErrorCode.IDENTITY_MISMATCH: _(
            "The carrier could not confirm these details. Check your name, birth date, the resident number "
            "digit and the phone number."
        ),
        CarrierErrorCode.CARRIER_MISMATCH: _("This phone number is not with the carrier you chose."),
        CarrierErrorCode.NOT_ELIGIBLE: _(
            "This line cannot be used for verification (for example a company line, or no carrier app). "
            "Try a text message or another line."
        ),
        CarrierErrorCode.USER_DENIED: _(
            "You declined the request in the carrier's app. If it was you who asked, send the request again."
        ),
        CarrierErrorCode.NUMBER_MISMATCH: _(
            "A different number from the one on this page was picked in the carrier's app, so the request was "
            "stopped to keep your account safe. Send the request again and pick the number this page shows."
        ),
        CarrierErrorCode.INTEGRITY_FAILED: _("The verification result could not be trusted. Please start again."),
        CarrierErrorCode.REPLAYED: _("This verification was already used. Please start again."),
        CarrierErrorCode.AGENCY_UNAVAILABLE: _("The carrier verification service is not available right now."),
        CarrierErrorCode.AGENCY_TIMEOUT: _("The carrier verification service is not answering right now."),
        CarrierErrorCode.INVALID_REQUEST: _("The verification could not continue. Please start again."),
    }
    return str(messages[code])


def wait_text(seconds: int, *, now: dt.datetime) -> str:
    """When the resident may try again: in seconds or minutes for short waits, as a Korea-time clock time beyond
    an hour ("내일 오전 9시부터")."""
    if seconds <= SHORT_WAIT:
        return str(ngettext("You can try again in %(num)s second.", "You can try again in %(num)s seconds.", seconds))
    if seconds <= LONG_WAIT:
        minutes = math.ceil(seconds / 60)
        return str(ngettext("You can try again in %(num)s minute.", "You can try again in %(num)s minutes.", minutes))
    return str(
        _("You can try again from %(when)s.", when=korea_clock_time(now + dt.timedelta(seconds=seconds), now=now))
    )


def korea_clock_time(moment: dt.datetime, *, now: dt.datetime) -> str:
    """`moment` as residents read a time: Korea time, to the minute (rounded up), with today, tomorrow or a date."""
    local = moment.astimezone(KOREA)
    if local.second or local.microsecond:
        local = local.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    # Babel date patterns, translated so that Korean reads 오전 9시 and 오전 9시 5분, English 9 AM and 9:05 AM.
    pattern = _("h a") if local.minute == 0 else _("h:mm a")
    time = format_datetime(local, pattern, tzinfo=KOREA, locale=get_locale())
    days = (local.date() - now.astimezone(KOREA).date()).days
    if days == 0:
        return str(_("today at %(time)s", time=time))
    if days == 1:
        return str(_("tomorrow at %(time)s", time=time))
    day = format_datetime(local, _("MMMM d"), tzinfo=KOREA, locale=get_locale())
    return str(_("%(date)s at %(time)s", date=day, time=time))


def _retry_text(error: CarrierVerificationError) -> str | None:
    if not error.retry_after:
        return None
    return wait_text(error.retry_after, now=request_time())


def _resend_wait_text(count: int, wait: int | str | None = None) -> str:
    # `wait` may be the placeholder the countdown script fills in ("{n}"); `count` then chooses the plural form.
    return str(
        ngettext(
            "You can ask for a new code in %(wait)s second.",
            "You can ask for a new code in %(wait)s seconds.",
            count,
            wait=count if wait is None else wait,
        )
    )


def _agency_down(error: CarrierVerificationError) -> bool:
    return error.code in (CarrierErrorCode.AGENCY_UNAVAILABLE, CarrierErrorCode.AGENCY_TIMEOUT)


# Why a signed-in resident is asked to sign in again (/authorize's `reason`), translated only when shown.
SIGN_IN_REASONS: dict[str, Callable[[], str]] = {
    "acr_too_low": lambda: _("The service asks for a stronger sign-in. Sign in with your passkey."),
    "prompt_login": lambda: _("The service asks you to sign in again."),
    "max_age": lambda: _("The service asks you to sign in again."),
    "carrier_verification": lambda: _("The service needs your identity confirmed: sign in with your mobile phone."),
}


@bp.get("/login")
def login() -> str | BaseResponse:
    """The ways to sign in, strongest first."""
    reading_only()  # the service's name is all this page reads: no transaction for it
    target = safe_next(request.args.get("next"))
    if target and session.get("next") != target:  # unchanged, the flow cookie is not signed and sent again
        session["next"] = target
    # OIDC login_hint: a phone number the service already knows fills the field (anything else is ignored).
    hint = (request.args.get("login_hint") or "")[:40]
    try:
        phone = normalize_phone(hint) if hint else ""
    except ValueError:
        phone = ""
    reason = SIGN_IN_REASONS.get(request.args.get("reason", ""))
    return render_template("login.html", phone=phone, reason=reason() if reason else None)


@bp.route("/login/carrier", methods=["GET", "POST"])
def carrier_start() -> str | BaseResponse | tuple[str, int]:
    if request.method == "GET":
        reading_only()
        return _render_start_again() or render_template(
            "carrier_start.html", form=_blank_start_form(), carriers=CARRIER_LABELS
        )
    form = CarrierStartForm()
    if not form.validate():
        return render_template("carrier_start.html", form=form, carriers=CARRIER_LABELS), 400
    binding_secret = secrets.token_urlsafe(32)
    details = form.details()
    verification = VerificationRequest(
        carrier=details.carrier,
        name=details.name,
        birthdate=details.birthdate,
        rrn_digit7=details.rrn_digit7,
        phone=details.phone,
        method=details.method,
        session_binding=session_binding_for(binding_secret),
        client_ip=_client_ip(),
    )
    now = request_time()
    try:
        transaction = start_verification(db_session(), _service(), verification, now=now)
    except CarrierVerificationError as error:
        db_session().commit()
        status = 503 if _agency_down(error) else 429 if error.retry_after else 400
        return (
            render_template(
                "carrier_start.html",
                form=form,
                carriers=CARRIER_LABELS,
                failure=error_message(error),
                retry=_retry_text(error),
                agency_down=_agency_down(error),
            ),
            status,
        )
    db_session().commit()
    session[FLOW_KEY] = {
        "txn": transaction.txn_id,
        "method": transaction.method.value,
        "phone": verification.phone,
        "match": transaction.match_number,
        "binding": binding_secret,
        "typed": _seal_typed(form.typed()),
        **_timing(transaction, now),
    }
    return _see_other("web.carrier_verify")


def _blank_start_form() -> CarrierStartForm:
    form = CarrierStartForm()
    # The phone number typed on /login comes along, so the resident does not type it twice.
    form.phone.data = (request.args.get("phone") or "")[:20] or None
    return form


def _render_start_again() -> str | None:
    """The form after a verification ended (shown once): why it ended, and what the resident typed, filled in."""
    ending = session.pop("carrier_failure", None)
    method = session.pop("carrier_method", VerificationMethod.SMS.value)
    retry_after = session.pop("carrier_retry", None)
    typed = _open_typed(session.pop("carrier_typed", None))
    if ending is None:
        return None
    form = _blank_start_form()
    if typed:
        form = CarrierStartForm(
            data={**typed, "consent_terms": True, "consent_collection": True, "consent_provision": True}
        )
    if ending == CANCELLED:
        failure, retry, down = str(_("You cancelled the verification.")), None, False
    else:
        try:
            error = CarrierVerificationError(
                CarrierErrorCode(ending),
                retryable=False,
                retry_after=retry_after if isinstance(retry_after, int) else None,
            )
        except ValueError:
            return None
        failure, retry, down = error_message(error, method=str(method)), _retry_text(error), _agency_down(error)
    if typed:
        failure += " " + str(_("What you entered is still filled in below: check it and send the request again."))
    return render_template(
        "carrier_start.html", form=form, carriers=CARRIER_LABELS, failure=failure, retry=retry, agency_down=down
    )


def _seal_typed(typed: dict[str, str]) -> str:
    # Encrypted, not only signed: the flow cookie can be read by whoever holds it, and the details include the
    # registration digit, which must never be readable outside the form and the agency's request.
    return data_fernet(page_settings()).encrypt(json.dumps(typed).encode()).decode()


def _open_typed(sealed: object) -> dict[str, str] | None:
    if not isinstance(sealed, str):
        return None
    try:
        plain = data_fernet(page_settings()).decrypt(sealed.encode(), ttl=int(TYPED_TTL.total_seconds()))
        typed = json.loads(plain)
    except (InvalidToken, ValueError):
        return None
    if not isinstance(typed, dict):
        return None
    return {str(key): str(value) for key, value in typed.items()}


def _timing(transaction: Transaction, now: dt.datetime) -> dict[str, Any]:
    """What the code page needs to show time: when the code expires and how long it lives, when a new one may be
    asked for, and how many more may be sent."""
    lifetime = max(60, round((transaction.expires_at - now).total_seconds() / 60) * 60)
    return {
        "expires_at": transaction.expires_at.isoformat(),
        "lifetime": lifetime,
        "resend_after": transaction.resend_after.isoformat() if transaction.resend_after else None,
        "sends": transaction.sends_remaining,
    }


def _end_flow(flow: dict[str, Any], ending: str, *, retry_after: int | None = None) -> BaseResponse:
    """The verification is over: back to the form, which says why and is filled with what the resident typed."""
    session.pop(FLOW_KEY, None)
    session["carrier_failure"] = ending
    session["carrier_method"] = flow.get("method", VerificationMethod.SMS.value)
    if flow.get("typed"):
        session["carrier_typed"] = flow["typed"]
    if retry_after:
        session["carrier_retry"] = retry_after
    return _see_other("web.carrier_start")


def _flow() -> dict[str, Any] | None:
    flow = session.get(FLOW_KEY)
    return flow if isinstance(flow, dict) and "txn" in flow else None


def _render_verify(flow: dict[str, Any], status: int = 200, **context: Any) -> tuple[str, int]:
    now = request_time()
    remaining = _seconds_until(flow.get("expires_at"), now)
    resend_wait = _seconds_until(flow.get("resend_after"), now)
    lifetime_minutes = max(1, int(flow.get("lifetime") or 180) // 60)
    return (
        render_template(
            "carrier_verify.html",
            flow=flow,
            masked_phone=mask_phone(flow["phone"]),
            code_form=context.pop("code_form", None) or CodeForm(),
            action_form=ActionForm(),
            remaining=remaining,
            lifetime=lifetime_minutes,
            resend_wait=resend_wait,
            resend_wait_text=_resend_wait_text(resend_wait) if resend_wait else None,
            resend_wait_one=_resend_wait_text(1, "{n}"),
            resend_wait_other=_resend_wait_text(2, "{n}"),
            can_resend=flow.get("sends") != 0,
            **context,
        ),
        status,
    )


def _seconds_until(moment: object, now: dt.datetime) -> int:
    if not isinstance(moment, str):
        return 0
    try:
        until = dt.datetime.fromisoformat(moment)
    except ValueError:
        return 0
    return max(0, math.ceil((until - now).total_seconds()))


@bp.get("/login/carrier/verify")
def carrier_verify() -> tuple[str, int] | BaseResponse:
    reading_only()
    flow = _flow()
    if flow is None:
        return _see_other("web.carrier_start")
    return _render_verify(flow, sent=request.args.get("sent") == "1")


@bp.post("/login/carrier/verify")
def carrier_verify_post() -> tuple[str, int] | BaseResponse | Response:
    flow = _flow()
    if flow is None:
        return render_error(400, _("This verification has ended. Please start again."))
    action = request.form.get("action", "confirm")
    service, now, ip = _service(), request_time(), _client_ip()
    if action == "cancel":
        if not ActionForm().validate():
            return _render_verify(flow, 400, failure=_("This form has expired. Please try again."))
        cancel_verification(service, flow["txn"])
        return _end_flow(flow, CANCELLED)
    if action == "resend":
        if not ActionForm().validate():
            return _render_verify(flow, 400, failure=_("This form has expired. Please try again."))
        try:
            transaction = resend_code(db_session(), service, flow["txn"], phone=flow["phone"], client_ip=ip, now=now)
        except CarrierVerificationError as error:
            db_session().commit()
            if error.code is CarrierErrorCode.RATE_LIMITED and error.retry_after and error.retry_after <= SHORT_WAIT:
                # Asked before the agency allows another code: say when, not "too many requests".
                return _render_verify(flow, 429, failure=_resend_wait_text(error.retry_after))
            return _verify_failed(flow, error)
        db_session().commit()
        flow.update(_timing(transaction, now))
        session[FLOW_KEY] = flow
        return _see_other("web.carrier_verify", sent="1")
    try:
        outcome: VerifiedIdentity | Pending
        if flow["method"] == VerificationMethod.APP.value:
            if not ActionForm().validate():
                return _render_verify(flow, 400, failure=_("This form has expired. Please try again."))
            outcome = check_approval(db_session(), service, flow["txn"], binding_secret=flow["binding"], client_ip=ip)
            if isinstance(outcome, Pending):
                db_session().commit()
                return _render_verify(flow, 200, pending=True)
        else:
            form = CodeForm()
            if not form.validate():
                return _render_verify(flow, 400, code_form=form)
            outcome = confirm_code(
                db_session(),
                service,
                flow["txn"],
                form.code.data or "",
                binding_secret=flow["binding"],
                client_ip=ip,
                now=now,
            )
    except CarrierVerificationError as error:
        db_session().commit()
        return _verify_failed(flow, error)
    return _finish_sign_in(outcome)


def _verify_failed(flow: dict[str, Any], error: CarrierVerificationError) -> tuple[str, int] | BaseResponse:
    if not error.retryable or error.code is CarrierErrorCode.TOO_MANY_ATTEMPTS:
        # The transaction is over: the resident starts again from the form, which says why.
        return _end_flow(flow, error.code.value, retry_after=error.retry_after)
    status = 503 if _agency_down(error) else 429 if error.retry_after else 400
    return _render_verify(
        flow,
        status,
        failure=error_message(error, method=flow["method"]),
        retry=_retry_text(error),
        attempts=error.attempts_remaining,
        agency_down=_agency_down(error),
    )


def _finish_sign_in(identity: VerifiedIdentity) -> BaseResponse | Response:
    now = request_time()
    ci_client = raw_ci_client(db_session(), session.get("next"))
    try:
        signed_in = sign_in(
            db_session(),
            _service(),
            identity,
            current=current_login(),
            client_ip=_client_ip(),
            user_agent=request.headers.get("User-Agent"),
            now=now,
        )
    except ResidentLockedError:
        db_session().commit()
        session.pop(FLOW_KEY, None)
        return render_error(403, _("This account is locked. Contact the help desk to unlock it."))
    db_session().commit()
    session.pop(FLOW_KEY, None)
    if ci_client is not None:
        # The raw CI waits (encrypted, in this browser's flow) for the resident to allow kr_ci to that service.
        resident_id = signed_in.account.resident.id
        hold_ci(hold_raw_ci(identity.ci, resident_id=resident_id, client_id=ci_client, settings=page_settings()))
    if signed_in.session is None:
        # The resident set up TOTP: the carrier verification is the first factor, the code finishes it.
        session[SECOND_FACTOR] = {
            "resident": str(signed_in.account.resident.id),
            "event": signed_in.event.to_json(),
            "expires_at": (now + SECOND_FACTOR_TTL).isoformat(),
        }
        return _see_other("totp.sign_in")
    target = safe_next(session.get("next"))
    if signed_in.account.outcome is AccountOutcome.CREATED:
        response = _see_other("web.welcome")
        carry_over(response, signed_in.cookie_value)
        session["welcome"] = True
        if target:
            session["next"] = target
        return response
    response = redirect(target or url_for("account.overview"), 303)
    carry_over(response, signed_in.cookie_value)
    return response


def open_or_step_up(resident: Resident, events: list[AuthEvent], *, now: dt.datetime) -> str | None:
    """Sign `resident` in after `events` in this browser (step-up when it is the same resident's session); the
    new session's cookie value, or None."""
    _, cookie_value = sign_in_resident(
        db_session(),
        resident,
        events,
        current=current_login(),
        client_ip=_client_ip(),
        user_agent=request.headers.get("User-Agent"),
        issuer=page_settings().issuer,
        now=now,
    )
    return cookie_value


def raw_ci_client(db_session: Session, target: str | None) -> str | None:
    """The client whose authorization request for `kr_ci` the sign-in continues, if an admin allowed it kr_ci."""
    if not target or not target.startswith("/authorize?"):
        return None
    query = dict(parse_qsl(urlsplit(target).query))
    if "kr_ci" not in query.get("scope", "").split():
        return None
    client = find_client(db_session, query.get("client_id", ""))
    return client.id if client is not None and "kr_ci" in client.scopes else None


@bp.get("/login/welcome")
def welcome() -> str | BaseResponse:
    """After the first verification: the account exists; add a passkey right here, then go on to the service."""
    # Kept (not popped) so the language switch can show the page again; the next sign-in clears the flow cookie.
    if session.get("welcome") is not True:
        return _see_other("account.overview")
    target = safe_next(session.get("next"))
    service = waiting_client(db_session(), target)
    return render_template("welcome.html", next=target or url_for("account.overview"), service=service)


@bp.get("/language")
def language() -> BaseResponse:
    """The language switch: the resident's choice (it outranks a service's `ui_locales` and the browser's), then
    back to the page it was pressed on, an authorization request in progress unchanged."""
    chosen = request.args.get("to", "")
    if chosen in LOCALES:
        session["locale"] = chosen
    waiting = waiting_by_key(request.args.get("request", ""))
    if waiting is not None:
        return redirect(authorize_url(waiting), 303)
    return redirect(safe_next(request.args.get("back")) or url_for("web.login"), 303)
