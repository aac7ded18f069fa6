"""`idp clients …` on a migrated database: every auth method, JSON shapes, one-time secrets, one-line errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from joserfc.jwk import ECKey
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from idp.cli.clients import clients
from idp.db import make_engine
from idp.models import Client, InitialAccessToken
from idp.oidc.clients import consume_initial_access_token, secret_digest_key, verify_client_secret

IDP = Path(sys.executable).with_name("idp")
TIMEOUT = 60
SECRET_KEY = "clients-test-secret-key"
DIGEST_KEY = secret_digest_key(SECRET_KEY)
SUWON = ("--name", "수원시 민원", "--redirect-uri", "https://minwon.suwon.example/callback")
CLIENT_FIELDS = {
    "client_id",
    "client_name",
    "redirect_uris",
    "post_logout_redirect_uris",
    "token_endpoint_auth_method",
    "grant_types",
    "scope",
    "jwks_uri",
    "backchannel_logout_uri",
    "first_party",
    "subject_type",
    "id_token_signed_response_alg",
    "default_acr",
    "created_at",
}


@pytest.fixture
def env(tmp_path: Path, fresh_database_url: str) -> dict[str, str | None]:
    """An admin's shell: the test's own database and secret key, and no other IDP_* from the test runner."""
    cleared: dict[str, str | None] = {name: None for name in os.environ if name.startswith("IDP_")}
    return {
        **cleared,
        "IDP_DATABASE_URL": fresh_database_url,
        "IDP_INSTANCE_DIR": str(tmp_path / "instance"),
        "IDP_SECRET_KEY": SECRET_KEY,
    }


@pytest.fixture
def committed(fresh_database_url: str) -> Iterator[Engine]:
    """The database the commands write to, as the tests read it."""
    engine = make_engine(fresh_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def read(committed: Engine) -> Callable[[], Session]:
    """A new session per check, so that each sees what the command committed."""
    return lambda: Session(committed, expire_on_commit=False)


Invoke = Callable[..., Result]


@pytest.fixture
def invoke(env: dict[str, str | None]) -> Invoke:
    """Run `idp clients ARGS` in-process, as the `idp` command would once the group is registered."""

    def run(*args: str, answer: str | None = None) -> Result:
        return CliRunner().invoke(clients, list(args), env=env, input=answer)

    return run


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def ok_json(result: Result) -> Any:
    return json.loads(ok(result))


def one_line_error(result: Result) -> str:
    """The error of a refused command: exit status 1 and exactly one line, never a traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def stored(read: Callable[[], Session], client_id: str) -> Client:
    with read() as db:
        client = db.get(Client, client_id)
    assert client is not None
    return client


def count_clients(read: Callable[[], Session]) -> int:
    with read() as db:
        return db.scalar(select(func.count()).select_from(Client)) or 0


def write_jwks(path: Path, *, private: bool = False) -> Path:
    key = ECKey.generate_key("P-256", parameters={"kid": "rp-2026"})
    path.write_text(json.dumps({"keys": [key.as_dict(private=private)]}))
    return path


# -- create --------------------------------------------------------------------------------------------------------


def test_create_prints_the_client_and_its_secret_once_with_a_warning(
    invoke: Invoke, read: Callable[[], Session]
) -> None:
    out = ok(invoke("create", *SUWON))
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line and not line.startswith("("))
    client_id, secret = lines["client_id"], lines["client_secret"]
    assert lines["token_endpoint_auth_method"] == "client_secret_basic"
    assert lines["grant_types"] == "authorization_code refresh_token"
    assert lines["scope"] == "openid profile phone offline_access"
    assert "shown only once" in out
    assert len(secret) == 43
    client = stored(read, client_id)
    assert verify_client_secret(client, secret, key=DIGEST_KEY)


