"""The agency protocol over HTTP (/v1): site authentication, body parsing, faults, and JSON answers only."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import unicodedata
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from idp.phones import normalize_phone
from idp.sandbox.agency import AgencyError, ErrorCode, Method, StartRequest, Verified
from idp.sandbox.faults import SLOW_DELAY, TIMEOUT_DELAY, FaultMode
from idp.sandbox.residents import NAME_MAX_LENGTH, Carrier, ResidentInvalidError, normalize_name, parse_birthdate
from idp.sandbox.runtime import current_sandbox, rfc3339
from idp.sandbox.signing import corrupt_signature

MAX_BODY = 16 * 1024  # bytes; the largest real body (a start) is well under 1 KiB
SESSION_BINDING_MAX_LENGTH = 128
CODE = re.compile(r"[0-9]{6}")
JWKS_MAX_AGE = 300  # seconds; the sandbox key never rotates, but a fresh state folder makes a new one

log = logging.getLogger("idp.sandbox")
bp = Blueprint("agency", __name__, url_prefix="/v1")


def init_app(app: Flask) -> None:
    """Register the /v1 blueprint and the error handlers that keep every /v1 answer JSON."""
    app.register_blueprint(bp)
    app.register_error_handler(AgencyError, render_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


# -- answers -----------------------------------------------------------------------------------------------------


def render_error(error: AgencyError) -> Response:
    response = jsonify(error.to_json())
    response.status_code = error.status
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="sandbox-agency"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _http_error(error: HTTPException) -> Response | HTTPException:
    """Routing and body errors (404, 405, 413 …) as invalid_request JSON; pages keep werkzeug's answer."""
    if not request.path.startswith(("/v1/", "/sandbox/")):
        return error
    status = error.code or 400
    # An oversized body is a malformed request like any other, in the protocol's vocabulary.
    if status == 413:
        status = 400
    message = {404: "No such endpoint.", 405: "This endpoint does not accept that method."}.get(
        status, "The request is malformed."
    )
    response = render_error(AgencyError(ErrorCode.INVALID_REQUEST, message, status=status))
    if status == 405 and error.valid_methods:  # type: ignore[attr-defined]  # set on MethodNotAllowed only
        response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return response


def _unexpected_error(error: Exception) -> Response:
    """A bug must not leak as HTML or a 500: the protocol's caller can only act on agency_unavailable."""
    log.exception("unexpected error on %s %s", request.method, request.path)
    if request.path.startswith("/v1/"):
        return render_error(
            AgencyError(ErrorCode.AGENCY_UNAVAILABLE, "The agency failed to answer; try again.", retryable=True)
        )
    response = jsonify({"error": "server_error", "message": "The sandbox failed; see its log."})
    response.status_code = 500
    return response


@bp.after_request
def _no_store(response: Response) -> Response:
    # Results are single-use credentials: no cache may keep them.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# -- checks before every verification request --------------------------------------------------------------------


@bp.before_request
def _faults_then_authentication() -> None:
    if request.endpoint == "agency.jwks":
        return
    sandbox = current_sandbox()
    # Faults come before authentication: a down agency answers nobody, whatever they send.
    fault = sandbox.faults.take_request_fault()
    if fault is FaultMode.DOWN:
        raise AgencyError(ErrorCode.AGENCY_UNAVAILABLE, "The agency is temporarily unavailable.", retryable=True)
    if fault is FaultMode.TIMEOUT:
        sandbox.sleep(TIMEOUT_DELAY)
    elif fault is FaultMode.SLOW:
        sandbox.sleep(SLOW_DELAY)
    _authenticate(sandbox.site_code, sandbox.site_secret)


def _authenticate(site_code: str, site_secret: str) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given_site = request.headers.get("X-Site-Code", "")
    # Both comparisons always run, in constant time, so timing tells nothing about which one failed.
    secret_ok = hmac.compare_digest(token.strip().encode(), site_secret.encode())
    site_ok = hmac.compare_digest(given_site.encode(), site_code.encode())
    if not (scheme.lower() == "bearer" and secret_ok and site_ok):
        raise AgencyError(
            ErrorCode.INVALID_REQUEST,
            "The request needs the site's bearer secret and X-Site-Code.",
            status=401,
        )


# -- endpoints ---------------------------------------------------------------------------------------------------


@bp.post("/verifications")
def start() -> tuple[Response, int]:
    started = current_sandbox().agency.start(_parse_start(_json_object()))
    body: dict[str, Any] = {
        "txn_id": started.txn_id,
        "method": started.method.value,
        "expires_at": rfc3339(started.expires_at),
        "resend_after": rfc3339(started.resend_after),
        "sends_remaining": started.sends_remaining,
        "attempts_remaining": started.attempts_remaining,
    }
    if started.match_number is not None:
        body["match_number"] = started.match_number
    return jsonify(body), 201


