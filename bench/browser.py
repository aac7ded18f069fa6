"""A lean HTTP/1.1 client on asyncio streams for the whole-sign-in bench: a browser (cookie jar, one keep-alive
connection per sign-in) and a service's back end (one keep-alive connection, reused).

Why not aiohttp or httpx: the load generator shares two cores with the IdP's workers and PostgreSQL, so every
microsecond it spends is taken from what it measures. This client does only what the sign-in flows need
(Content-Length and chunked bodies, keep-alive, Set-Cookie without domains or paths, since everything is one host)
and nothing per request that is not needed: requests are built as one bytes object and written at once,
responses parsed with `bytes.split`. Redirects are the caller's to follow, as each step checks where it leads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

HEAD_LIMIT = 64 * 1024  # a response head larger than this is an error here


class HttpError(Exception):
    """The connection failed or the server answered something that is not HTTP/1.1 as expected."""


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in order (Set-Cookie may repeat)
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def location(self) -> str:
        return self.header("location") or ""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Connection:
    """One HTTP/1.1 connection to host:port, opened on first use and again after the server closed it."""

    def __init__(self, host: str, port: int, host_header: str) -> None:
        self.host = host
        self.port = port
        self.host_header = host_header.encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.opened = 0  # connections opened (a browser opens one per sign-in)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes | None = None
    ) -> Response:
        """Send one request and read its answer. A kept-alive connection the server closed while idle (granian
        closes them after 5 s) is opened again and the request sent once more, as browsers do: the server
        never saw it."""
        message = self._message(method, target, headers or [], body)
        reused = self._writer is not None
        try:
            return await self._exchange(message)
        except (ConnectionError, asyncio.IncompleteReadError, HttpError) as error:
            self.close()
            if not reused or (isinstance(error, asyncio.IncompleteReadError) and error.partial):
                raise HttpError(f"{method} {target.split('?')[0]}: {type(error).__name__}: {error}") from None
        return await self._exchange(message)

    def _message(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: " + self.host_header]
        lines.extend(f"{name}: {value}".encode() for name, value in headers)
        if body is not None:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")

    async def _exchange(self, message: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=HEAD_LIMIT)
            self.opened += 1
        assert self._reader is not None
        self._writer.write(message)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError("response head too large") from None
        # One decode of the whole head, then str operations: cheaper than decoding each header apart.
        lines = head[:-4].decode("latin-1").split("\r\n")
        status_line = lines[0]
        if not status_line.startswith("HTTP/1."):
            raise HttpError(f"not an HTTP/1.x response: {status_line[:40]!r}")
        status = int(status_line[9:12])
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        close = status_line.startswith("HTTP/1.0")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.lower()
            value = value.strip()
            headers.append((key, value))
            if key == "content-length":
                length = int(value)
            elif key == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif key == "connection":
                close = value.lower() == "close"
        if chunked:
            body = await self._chunked()
        elif length is not None:
            body = await self._reader.readexactly(length) if length else b""
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = await self._reader.read()
            close = True
        if close:
            self.close()
        return Response(status, headers, body)

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size_line = await self._reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # Trailers (none expected) end with an empty line.
                while await self._reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class CookieJar:
    """Cookies of one host: name → value. Expired ones (Max-Age=0 or a past Expires, as Flask deletes) go."""

    values: dict[str, str] = field(default_factory=dict)

    def header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.values.items())

    def update(self, response: Response) -> None:
        for key, value in response.headers:
            if key != "set-cookie":
                continue
            pair, _, attributes = value.partition(";")
            name, _, content = pair.partition("=")
            lowered = attributes.lower()
            if "max-age=0" in lowered or "expires=thu, 01 jan 1970" in lowered:
                self.values.pop(name.strip(), None)
            else:
                self.values[name.strip()] = content.strip()


class Browser:
    """A resident's browser for one sign-in: a fresh cookie jar and a fresh connection to the IdP (kept alive for
    the sign-in's requests, closed at the end). `client_ip` goes in X-Forwarded-For, as the proxy in front of the
    IdP would send it (IDP_TRUSTED_PROXIES=1), so each resident is an address of their own."""

    USER_AGENT = "Mozilla/5.0 (Linux; Android 14) bench/signins"

    def __init__(self, host: str, port: int, host_header: str, client_ip: str) -> None:
        self.connection = Connection(host, port, host_header)
        self.cookies = CookieJar()
        self.base_headers = [("User-Agent", self.USER_AGENT), ("X-Forwarded-For", client_ip)]

    async def request(
        self, method: str, target: str, *, headers: list[tuple[str, str]] | None = None, body: bytes | None = None
    ) -> Response:
        sent = list(self.base_headers)
        if self.cookies.values:
            sent.append(("Cookie", self.cookies.header()))
        if headers:
            sent.extend(headers)
        response = await self.connection.request(method, target, sent, body)
        self.cookies.update(response)
        return response

    def close(self) -> None:
        self.connection.close()
