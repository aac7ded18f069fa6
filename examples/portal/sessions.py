"""Server-side sessions: the browser's cookie holds only a random id, and the data stays here, so that a
back-channel logout (which arrives without the browser's cookie) can end the sessions of a `sid` or `sub`."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Request
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.wrappers import Response

SESSION_ID_BYTES = 32  # 256 random bits: unguessable, so the id alone is the bearer of the session
SESSION_LIFETIME = 8 * 3600  # seconds a session lives without a request; the IdP's own session may end sooner
USER_KEY = "user"  # where the views keep who signed in: {"sub", "sid", ...}


@dataclass
class _Entry:
    data: dict[str, Any]
    expires_at: float


class SessionStore:
    """Sessions in this process's memory, safe across threads.

    One process is enough for the sample; a service with several processes or machines keeps the same four
    operations on a shared store (Redis, its database) instead."""

    def __init__(self, *, lifetime: int = SESSION_LIFETIME, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._lifetime = lifetime
        self._clock = clock

    def load(self, session_id: str) -> dict[str, Any] | None:
        """A copy of the session's data, or None when it never existed, expired or was ended; a session that is
        used lives on (its lifetime counts from its last request)."""
        with self._lock:
            entry = self._entries.get(session_id)
            now = self._clock()
            if entry is None:
                return None
            if entry.expires_at <= now:
                del self._entries[session_id]
                return None
            entry.expires_at = now + self._lifetime
            return dict(entry.data)

    def save(self, session_id: str, data: dict[str, Any], *, create: bool) -> bool:
        """Store `data` under `session_id`; whether it was stored.

        Without `create`, only a session that still exists is replaced: a request that loaded a session before a
        back-channel logout ended it must not bring it back when it saves."""
        with self._lock:
            if not create and session_id not in self._entries:
                return False
            self._entries[session_id] = _Entry(dict(data), self._clock() + self._lifetime)
            return True

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def end_signed_in(self, *, sid: str | None, sub: str | None) -> int:
        """End the sessions a logout token names; how many ended.

        Back-Channel Logout 1.0 §2.7: with a `sid`, the sessions of that IdP session (and of its `sub` when the token
        names one too); with only a `sub`, every session of that resident."""
        if sid is None and sub is None:
            return 0
        with self._lock:
            ended = [key for key, entry in self._entries.items() if _names(entry.data.get(USER_KEY), sid, sub)]
            for key in ended:
                del self._entries[key]
            self._sweep()
            return len(ended)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _sweep(self) -> None:
        now = self._clock()
        for key in [key for key, entry in self._entries.items() if entry.expires_at <= now]:
            del self._entries[key]


def _names(user: object, sid: str | None, sub: str | None) -> bool:
    if not isinstance(user, dict):
        return False
    if sid is not None and user.get("sid") != sid:
        return False
    return sub is None or user.get("sub") == sub


class ServerSideSession(SessionMixin):
    """Flask's `session` for one request: the data of one store entry, and the id it is kept under."""

    def __init__(self, session_id: str | None, data: dict[str, Any] | None = None) -> None:
        self.session_id = session_id
        self._data = data or {}
        self.modified = False
        self.renewed = False

    def renew(self) -> None:
        """Keep the data under a new id (at sign-in, so an id planted before it is worth nothing: session fixation)."""
        self.renewed = True
        self.modified = True

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
        self.modified = True

    def data(self) -> dict[str, Any]:
        return self._data


@dataclass
class ServerSideSessions(SessionInterface):
    """A Flask session interface over a `SessionStore`: the cookie carries the session id and nothing else."""

    store: SessionStore = field(default_factory=SessionStore)

    def open_session(self, app: Flask, request: Request) -> ServerSideSession:
        session_id = request.cookies.get(self.get_cookie_name(app))
        data = self.store.load(session_id) if session_id else None
        if data is None:
            return ServerSideSession(None)
        return ServerSideSession(session_id, data)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSideSession)
        if not session.data():
            if session.session_id is not None:
                self.store.delete(session.session_id)
                self._set_cookie(app, response, None)
            return
        if not session.modified:
            return
        create = session.session_id is None or session.renewed
        if session.renewed and session.session_id is not None:
            self.store.delete(session.session_id)
        if create:
            session.session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        assert session.session_id is not None
        stored = self.store.save(session.session_id, session.data(), create=create)
        self._set_cookie(app, response, session.session_id if stored else None)

    def _set_cookie(self, app: Flask, response: Response, session_id: str | None) -> None:
        """Set the cookie to `session_id`, or delete it (None); HttpOnly, SameSite and Secure from the app's config."""
        name, domain, path = self.get_cookie_name(app), self.get_cookie_domain(app), self.get_cookie_path(app)
        secure, httponly = self.get_cookie_secure(app), self.get_cookie_httponly(app)
        samesite = self.get_cookie_samesite(app)
        if session_id is None:
            response.delete_cookie(name, domain=domain, path=path, secure=secure, httponly=httponly, samesite=samesite)
        else:
            response.set_cookie(
                name, session_id, domain=domain, path=path, secure=secure, httponly=httponly, samesite=samesite
            )
        response.vary.add("Cookie")