def test_secret_is_stored_only_as_a_32_byte_keyed_digest(invoke: Invoke, read: Callable[[], Session]) -> None:
    created = ok_json(invoke("create", *SUWON, "--json"))
    secret = created["client_secret"]
    with read() as db:
        digest = db.scalar(select(Client.secret_digest).where(Client.id == created["client_id"]))
        row = db.execute(select(Client.__table__).where(Client.id == created["client_id"])).one()
    assert isinstance(digest, bytes)
    assert len(digest) == 32
    assert digest != secret.encode()
    assert digest == hmac.new(DIGEST_KEY, secret.encode(), hashlib.sha256).digest()
    # No column holds the secret in any form a reader could reuse.
    for value in row:
        assert secret not in str(value)
        assert not (isinstance(value, bytes) and secret.encode() in value)


@pytest.mark.parametrize(
    ("extra", "method", "has_secret"),
    [
        ((), "client_secret_basic", True),
        (("--auth-method", "client_secret_basic"), "client_secret_basic", True),
        (("--auth-method", "client_secret_post"), "client_secret_post", True),
        (("--public",), "none", False),
        (("--public", "--auth-method", "none"), "none", False),
        (("--auth-method", "private_key_jwt", "--jwks-uri", "https://minwon.example/jwks"), "private_key_jwt", False),
        (("--auth-method", "private_key_jwt", "--jwks-file", "JWKS"), "private_key_jwt", False),
    ],
    ids=["default", "basic", "post", "public", "public-none", "pkj-uri", "pkj-file"],
)
def test_create_for_each_auth_method(
    invoke: Invoke,
    read: Callable[[], Session],
    tmp_path: Path,
    extra: tuple[str, ...],
    method: str,
    has_secret: bool,
) -> None:
    jwks_file = write_jwks(tmp_path / "jwks.json")
    args = [str(jwks_file) if value == "JWKS" else value for value in extra]
    created = ok_json(invoke("create", *SUWON, *args, "--json"))
    assert set(created) == CLIENT_FIELDS | {"client_secret"}
    assert created["token_endpoint_auth_method"] == method
    assert (created["client_secret"] is not None) is has_secret
    client = stored(read, created["client_id"])
    assert (client.secret_digest is not None) is has_secret
    assert client.token_endpoint_auth_method == method
    if "--jwks-file" in extra:
        assert client.jwks == json.loads(jwks_file.read_text())
    if "--jwks-uri" in extra:
        assert created["jwks_uri"] == "https://minwon.example/jwks"


def test_create_json_carries_every_option(invoke: Invoke, read: Callable[[], Session]) -> None:
    created = ok_json(
        invoke(
            "create",
            *SUWON,
            "--redirect-uri",
            "https://minwon.suwon.example/callback2",
            "--post-logout-redirect-uri",
            "https://minwon.suwon.example/bye",
            "--grant-type",
            "authorization_code",
            "--scope",
            "openid",
            "--scope",
            "phone kr_ci",
            "--backchannel-logout-uri",
            "https://minwon.suwon.example/backchannel",
            "--first-party",
            "--subject-type",
            "public",
            "--id-token-alg",
            "ES256",
            "--default-acr",
            "phr",
            "--json",
        )
    )
    assert created["client_name"] == "수원시 민원"
    assert created["redirect_uris"] == [
        "https://minwon.suwon.example/callback",
        "https://minwon.suwon.example/callback2",
    ]
    assert created["post_logout_redirect_uris"] == ["https://minwon.suwon.example/bye"]
    assert created["grant_types"] == ["authorization_code"]
    # The admin may allow the restricted kr_ci; scopes may be repeated or space-separated.
    assert created["scope"] == "openid phone kr_ci"
    assert created["backchannel_logout_uri"] == "https://minwon.suwon.example/backchannel"
    assert created["first_party"] is True
    assert created["subject_type"] == "public"
    assert created["id_token_signed_response_alg"] == "ES256"
    assert created["default_acr"] == "phr"
    assert created["created_at"].endswith("Z")
    assert stored(read, created["client_id"]).sector_identifier == "minwon.suwon.example"


