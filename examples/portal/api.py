"""The portal's machine endpoints: the permit API (behind `idp.rp.StepUp`) and the back-channel logout receiver.

Neither reads the session cookie: the API trusts only the bearer token StepUp verified, and logout only a logout
token the IdP signed, so both are exempt from the CSRF check of the pages."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from werkzeug.wrappers import Response

from examples.portal.services import portal
from examples.portal.texts import PURPOSES
from idp.rp import AccessToken, VerificationError

ACCESS_TOKEN_ENVIRON = "idp.rp.access_token"  # noqa: S105  where StepUp leaves the verified token (a key, not a secret)
MAX_ADDRESS_LENGTH = 200

bp = Blueprint("api", __name__)
log = logging.getLogger("portal")


def _error(status: int, error: str, description: str) -> Response:
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/api/permits")
def file_permit() -> Response:
    """File a building-permit application for the resident whose access token StepUp let through."""
    token = request.environ.get(ACCESS_TOKEN_ENVIRON)
    if not isinstance(token, AccessToken):  # only if the app was started without StepUp in front
        return _error(401, "invalid_token", "No verified access token.")
    body = request.get_json(silent=True)
    address = body.get("address") if isinstance(body, dict) else None
    purpose = body.get("purpose") if isinstance(body, dict) else None
    if not isinstance(address, str) or not address.strip() or len(address) > MAX_ADDRESS_LENGTH:
        return _error(400, "invalid_request", "'address' must be 1 to 200 characters.")
    if purpose not in PURPOSES:
        return _error(400, "invalid_request", f"'purpose' must be one of {', '.join(PURPOSES)}.")
    application = portal().permits.file(applicant=token.sub, address=address.strip(), purpose=purpose, acr=token.acr)
    log.info("permit application %s filed (acr=%s)", application["number"], token.acr)
    response = jsonify(application)
    response.status_code = 201
    return response


@bp.post("/backchannel-logout")
def backchannel_logout() -> Response:
    """OpenID Connect Back-Channel Logout 1.0 §2.5–2.8: verify the logout token, end the sessions it names."""
    token = request.form.get("logout_token", "")
    if not token:
        return _error(400, "invalid_request", "Missing 'logout_token'.")
    try:
        logout = portal().verifier.verify_logout_token(token)
    except VerificationError as error:
        log.info("back-channel logout refused: %s", error.reason)
        if error.reason == "idp_unreachable":
            return _error(503, "temporarily_unavailable", "The IdP's keys cannot be read now.")
        return _error(400, "invalid_request", error.description)
    ended = portal().sessions.end_signed_in(sid=logout.sid, sub=logout.sub)
    log.info("back-channel logout: %d session(s) ended", ended)
    response = current_app.response_class(status=200)
    response.headers["Cache-Control"] = "no-store"  # §2.8
    return response
