"""The provider metadata (OpenID Connect Discovery 1.0 and RFC 8414), built from the settings and the keyring."""

from __future__ import annotations

import json
from typing import Any

from idp.authn.assurance import acr_order
from idp.keyring import LoadedKeys
from idp.oidc.claims import AUTH_METHODS, GRANT_TYPES, IDENTITY_TRUST_FRAMEWORK, SCOPES, SUBJECT_TYPES
from idp.settings import Settings

ASSERTION_ALGORITHMS = ["RS256", "ES256"]


def build_metadata(settings: Settings, keys: LoadedKeys) -> dict[str, Any]:
    """The metadata document: only what this provider really serves (OIDC Discovery §3, RFC 8414 §2)."""
    issuer = settings.issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "introspection_endpoint": f"{issuer}/introspect",
        "revocation_endpoint": f"{issuer}/revoke",
        "end_session_endpoint": f"{issuer}/logout",
        "registration_endpoint": f"{issuer}/register",
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": list(SUBJECT_TYPES),
        # ID tokens may be signed with any algorithm that has an active key (OIDC Discovery §3).
        "id_token_signing_alg_values_supported": keys.signing_algorithms,
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": [m for m in AUTH_METHODS if m != "none"],
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
        # private_key_jwt assertions: the algorithms the token endpoint verifies (RFC 8414 §2).
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "claims_parameter_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "acr",
            "amr",
            "sid",
            "name",
            "birthdate",
            "phone_number",
            "phone_number_verified",
            "kr_ci",
            "verified_claims",
        ],
        "acr_values_supported": acr_order(issuer),
        "prompt_values_supported": ["none", "login", "consent"],
        "ui_locales_supported": ["ko", "en"],
        "claims_locales_supported": ["ko"],
        # RFC 9207: every authorization response carries `iss`.
        "authorization_response_iss_parameter_supported": True,
        "trust_frameworks_supported": [IDENTITY_TRUST_FRAMEWORK],
        "claims_in_verified_claims_supported": ["name", "birthdate"],
        "verified_claims_supported": True,
    }


class MetadataCache:
    """The metadata rendered once per keyring version, so discovery costs no work per request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._for: LoadedKeys | None = None
        self._body = b""

    def body(self, keys: LoadedKeys) -> bytes:
        if keys is not self._for:
            document = build_metadata(self.settings, keys)
            self._body = json.dumps(document, separators=(",", ":")).encode()
            self._for = keys
        return self._body