def test_default_acr_may_name_the_issuers_own_levels(invoke: Invoke) -> None:
    created = ok_json(invoke("create", *SUWON, "--default-acr", "http://localhost:8000/acr/aal2", "--json"))
    assert created["default_acr"] == "http://localhost:8000/acr/aal2"


def test_service_without_redirect_uri_gets_client_credentials(invoke: Invoke) -> None:
    created = ok_json(invoke("create", "--name", "야간 배치", "--json"))
    assert created["grant_types"] == ["client_credentials"]
    assert created["client_secret"]


# -- list, show, delete --------------------------------------------------------------------------------------------


def test_list_of_an_empty_database_says_so(invoke: Invoke) -> None:
    assert ok(invoke("list")).strip() == "no clients"
    assert ok_json(invoke("list", "--json")) == []


def test_list_and_show_never_print_the_secret(invoke: Invoke) -> None:
    first = ok_json(invoke("create", *SUWON, "--json"))
    second = ok_json(invoke("create", "--name", "야간 배치", "--json"))
    listed = ok_json(invoke("list", "--json"))
    assert [row["client_id"] for row in listed] == [first["client_id"], second["client_id"]]
    assert all(set(row) == CLIENT_FIELDS for row in listed)
    text = ok(invoke("list"))
    assert text.splitlines()[0].split() == ["CLIENT_ID", "NAME", "AUTH", "GRANTS"]
    assert first["client_id"] in text
    assert "수원시 민원" in text
    shown = ok_json(invoke("show", first["client_id"], "--json"))
    assert shown == {key: value for key, value in first.items() if key != "client_secret"}
    shown_text = ok(invoke("show", first["client_id"]))
    assert f"client_id: {first['client_id']}" in shown_text
    assert "first_party: no" in shown_text
    for output in (json.dumps(listed), text, json.dumps(shown), shown_text):
        assert first["client_secret"] not in output
        assert second["client_secret"] not in output


def test_show_unknown_client_is_a_one_line_error(invoke: Invoke) -> None:
    assert "no client 'nope'" in one_line_error(invoke("show", "nope"))
    assert "no client 'nope'" in one_line_error(invoke("show", "nope", "--json"))


def test_delete_with_yes_removes_the_client(invoke: Invoke, read: Callable[[], Session]) -> None:
    created = ok_json(invoke("create", *SUWON, "--json"))
    assert ok_json(invoke("delete", created["client_id"], "--yes", "--json")) == {
        "client_id": created["client_id"],
        "deleted": True,
    }
    assert count_clients(read) == 0
    assert "no client" in one_line_error(invoke("show", created["client_id"]))


def test_delete_asks_and_answering_n_changes_nothing(invoke: Invoke, read: Callable[[], Session]) -> None:
    created = ok_json(invoke("create", *SUWON, "--json"))
    result = invoke("delete", created["client_id"], answer="n\n")
    assert result.exit_code == 1
    assert "Delete client" in result.stderr
    assert count_clients(read) == 1


def test_delete_answering_y_removes_the_client(invoke: Invoke, read: Callable[[], Session]) -> None:
    created = ok_json(invoke("create", *SUWON, "--json"))
    out = ok(invoke("delete", created["client_id"], answer="y\n"))
    assert out.strip() == f"{created['client_id']}: deleted"
    assert count_clients(read) == 0


def test_delete_unknown_client_is_a_one_line_error(invoke: Invoke) -> None:
    assert "no client 'nope'" in one_line_error(invoke("delete", "nope", "--yes"))


