"""idp: the Gyeonggi-do residents' OpenID Connect identity provider.

`create_app` lives in `idp.app` and is imported on first use: relying services import `idp.rp` without Flask or
anything else of the server installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from idp.app import create_app as create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from idp.app import create_app

        return create_app
    raise AttributeError(f"module 'idp' has no attribute {name!r}")
