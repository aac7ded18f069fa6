"""The provider metadata (OpenID Connect Discovery 1.0 and RFC 8414), built from the settings and the keyring."""

from __future__ import annotations

import json
from typing import Any

from idp.keyring import LoadedKeys
from idp.settings import Settings


def build_metadata(settings: Settings, keys: LoadedKeys) -> dict[str, Any]:
    """The metadata document: only what this provider really serves."""
    issuer = settings.issuer
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks",
        # ID tokens may be signed with any algorithm that has an active key (OIDC Discovery §3).
        "id_token_signing_alg_values_supported": keys.signing_algorithms,
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