# -- rotate-secret -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_rotate_secret_prints_a_new_secret_once_and_the_old_one_stops_working(
    invoke: Invoke, read: Callable[[], Session], method: str
) -> None:
    created = ok_json(invoke("create", *SUWON, "--auth-method", method, "--json"))
    old_digest = stored(read, created["client_id"]).secret_digest
    rotated = ok_json(invoke("rotate-secret", created["client_id"], "--json"))
    assert set(rotated) == {"client_id", "client_secret", "secret_rotated_at"}
    assert rotated["client_id"] == created["client_id"]
    assert rotated["client_secret"] != created["client_secret"]
    client = stored(read, created["client_id"])
    assert client.secret_digest != old_digest
    assert client.secret_rotated_at is not None
    assert verify_client_secret(client, rotated["client_secret"], key=DIGEST_KEY)
    assert not verify_client_secret(client, created["client_secret"], key=DIGEST_KEY)
    assert rotated["client_secret"] not in ok(invoke("show", created["client_id"], "--json"))


def test_rotate_secret_text_says_it_is_shown_once(invoke: Invoke, read: Callable[[], Session]) -> None:
    created = ok_json(invoke("create", *SUWON, "--json"))
    out = ok(invoke("rotate-secret", created["client_id"]))
    secret = out.splitlines()[0].removeprefix("client_secret: ")
    assert "shown only once" in out
    assert verify_client_secret(stored(read, created["client_id"]), secret, key=DIGEST_KEY)


@pytest.mark.parametrize(
    ("extra", "method"),
    [(("--public",), "none"), (("--auth-method", "private_key_jwt", "--jwks-uri", "https://x.example/j"), "pkj")],
)
def test_rotate_secret_of_a_client_without_one_is_a_one_line_error(
    invoke: Invoke, read: Callable[[], Session], extra: tuple[str, ...], method: str
) -> None:
    created = ok_json(invoke("create", *SUWON, *extra, "--json"))
    assert "has no secret to rotate" in one_line_error(invoke("rotate-secret", created["client_id"]))
    assert stored(read, created["client_id"]).secret_digest is None


def test_rotate_secret_of_an_unknown_client_is_a_one_line_error(invoke: Invoke) -> None:
    assert "no client 'nope'" in one_line_error(invoke("rotate-secret", "nope"))


# -- registration-token --------------------------------------------------------------------------------------------


def test_registration_token_is_printed_once_and_stored_as_a_digest(invoke: Invoke, read: Callable[[], Session]) -> None:
    minted = ok_json(invoke("registration-token", "--uses", "2", "--expires-in", "600", "--note", "용인시", "--json"))
    assert set(minted) == {"initial_access_token", "uses", "expires_at", "note"}
    assert minted["uses"] == 2
    assert minted["note"] == "용인시"
    token = minted["initial_access_token"]
    with read() as db:
        row = db.get(InitialAccessToken, hashlib.sha256(token.encode()).digest())
        assert row is not None
        assert row.uses_left == 2
        assert row.note == "용인시"
        assert row.expires_at.isoformat().replace("+00:00", "Z") == minted["expires_at"]
        now = row.created_at
        assert consume_initial_access_token(db, token, now=now)
        assert consume_initial_access_token(db, token, now=now)
        assert not consume_initial_access_token(db, token, now=now)


def test_registration_token_defaults_to_one_use_for_a_day(invoke: Invoke, read: Callable[[], Session]) -> None:
    out = ok(invoke("registration-token"))
    token = out.splitlines()[0].removeprefix("initial_access_token: ")
    assert "shown only once" in out
    assert "good for 1 registration until" in out
    with read() as db:
        row = db.get(InitialAccessToken, hashlib.sha256(token.encode()).digest())
    assert row is not None
    assert row.uses_left == 1
    assert row.note is None
    assert (row.expires_at - row.created_at).total_seconds() == pytest.approx(86400, abs=5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--uses", "0"), "uses must be from 1"),
        (("--expires-in", "0"), "lifetime must be from 1"),
        (("--expires-in", "-5"), "lifetime must be from 1"),
        (("--note", "x" * 201), "note must be one line"),
    ],
)
def test_registration_token_out_of_range_is_a_one_line_error(
    invoke: Invoke, read: Callable[[], Session], args: tuple[str, ...], message: str
) -> None:
    assert message in one_line_error(invoke("registration-token", *args))
    with read() as db:
        assert db.scalar(select(func.count()).select_from(InitialAccessToken)) == 0


