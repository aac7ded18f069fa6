"""Hypothesis strategies for malformed HTTP requests, sent to the app as raw WSGI, and the count of what was tried.

A `RawRequest` is bytes all the way down: the query string, the body and every header value are what a client put
on the wire, so a request can carry what a well-behaved client library would refuse to send (invalid UTF-8 after
percent-decoding or base64, text in another encoding, repeated parameters, oversized values). Only what an HTTP
server would itself refuse before the app runs is never generated: CR, LF and NUL in header values and raw spaces
or control characters in the request target.

Every request sent is counted per endpoint (`CORPUS`); tests/conftest.py prints the table at the end of the run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import string
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

from flask import Flask
from hypothesis import strategies as st
from werkzeug.test import TestResponse, run_wsgi_app
from werkzeug.wrappers import Request

Bytes = st.SearchStrategy[bytes]

# -- the request, as bytes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRequest:
    """One request as sent on the wire; `secrets` are values in it that must never come back in the answer."""

    endpoint: str  # what the corpus counts it under, e.g. "POST /token"
    method: str
    path: bytes  # after percent-decoding, as a server hands it to WSGI
    query: bytes = b""
    headers: tuple[tuple[str, bytes], ...] = ()
    body: bytes = b""
    remote_addr: str = "127.0.0.1"
    secrets: tuple[str, ...] = ()

    def header(self, name: str) -> bytes | None:
        """The header's value as the app sees it (repeated lines folded into one)."""
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        return (b"; " if name.lower() == "cookie" else b", ").join(found) if found else None

    def environ(self) -> dict[str, Any]:
        """The WSGI environ a server would build: every string is the wire's bytes read as Latin-1 (PEP 3333)."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": self.path.decode("latin-1"),
            "QUERY_STRING": self.query.decode("latin-1"),
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": self.remote_addr,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(self.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            environ["CONTENT_LENGTH"] = str(len(self.body))
        for name, value in self.headers:
            key = name.upper().replace("-", "_")
            key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
            text = value.decode("latin-1")
            if key in environ and key.startswith("HTTP_"):
                # Repeated header lines are folded into one value, as servers do (RFC 9110 §5.3).
                text = environ[key] + ("; " if key == "HTTP_COOKIE" else ", ") + text
            environ[key] = text
        return environ

    def fingerprint(self) -> bytes:
        parts = [self.method.encode(), self.path, self.query, self.body, self.remote_addr.encode()]
        parts += [name.encode() + b":" + value for name, value in self.headers]
        return hashlib.sha256(b"\x00".join(parts)).digest()


CORPUS: defaultdict[str, set[bytes]] = defaultdict(set)


def send(app: Flask, request: RawRequest) -> TestResponse:
    """The app's answer to `request`, counted in the corpus."""
    CORPUS[request.endpoint].add(request.fingerprint())
    environ = request.environ()
    app_iter, status, headers = run_wsgi_app(app, environ, buffered=True)
    return TestResponse(app_iter, status, headers, request=Request(environ))


def corpus_lines(profile: str) -> list[str]:
    """The corpus table: distinct requests tried per endpoint in this run."""
    if not CORPUS:
        return []
    width = max(len(endpoint) for endpoint in CORPUS)
    lines = [f"distinct generated requests per endpoint (Hypothesis profile {profile!r}):"]
    lines += [f"  {endpoint:<{width}}  {len(CORPUS[endpoint]):>6}" for endpoint in sorted(CORPUS)]
    lines.append(f"  {'total':<{width}}  {sum(len(seen) for seen in CORPUS.values()):>6}")
    return lines


# -- values ------------------------------------------------------------------------------------------------------------