@bp.post("/verifications/<txn_id>/confirm")
def confirm(txn_id: str) -> Response:
    code = _json_object().get("code")
    if not isinstance(code, str) or not CODE.fullmatch(code):
        raise _invalid("code must be a string of 6 digits.")
    return _verified(current_sandbox().agency.confirm(txn_id, code))


@bp.get("/verifications/<txn_id>")
def poll(txn_id: str) -> Response:
    outcome = current_sandbox().agency.poll(txn_id)
    if isinstance(outcome, Verified):
        return _verified(outcome)
    return jsonify({"status": "pending", "expires_at": rfc3339(outcome.expires_at)})


@bp.post("/verifications/<txn_id>/resend")
def resend(txn_id: str) -> Response:
    _json_object(allow_empty=True)
    resent = current_sandbox().agency.resend(txn_id)
    return jsonify(
        {
            "expires_at": rfc3339(resent.expires_at),
            "resend_after": rfc3339(resent.resend_after),
            "sends_remaining": resent.sends_remaining,
            "attempts_remaining": resent.attempts_remaining,
        }
    )


@bp.post("/verifications/<txn_id>/cancel")
def cancel(txn_id: str) -> Response:
    _json_object(allow_empty=True)
    current_sandbox().agency.cancel(txn_id)
    return jsonify({"status": "cancelled"})


@bp.get("/jwks")
def jwks() -> Response:
    response = jsonify(current_sandbox().agency.keys.jwks())
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response


def _verified(outcome: Verified) -> Response:
    result = outcome.result
    if current_sandbox().faults.take_corruption():
        result = corrupt_signature(result)
    return jsonify({"status": "verified", "result": result})


# -- parsing -----------------------------------------------------------------------------------------------------


def _json_object(*, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as {} where the endpoint takes no fields."""
    raw = request.get_data(cache=False)  # MAX_CONTENT_LENGTH turns an oversized body into a 413 first
    if allow_empty and not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid("The body must be a JSON object in UTF-8.") from None
    if not isinstance(data, dict):
        raise _invalid("The body must be a JSON object.")
    return data


def _parse_start(data: dict[str, Any]) -> StartRequest:
    """Check every field's type and form; the order of the checks after this is the agency's."""
    try:
        carrier = Carrier(_string(data, "carrier"))
    except ValueError:
        raise _invalid(f"carrier must be one of {', '.join(Carrier)}.") from None
    name = normalize_name(_string(data, "name"))
    if not name or len(name) > NAME_MAX_LENGTH or any(unicodedata.category(c).startswith("C") for c in name):
        raise _invalid(f"name must be 1 to {NAME_MAX_LENGTH} printable characters.")
    birthdate = _string(data, "birthdate")
    try:
        parse_birthdate(birthdate)
    except ResidentInvalidError as exc:
        raise _invalid(str(exc)) from None
    rrn_digit7 = _string(data, "rrn_digit7")
    if len(rrn_digit7) != 1 or rrn_digit7 not in "12345678":
        raise _invalid("rrn_digit7 must be one digit from 1 to 8.")
    phone = _string(data, "phone")
    try:
        e164 = normalize_phone(phone)
    except ValueError:
        e164 = ""
    # The protocol takes E.164 only; forms a resident types are the IdP's to normalise.
    if phone != e164:
        raise _invalid("phone must be an E.164 Korean mobile number such as +821012345678.")
    try:
        method = Method(_string(data, "method"))
    except ValueError:
        raise _invalid("method must be sms or app.") from None
    session_binding = _string(data, "session_binding")
    if not 1 <= len(session_binding) <= SESSION_BINDING_MAX_LENGTH:
        raise _invalid(f"session_binding must be 1 to {SESSION_BINDING_MAX_LENGTH} characters.")
    client_ip = _string(data, "client_ip")
    try:
        ipaddress.ip_address(client_ip)
    except ValueError:
        raise _invalid("client_ip must be an IPv4 or IPv6 address.") from None
    if data.get("consent") is not True:
        raise _invalid("consent must be true: the resident has to agree to the agency's terms.")
    return StartRequest(
        carrier=carrier,
        name=name,
        birthdate=birthdate,
        rrn_digit7=rrn_digit7,
        phone=phone,
        method=method,
        session_binding=session_binding,
        client_ip=client_ip,
    )


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _invalid(f"{key} is required and must be a string.")
    return value


def _invalid(message: str) -> AgencyError:
    return AgencyError(ErrorCode.INVALID_REQUEST, message)