# -- bad input -----------------------------------------------------------------------------------------------------

BAD_CREATE: list[tuple[str, tuple[str, ...], str]] = [
    ("empty name", ("--name", " "), "name is empty"),
    ("relative redirect", ("--name", "x", "--redirect-uri", "/cb"), "absolute http(s) URL"),
    ("fragment", ("--name", "x", "--redirect-uri", "https://a.example/cb#f"), "fragment"),
    ("http", ("--name", "x", "--redirect-uri", "http://a.example/cb"), "must use https"),
    (
        "two hosts",
        ("--name", "x", "--redirect-uri", "https://a.example/cb", "--redirect-uri", "https://b.example/cb"),
        "pairwise subjects need one sector",
    ),
    ("code flow without redirect", ("--name", "x", "--grant-type", "authorization_code"), "redirect URI"),
    ("public without redirect", ("--name", "x", "--public"), "public client needs a redirect URI"),
    ("post-logout http", (*SUWON, "--post-logout-redirect-uri", "http://a.example/"), "post-logout"),
    ("back-channel fragment", (*SUWON, "--backchannel-logout-uri", "https://a.example/bc#x"), "fragment"),
    ("public secret", (*SUWON, "--public", "--auth-method", "client_secret_basic"), "public client cannot use"),
    ("public pkj", (*SUWON, "--public", "--auth-method", "private_key_jwt"), "public client cannot use"),
    ("unknown method", (*SUWON, "--auth-method", "mtls"), "unknown auth method 'mtls'"),
    ("pkj without keys", (*SUWON, "--auth-method", "private_key_jwt"), "needs the client's public keys"),
    ("jwks-uri with secret", (*SUWON, "--jwks-uri", "https://a.example/jwks"), "only with private_key_jwt"),
    ("unknown grant", (*SUWON, "--grant-type", "password"), "unknown grant type 'password'"),
    ("refresh alone", (*SUWON, "--grant-type", "refresh_token"), "needs the authorization_code grant"),
    (
        "public client credentials",
        (*SUWON, "--public", "--grant-type", "authorization_code", "--grant-type", "client_credentials"),
        "needs a confidential client",
    ),
    ("unknown scope", (*SUWON, "--scope", "email"), "unknown scope 'email'"),
    ("unknown subject type", (*SUWON, "--subject-type", "sector"), "unknown subject type 'sector'"),
    ("unknown alg", (*SUWON, "--id-token-alg", "HS256"), "unknown ID token algorithm 'HS256'"),
    ("unknown acr", (*SUWON, "--default-acr", "gold"), "unknown acr 'gold'"),
]


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in BAD_CREATE], ids=[c[0] for c in BAD_CREATE])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_bad_create_is_a_one_line_error_and_creates_nothing(
    invoke: Invoke, read: Callable[[], Session], args: tuple[str, ...], message: str, as_json: bool
) -> None:
    line = one_line_error(invoke("create", *args, *(("--json",) if as_json else ())))
    assert message in line
    assert count_clients(read) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --jwks-file"),
        ("{not json", "is not JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"keys": []}', '{"keys": [...]}'),
        ("PRIVATE", "private or symmetric key 'rp-2026'"),
        ("x" * 70_000, "larger than"),
    ],
    ids=["missing", "not-json", "not-object", "empty", "private", "huge"],
)
def test_bad_jwks_file_is_a_one_line_error_and_creates_nothing(
    invoke: Invoke, read: Callable[[], Session], tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "jwks.json"
    if content == "PRIVATE":
        write_jwks(path, private=True)
    elif content is not None:
        path.write_text(content)
    line = one_line_error(invoke("create", *SUWON, "--auth-method", "private_key_jwt", "--jwks-file", str(path)))
    assert message in line
    assert count_clients(read) == 0


PRODUCTION = {
    "IDP_ENV": "production",
    "IDP_ISSUER": "https://login.gg.go.kr",
    "IDP_SECRET_KEY": "s" * 43,
    "IDP_DATA_KEY": "d" * 43,
    "IDP_CI_PEPPER": "p" * 43,
    "IDP_PAIRWISE_SECRET": "w" * 43,
    "IDP_CARRIER_AGENCY_URL": "https://agency.example.kr",
    "IDP_CARRIER_SITE_SECRET": "agency-issued-secret",
}
PKJ_URI = (*SUWON, "--auth-method", "private_key_jwt", "--jwks-uri")
LOCAL_SERVER_URIS = [
    ("back-channel loopback", (*SUWON, "--backchannel-logout-uri", "http://127.0.0.1:8080/bc"), "must use https"),
    ("back-channel private", (*SUWON, "--backchannel-logout-uri", "https://10.0.0.5/bc"), "public address"),
    ("back-channel localhost", (*SUWON, "--backchannel-logout-uri", "https://localhost/bc"), "public host name"),
    ("jwks-uri metadata", (*PKJ_URI, "https://169.254.169.254/jwks"), "public address"),
    ("jwks-uri loopback v6", (*PKJ_URI, "https://[::1]/jwks"), "public address"),
]


@pytest.mark.parametrize(
    ("args", "message"), [case[1:] for case in LOCAL_SERVER_URIS], ids=[c[0] for c in LOCAL_SERVER_URIS]
)
def test_outside_development_urls_the_idp_calls_must_be_https_on_public_hosts(
    env: dict[str, str | None], read: Callable[[], Session], args: tuple[str, ...], message: str
) -> None:
    result = CliRunner().invoke(clients, ["create", *args], env={**env, **PRODUCTION})
    assert message in one_line_error(result)
    assert count_clients(read) == 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((*SUWON, "--backchannel-logout-uri", "http://127.0.0.1:8170/bc"), "backchannel_logout_uri"),
        ((*PKJ_URI, "http://localhost:8170/jwks"), "jwks_uri"),
    ],
    ids=["back-channel", "jwks-uri"],
)
def test_in_development_local_urls_the_idp_calls_are_accepted(
    invoke: Invoke, args: tuple[str, ...], field: str
) -> None:
    created = ok_json(invoke("create", *args, "--json"))
    assert created[field] == args[-1]