URLSAFE = string.ascii_letters + string.digits + "-_"
# Bytes that are not UTF-8 on their own or start a sequence that never ends (%FF%FE, a lone continuation byte, an
# overlong NUL, a surrogate encoded as UTF-8).
INVALID_UTF8 = [b"\xff", b"\xfe", b"\xff\xfe", b"\x80", b"\xc0\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]
ENCODINGS = ["utf-8", "cp949", "euc-kr", "latin-1", "utf-16", "utf-16-be", "utf-32"]

secret_like = st.text(URLSAFE, min_size=24, max_size=64).map(lambda text: "S3cr" + text)
"""A value shaped like a secret, code or token: long enough that it cannot appear in an answer by chance."""

phone_like = st.builds(
    lambda middle, last, style: style.format(middle, last),
    st.integers(2000, 9999),
    st.integers(1000, 9999),
    st.sampled_from(["010-{}-{}", "010{}{}", "+8210{}{}", "+82 10 {} {}"]),
)
"""A Korean mobile number, in one of the ways residents type them."""


def encoded(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


invalid_utf8 = st.builds(
    lambda before, bad, after: before + bad + after,
    st.text(URLSAFE, max_size=8).map(str.encode),
    st.sampled_from(INVALID_UTF8),
    st.text(URLSAFE, max_size=8).map(str.encode),
)
control_characters = st.text(st.characters(codec="utf-8", max_codepoint=0x9F, categories=["Cc"]), min_size=1).map(
    str.encode
)
huge = st.builds(
    lambda char, size: char * size, st.sampled_from([b"a", b"%", b"\xea\xb0\x80", b"0"]), st.integers(2049, 70_000)
)
unicode_text = st.text(st.characters(codec="utf-8"), max_size=40)
mixed_encoding = st.builds(
    encoded, unicode_text | st.sampled_from(["김경기", "수원시 ✓", "Ω≈ç√"]), st.sampled_from(ENCODINGS)
)


def garbage(*valid: str) -> Bytes:
    """A value for a parameter: one of `valid`, or text, bytes, bad UTF-8, control characters, another encoding,
    something huge, a number, a JSON structure or nothing at all."""
    choices: list[Bytes] = [
        unicode_text.map(str.encode),
        st.binary(max_size=40),
        invalid_utf8,
        control_characters,
        mixed_encoding,
        huge,
        st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"true", b"-1", b"1e400", b"9" * 40, b"NaN"]),
        secret_like.map(str.encode),
    ]
    if valid:
        choices = [st.sampled_from(valid).map(str.encode)] * 3 + choices
    return st.one_of(choices)


# -- query strings and form bodies -------------------------------------------------------------------------------------


def _percent(value: bytes, style: str) -> bytes:
    if style == "raw":
        return value
    if style == "plus":
        return quote_from_bytes(value, safe="").replace("%20", "+").encode()
    if style == "lower":
        return quote_from_bytes(value, safe="").lower().encode()
    return quote_from_bytes(value, safe="").encode()


@st.composite
def url_encoded(draw: st.DrawFn, fields: dict[str, Bytes], *, raw: bool = True) -> tuple[bytes, dict[str, list[bytes]]]:
    """An application/x-www-form-urlencoded string of `fields` (each absent, once or repeated) and a few
    unknown ones, each percent-encoded in its own way; and the values sent, by name.

    `raw` allows bytes left unencoded (a body may carry anything; a request target only what a server takes)."""
    pairs: list[tuple[bytes, bytes]] = []
    for name, values in fields.items():
        repeats = draw(st.sampled_from([0, 1, 1, 1, 1, 2]))
        pairs += [(name.encode(), draw(values)) for _ in range(repeats)]
    pairs += draw(st.lists(st.tuples(garbage(*fields), garbage()), max_size=2))
    pairs = draw(st.permutations(pairs))
    styles = ["percent", "plus", "lower", "raw"] if raw else ["percent", "plus", "lower"]
    encoded_pairs = []
    for name, value in pairs:
        style = draw(st.sampled_from(styles))
        if style == "raw" and not raw:
            style = "percent"
        joined = draw(st.sampled_from([b"=", b"=", b"=", b""]))
        encoded_pairs.append(_percent(name, style) + (joined + _percent(value, style) if joined else b""))
    separator = draw(st.sampled_from([b"&", b"&", b"&", b";", b"&&"]))
    sent: dict[str, list[bytes]] = {}
    for name, value in pairs:
        sent.setdefault(name.decode("latin-1"), []).append(value)
    return separator.join(encoded_pairs), sent


def query_safe(value: bytes) -> bytes:
    """What an HTTP server passes on as a query string: no spaces, control characters or `#`."""
    return bytes(byte for byte in value if byte > 0x20 and byte not in (0x7F, 0x23))


# -- JSON bodies -------------------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    unicode_text,
    secret_like,
)


def json_values(members: Sequence[str] = ()) -> st.SearchStrategy[Any]:
    """JSON values of any type, objects keyed by `members` and anything else, nested a few levels."""
    keys = st.sampled_from(list(members)) | unicode_text if members else unicode_text
    return st.recursive(
        json_scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
        max_leaves=12,
    )


@st.composite
def json_text(draw: st.DrawFn, members: Sequence[str] = (), valid: Sequence[Any] = ()) -> bytes:
    """A JSON body: a document of wrong types, or one that JSON parsers trip over (deep nesting, huge numbers,
    duplicate keys, NaN, a BOM, UTF-16, bad UTF-8, a truncated document)."""
    document = draw(st.sampled_from(valid) if valid and draw(st.booleans()) else json_values(members))
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    kind = draw(
        st.sampled_from(
            ["plain", "plain", "plain", "nested", "number", "duplicate", "nan", "bom", "utf16", "bad-utf8", "cut"]
        )
    )
    if kind == "nested":
        # Python's parser recurses once a level and gives up near a thousand: go well past it, within 64 kB.
        depth = draw(st.sampled_from([1_000, 3_000, 20_000]) | st.integers(100, 30_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + text + closer * depth).encode()
    if kind == "number":
        digits = draw(st.integers(300, 60_000))
        number = draw(st.sampled_from(["1" * digits, f"1e{digits}", f"-0.{'0' * digits}1"]))
        return f'{{"{draw(st.sampled_from(list(members) or ["a"]))}": {number}, "x": {text}}}'.encode()
    if kind == "duplicate" and members:
        name = draw(st.sampled_from(list(members)))
        return f'{{"{name}": {text}, "{name}": {json.dumps(draw(json_scalars))}}}'.encode()
    if kind == "nan":
        return f'{{"a": NaN, "b": Infinity, "c": {text}}}'.encode()
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if kind == "utf16":
        return text.encode("utf-16")
    if kind == "bad-utf8":
        return text.encode()[:-1] + draw(st.sampled_from(INVALID_UTF8)) + b'"}'
    if kind == "cut":
        return text.encode()[: draw(st.integers(0, max(0, len(text) - 1)))]
    return text.encode()


# -- headers -----------------------------------------------------------------------------------------------------------

# What may stand in a header value on the wire: visible ASCII, space and tab, and obs-text (RFC 9110 §5.5).
header_bytes = st.binary(max_size=60).map(lambda raw: bytes(b for b in raw if b == 0x09 or (b >= 0x20 and b != 0x7F)))


def header_safe(value: bytes) -> bytes:
    return bytes(b for b in value if b == 0x09 or (b >= 0x20 and b != 0x7F))


def basic_credentials(ids: Sequence[str], secrets: Sequence[str]) -> Bytes:
    """A Basic Authorization value over `id:secret` in any bytes: known ids and secrets, other encodings,
    invalid UTF-8, no colon, control characters, percent-encoding (RFC 6749 §2.3.1 form-encodes both)."""
    part = garbage(*ids, *secrets)
    credentials = st.one_of(
        st.builds(lambda user, secret: user + b":" + secret, garbage(*ids), garbage(*secrets)),
        st.builds(lambda user, secret: user + b":" + secret, part, secret_like.map(str.encode)),
        part,
        st.binary(max_size=80),
    )
    return st.builds(
        lambda scheme, raw, padding: scheme + base64.b64encode(raw).rstrip(b"=" if not padding else b""),
        st.sampled_from([b"Basic ", b"basic ", b"BASIC  ", b"Basic\t"]),
        credentials,
        st.booleans(),
    )


def authorization(ids: Sequence[str] = (), secrets: Sequence[str] = (), tokens: Sequence[str] = ()) -> Bytes:
    """An Authorization header value: Basic over anything, Bearer with anything, other schemes, and garbage."""
    return st.one_of(
        basic_credentials(ids, secrets),
        st.builds(
            lambda scheme, token: scheme + header_safe(token),
            st.sampled_from([b"Bearer ", b"bearer ", b"Bearer  ", b"BEARER ", b"Bearer"]),
            garbage(*tokens),
        ),
        st.sampled_from([b"Basic", b"Basic ", b"Basic =", b"Basic !!not-base64!!", b"Digest x", b"DPoP abc", b""]),
        header_bytes,
    )


CONTENT_TYPES = [
    b"application/x-www-form-urlencoded",
    b"application/x-www-form-urlencoded; charset=utf-8",
    b"application/x-www-form-urlencoded; charset=euc-kr",
    b"application/x-www-form-urlencoded; charset=nonsense",
    b"application/json",
    b"application/json; charset=utf-16",
    b"application/jwt",
    b"multipart/form-data",
    b"multipart/form-data; boundary=x",
    b"multipart/form-data; boundary=",
    b"text/plain",
    b"text/html",
    b"*/*",
    b"application/x-www-form-urlencoded, application/json",
    b"",
]
content_type = st.sampled_from(CONTENT_TYPES) | header_bytes

accept_language = st.one_of(
    st.sampled_from([b"en", b"ko-KR,ko;q=0.9,en;q=0.8", b"*", b"en;q=abc", b"q=1", b";;;,,,", b"x-" + b"a" * 3000]),
    header_bytes,
)
accept = st.sampled_from([b"text/html", b"application/json", b"*/*", b"text/html;q=0.1, application/json;q=0.2"])
host = st.one_of(
    st.sampled_from(
        [
            b"localhost:8000",
            b"localhost",
            b"evil.example",
            b"localhost:8000.evil.example",
            b"[::1]:8000",
            b"localhost:99999",
            b"localhost:-1",
            b"\xea\xb2\xbd\xea\xb8\xb0.kr",
            b"a" * 300,
            b"",
        ]
    ),
    header_bytes,
)
remote_address = st.builds(
    lambda a, b, c: f"10.{a}.{b}.{c}", st.integers(0, 255), st.integers(0, 255), st.integers(1, 254)
)


# -- cookies -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jar:
    """The cookie values a test has to hand: a live login session's, flow cookies with their CSRF tokens, and a
    flow cookie signed with another key (forged)."""

    session_name: str
    flow_name: str
    live_session: str
    flows: dict[str, str] = field(default_factory=dict)  # a flow cookie by name ("anonymous", "signed-in", …)
    csrf: dict[str, str] = field(default_factory=dict)  # the CSRF token of each flow cookie, by the same name
    forged_flow: str = ""


def cookie_value(known: Sequence[str]) -> Bytes:
    """A cookie value: a known one, one with its signature changed, garbage, bad UTF-8, quoted, huge."""
    tampered = [value[:-2] + ("AA" if not value.endswith("AA") else "BB") for value in known if len(value) > 2]
    return st.one_of(
        st.sampled_from([*known, *tampered]).map(str.encode) if known else st.nothing(),
        header_bytes.map(lambda value: value.replace(b";", b"")),
        invalid_utf8,
        st.sampled_from([b'"quoted"', b'"', b"=", b".", b"..", b"a.b.c", b"\\x00", b"%00"]),
        st.integers(4_000, 20_000).map(lambda size: b"A" * size),
        secret_like.map(str.encode),
    )


@st.composite
def cookie_header(draw: st.DrawFn, jar: Jar, *, flow: str | None = None, live: bool | None = None) -> bytes | None:
    """A Cookie header: the live session cookie or not (`live`), the named flow cookie or any, garbage cookies,
    each perhaps repeated; None for no header at all."""
    parts: list[bytes] = []
    session_value = (
        jar.live_session.encode()
        if live
        else draw(cookie_value([jar.live_session] if live is None else []) | st.none())
    )
    if session_value is not None:
        parts.append(jar.session_name.encode() + b"=" + session_value)
    if flow is not None:
        parts.append(jar.flow_name.encode() + b"=" + jar.flows[flow].encode())
    else:
        flow_value = draw(cookie_value([*jar.flows.values(), jar.forged_flow]) | st.none())
        if flow_value is not None:
            parts.append(jar.flow_name.encode() + b"=" + flow_value)
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([jar.session_name, jar.flow_name, "x", "", "$Version", "idp sid"]).map(str.encode))
        parts.append(name + b"=" + draw(cookie_value([])))
    if not parts and draw(st.booleans()):
        return None
    parts = draw(st.permutations(parts))
    return draw(st.sampled_from([b"; ", b";", b", "])).join(parts)


# -- putting a request together ----------------------------------------------------------------------------------------

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO"]


@st.composite
def envelope_headers(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """The headers any request may carry, each present or not: Host, Accept, Accept-Language, odd extras."""
    headers: list[tuple[str, bytes]] = []
    for name, values in (("Host", host), ("Accept", accept), ("Accept-Language", accept_language)):
        if draw(st.booleans()):
            headers.append((name, draw(values)))
    if draw(st.integers(0, 4)) == 0:
        headers.append(
            (
                draw(st.sampled_from(["X-Forwarded-For", "X-Forwarded-Host", "Origin", "Referer", "User-Agent"])),
                draw(header_bytes),
            )
        )
    return headers


def one_of_methods(main: Sequence[str]) -> st.SearchStrategy[str]:
    """Mostly the endpoint's own methods, sometimes any other."""
    return st.sampled_from(list(main)) | st.sampled_from(list(main)) | st.sampled_from(METHODS)