def test_unreachable_database_is_a_one_line_error(env: dict[str, str | None]) -> None:
    env = {**env, "IDP_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"}
    result = CliRunner().invoke(clients, ["list"], env=env)
    assert one_line_error(result).startswith("Error: database:")


# -- the real `idp` command ----------------------------------------------------------------------------------------


def run_idp(env: dict[str, str | None], *args: str) -> subprocess.CompletedProcess[str]:
    shell = {name: value for name, value in os.environ.items() if not name.startswith("IDP_")}
    shell.update({name: value for name, value in env.items() if value is not None})
    return subprocess.run(
        [str(IDP), *args],
        env=shell,
        cwd=str(Path(str(env["IDP_INSTANCE_DIR"])).parent),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_idp_command_runs_the_clients_group(env: dict[str, str | None], read: Callable[[], Session]) -> None:
    created = run_idp(env, "clients", "create", *SUWON, "--json")
    assert created.returncode == 0, created.stderr
    data = json.loads(created.stdout)
    assert verify_client_secret(stored(read, data["client_id"]), data["client_secret"], key=DIGEST_KEY)
    listed = run_idp(env, "clients", "list", "--json")
    assert [row["client_id"] for row in json.loads(listed.stdout)] == [data["client_id"]]
    refused = run_idp(env, "clients", "create", "--name", "x", "--redirect-uri", "http://a.example/cb")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "idp: error: redirect URI 'http://a.example/cb' must use https (http only on localhost, 127.0.0.1 or [::1])"
    ]
    assert count_clients(read) == 1
