"""The real `idp` command in subprocesses: `idp keys …` and `idp init`, their JSON, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask
from joserfc import jws
from oidc_flow import authorize, exchange, register, sign_in
from sandbox_agency import SandboxAgency

from idp import keyring as keyring_module
from idp.keyring import Keyring, SigningKey
from idp.settings import Settings

IDP = Path(sys.executable).with_name("idp")
ADMIN_GUIDE = Path(__file__).parents[2] / "docs" / "admin.md"
PASSPHRASE = "correct horse battery staple"
WRONG_PASSPHRASE = "a wrong but long enough passphrase"
RECORD_FIELDS = {"kid", "alg", "state", "created", "activated", "retired", "withdrawn", "published"}
CONCURRENT_ROTATIONS = 20
TIMEOUT = 120
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
NOBODY = 65534


# -- helpers -----------------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, keys_dir: Path) -> dict[str, str]:
    """The environment of an admin's shell: no IDP_* from the test runner, state under tmp_path."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("IDP_")}
    clean.update(IDP_KEYS_DIR=str(keys_dir), IDP_INSTANCE_DIR=str(tmp_path / "instance"))
    return clean


def idp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IDP), *args],
        env=env,
        cwd=Path(env["IDP_INSTANCE_DIR"]).parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def idp_json(env: dict[str, str], *args: str) -> Any:
    result = idp(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, expected: str) -> str:
    """The command failed with `status`, printing nothing on stdout and exactly one line on stderr."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("idp: error: ")
    assert expected in line
    assert result.stdout == ""
    return line


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def manifest(keys_dir: Path) -> list[dict[str, Any]]:
    """The key records as stored: quicker than `idp keys list`, which starts Python and loads every key."""
    records: list[dict[str, Any]] = json.loads((keys_dir / "keyring.json").read_bytes())["keys"]
    return records


def by_state(records: list[dict[str, Any]], alg: str, state: str) -> list[str]:
    return [record["kid"] for record in records if record["alg"] == alg and record["state"] == state]


# -- keys list, generate, rotate, retire, prune ------------------------------------------------------------------


def test_keys_list_json_describes_every_key(env: dict[str, str], keys_dir: Path) -> None:
    records = idp_json(env, "keys", "list")

    assert isinstance(records, list)
    assert len(records) == 4
    for record in records:
        assert set(record) == RECORD_FIELDS
        assert record["created"].endswith("Z")
        assert record["retired"] is None
        assert record["withdrawn"] is None
        assert record["published"] is True
        assert (keys_dir / f"{record['kid']}.pem").is_file()
        if record["state"] == "active":
            assert record["activated"].endswith("Z")
        else:
            assert record["activated"] is None
    assert sorted((record["alg"], record["state"]) for record in records) == [
        ("ES256", "active"),
        ("ES256", "next"),
        ("RS256", "active"),
        ("RS256", "next"),
    ]


def test_keys_list_prints_a_table_for_people(env: dict[str, str], keys_dir: Path) -> None:
    records = manifest(keys_dir)
    result = idp(env, "keys", "list")

    assert result.returncode == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["KID", "ALG", "STATE", "CREATED", "ACTIVATED", "RETIRED"]
    assert len(rows) == 4
    assert {row.split()[0] for row in rows} == {record["kid"] for record in records}


def test_keys_generate_json_prints_the_new_next_key(env: dict[str, str], keys_dir: Path) -> None:
    record = idp_json(env, "keys", "generate", "--alg", "EdDSA")

    assert set(record) == RECORD_FIELDS
    assert (record["alg"], record["state"], record["activated"], record["published"]) == ("EdDSA", "next", None, True)
    assert (keys_dir / f"{record['kid']}.pem").is_file()
    assert record in idp_json(env, "keys", "list")


def test_keys_rotate_json_activates_the_next_key_and_warns_about_a_young_one(
    env: dict[str, str], keys_dir: Path
) -> None:
    before = manifest(keys_dir)
    (old_active,) = by_state(before, "ES256", "active")
    (old_next,) = by_state(before, "ES256", "next")

    result = idp(env, "keys", "rotate", "--alg", "ES256", "--json")

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert set(output) == {"activated", "warnings"}
    (activated,) = output["activated"]
    assert set(activated) == RECORD_FIELDS
    assert (activated["kid"], activated["alg"], activated["state"]) == (old_next, "ES256", "active")
    # The template keyring was just made, younger than the default JWKS max-age of 600 s.
    (warning,) = output["warnings"]
    assert warning.startswith(f"ES256: the next key {old_next} was published ")
    assert "less than the JWKS cache age (600 s)" in warning
    assert result.stderr == f"warning: {warning}\n"
    after = manifest(keys_dir)
    assert by_state(after, "ES256", "retired") == [old_active]
    assert by_state(after, "ES256", "active") == [old_next]
    assert len(by_state(after, "ES256", "next")) == 1
    assert by_state(after, "RS256", "active") == by_state(before, "RS256", "active")


@pytest.mark.parametrize("withdraw", [False, True], ids=["retire", "retire-now"])
def test_keys_retire_json_promotes_the_next_key(env: dict[str, str], keys_dir: Path, withdraw: bool) -> None:
    before = manifest(keys_dir)
    (active,) = by_state(before, "ES256", "active")
    (next_kid,) = by_state(before, "ES256", "next")

    output = idp_json(env, "keys", "retire", active, *(["--now"] if withdraw else []))

    assert [record["kid"] for record in output["activated"]] == [next_kid]
    (retired,) = [record for record in idp_json(env, "keys", "list") if record["kid"] == active]
    assert retired["state"] == "retired"
    assert retired["retired"] is not None
    assert retired["published"] is not withdraw
    assert (retired["withdrawn"] is not None) is withdraw


def test_keys_retire_says_what_it_did(env: dict[str, str], keys_dir: Path) -> None:
    (next_kid,) = by_state(manifest(keys_dir), "RS256", "next")

    result = idp(env, "keys", "retire", next_kid, "--now")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{next_kid}: retired and withdrawn from the JWKS\n"
    assert result.stderr == ""


def test_keys_prune_json_drops_withdrawn_keys_and_their_files(env: dict[str, str], keys_dir: Path) -> None:
    (next_kid,) = by_state(manifest(keys_dir), "ES256", "next")
    idp_json(env, "keys", "retire", next_kid, "--now")

    dropped = idp_json(env, "keys", "prune")

    assert [record["kid"] for record in dropped] == [next_kid]
    assert dropped[0]["published"] is False
    assert not (keys_dir / f"{next_kid}.pem").exists()
    assert next_kid not in {record["kid"] for record in manifest(keys_dir)}


def test_keys_prune_keeps_recently_retired_keys(env: dict[str, str], keys_dir: Path) -> None:
    (active,) = by_state(manifest(keys_dir), "ES256", "active")
    idp_json(env, "keys", "retire", active)
    before = snapshot(keys_dir)

    result = idp(env, "keys", "prune")

    assert result.returncode == 0, result.stderr
    # The longest signed token (access token, 600 s) plus the JWKS max-age (600 s).
    assert result.stdout == "nothing to prune: retired keys are kept 1200 s\n"
    assert {name for name in snapshot(keys_dir) if name.endswith(".pem")} == {
        name for name in before if name.endswith(".pem")
    }


@pytest.fixture
def ec_keys_dir(tmp_path: Path) -> Path:
    """ES256 and EdDSA keys, each active plus next: the rotations below then spend their time on locking, not RSA.

    (Every transaction loads every private key, and loading an RSA key checks it for ~45 ms: twenty rotations of
    the default keyring take ~25 s on two cores.)
    """
    directory = tmp_path / "ec-keys"
    keyring = Keyring.from_directory(directory)
    keyring.generate("ES256")
    keyring.generate("EdDSA")
    keyring.rotate()
    return directory


def test_concurrent_rotations_leave_a_consistent_keyring(
    env: dict[str, str], ec_keys_dir: Path, tmp_path: Path
) -> None:
    env = {**env, "IDP_KEYS_DIR": str(ec_keys_dir)}
    before = {record["kid"] for record in manifest(ec_keys_dir)}
    processes = [
        subprocess.Popen(
            [str(IDP), "keys", "rotate", "--json"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(CONCURRENT_ROTATIONS)
    ]
    outputs = [process.communicate(timeout=TIMEOUT) for process in processes]

    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert all(line.startswith("warning: ") for line in stderr.splitlines()), stderr
        assert sorted(record["alg"] for record in json.loads(stdout)["activated"]) == ["ES256", "EdDSA"]
    # No rotation was lost: each activated a different key per algorithm, and retired one.
    activated = [record["kid"] for stdout, _ in outputs for record in json.loads(stdout)["activated"]]
    assert len(set(activated)) == 2 * CONCURRENT_ROTATIONS

    records = idp_json(env, "keys", "list")
    counts = Counter((record["alg"], record["state"]) for record in records)
    assert counts == {
        ("ES256", "active"): 1,
        ("ES256", "next"): 1,
        ("ES256", "retired"): CONCURRENT_ROTATIONS,
        ("EdDSA", "active"): 1,
        ("EdDSA", "next"): 1,
        ("EdDSA", "retired"): CONCURRENT_ROTATIONS,
    }
    listed = {record["kid"] for record in records}
    assert before <= {record["kid"] for record in records if record["state"] == "retired"}
    assert set(activated) <= listed
    for kid in listed:
        serialization.load_pem_private_key((ec_keys_dir / f"{kid}.pem").read_bytes(), None)
    assert {path.stem for path in ec_keys_dir.glob("*.pem")} == listed
    assert sorted(path.name for path in ec_keys_dir.glob(".*.tmp")) == []
    assert sorted(path.name for path in (tmp_path / "instance").glob(".*.tmp")) == []


# -- bad input ---------------------------------------------------------------------------------------------------

BAD_INPUT = [
    pytest.param(("keys", "retire", "no-such-kid"), 1, "no key has kid 'no-such-kid': see `idp keys list`", id="kid"),
    pytest.param(
        ("keys", "rotate", "--alg", "HS256"),
        2,
        "Invalid value for '--alg': 'HS256' is not one of 'ES256', 'RS256', 'PS256', 'EdDSA'.",
        id="alg",
    ),
    pytest.param(("keys", "generate", "--alg", "ES256"), 1, "ES256 already has a next key (", id="second-next-key"),
    pytest.param(("keys", "list", "--bogus"), 2, "No such option '--bogus'", id="flag"),
    pytest.param(("keys", "rotate", "--alg"), 2, "Option '--alg' requires an argument.", id="flag-without-value"),
    pytest.param(("keys", "retire"), 2, "Missing argument 'KID'.", id="missing-argument"),
    pytest.param(("keys", "frobnicate"), 2, "No such command 'frobnicate'.", id="subcommand"),
    pytest.param(("frobnicate",), 2, "No such command 'frobnicate'.", id="command"),
    pytest.param(("keys", "generate"), 2, "Missing option '--alg'. Choose from: ES256, RS256", id="missing-option"),
]


@pytest.mark.parametrize(("args", "status", "expected"), BAD_INPUT)
def test_bad_input_exits_with_one_line_and_changes_nothing(
    env: dict[str, str], keys_dir: Path, args: tuple[str, ...], status: int, expected: str
) -> None:
    before = snapshot(keys_dir)

    assert_one_line_error(idp(env, *args), status, expected)

    assert snapshot(keys_dir) == before


@pytest.mark.parametrize(
    ("target", "content", "problem"),
    [
        (
            "rs256-key",
            b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
            "is not a readable private key",
        ),
        ("rs256-key", None, "cannot be read: No such file or directory"),
        ("manifest", b"{not json", "is not valid JSON"),
        ("manifest", b'{"version": 1, "keys": [{"kid": "x"}]}', "is malformed: 'alg'"),
    ],
    ids=["key-file", "missing-key-file", "manifest-not-json", "manifest-malformed"],
)
def test_corrupt_keyring_makes_keys_list_fail_with_one_line_naming_the_file(
    env: dict[str, str], keys_dir: Path, target: str, content: bytes | None, problem: str
) -> None:
    if target == "manifest":
        path = keys_dir / "keyring.json"
    else:
        (kid,) = by_state(manifest(keys_dir), "RS256", "active")
        path = keys_dir / f"{kid}.pem"
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)

    line = assert_one_line_error(idp(env, "keys", "list", "--json"), 1, str(path))

    assert line == f"idp: error: {path} {problem}"


@pytest.fixture
def encrypted_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """An encrypted keyring (ES256 active and next; EC keys are fast to generate)."""
    directory = tmp_path / "encrypted-keys"
    keyring = Keyring.from_directory(directory, PASSPHRASE)
    keyring.generate("ES256")
    keyring.rotate("ES256")
    return {**env, "IDP_KEYS_DIR": str(directory)}


def test_encrypted_keyring_works_with_the_right_passphrase(encrypted_env: dict[str, str]) -> None:
    env = {**encrypted_env, "IDP_KEYS_PASSPHRASE": PASSPHRASE}
    output = idp_json(env, "keys", "rotate")
    assert [record["alg"] for record in output["activated"]] == ["ES256"]
    directory = Path(env["IDP_KEYS_DIR"])
    for path in directory.glob("*.pem"):
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")


@pytest.mark.parametrize(
    ("passphrase", "expected"),
    [(None, ".pem is encrypted: set IDP_KEYS_PASSPHRASE"), (WRONG_PASSPHRASE, "IDP_KEYS_PASSPHRASE does not decrypt ")],
    ids=["missing", "wrong"],
)
@pytest.mark.parametrize(
    "command",
    [("keys", "list"), ("keys", "rotate"), ("keys", "generate", "--alg", "EdDSA"), ("init",)],
    ids=["list", "rotate", "generate", "init"],
)
def test_encrypted_keyring_without_the_right_passphrase_fails_and_changes_nothing(
    encrypted_env: dict[str, str], passphrase: str | None, expected: str, command: tuple[str, ...]
) -> None:
    env = dict(encrypted_env)
    if passphrase is not None:
        env["IDP_KEYS_PASSPHRASE"] = passphrase
    directory = Path(env["IDP_KEYS_DIR"])
    before = snapshot(directory)

    line = assert_one_line_error(idp(env, *command), 1, expected)

    assert str(directory) in line
    assert snapshot(directory) == before


def test_a_short_passphrase_is_refused_in_one_line(env: dict[str, str], keys_dir: Path) -> None:
    before = snapshot(keys_dir)

    line = assert_one_line_error(idp({**env, "IDP_KEYS_PASSPHRASE": "hunter2-hunter2"}, "keys", "list"), 1, "")

    assert line.startswith("idp: error: IDP_KEYS_PASSPHRASE must be at least 20 characters, not 15: ")
    assert "hunter2" not in line
    assert snapshot(keys_dir) == before


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("flock")), reason="needs openssl and flock")
@pytest.mark.parametrize("kid_start", ["", "-"], ids=["any-kid", "kid-starting-with-a-dash"])
def test_the_admin_guides_re_encryption_moves_the_keys_to_a_new_passphrase(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kid_start: str
) -> None:
    # A kid is a base64url thumbprint, so one key in 64 has a file name that a shell command reads as an option.
    generate = keyring_module._generate

    def generate_starting_with(*args: Any) -> SigningKey:
        while not (key := generate(*args)).kid.startswith(kid_start):
            pass
        return key

    monkeypatch.setattr(keyring_module, "_generate", generate_starting_with)
    directory = tmp_path / "short-passphrase-keys"
    keyring = Keyring.from_directory(directory, "short")  # what older releases accepted
    keyring.generate("ES256")
    keyring.rotate("ES256")
    guide = ADMIN_GUIDE.read_text()
    block = re.search(r"\*\*To change the passphrase\*\*.*?```sh\n(.*?)```", guide, re.DOTALL)
    assert block is not None
    cd, script = block.group(1).split("\n", 1)
    assert cd == "cd /var/lib/idp/keys"
    new = "the new passphrase, long enough"

    subprocess.run(
        ["/bin/sh", "-ec", script],
        cwd=directory,
        env={"PATH": os.environ["PATH"], "OLD_PASSPHRASE": "short", "NEW_PASSPHRASE": new},
        check=True,
        timeout=TIMEOUT,
    )

    env = {**env, "IDP_KEYS_DIR": str(directory), "IDP_KEYS_PASSPHRASE": new}
    assert sorted(record["state"] for record in idp_json(env, "keys", "rotate")["activated"]) == ["active"]
    assert sorted(path.name for path in directory.glob("*.new")) == []


# -- changes that servers cannot load ----------------------------------------------------------------------------


@pytest.fixture
def server_app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    """A server on the same keyring as the `idp` commands, seeing every change at once (no passphrase)."""
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def _withdraw_and_damage_the_new_key(env: dict[str, str], kid: str) -> subprocess.CompletedProcess[str]:
    keys_dir = Path(env["IDP_KEYS_DIR"])
    before = {path.name for path in keys_dir.glob("*.pem")}
    result = idp(env, "keys", "retire", kid, "--now")
    for path in keys_dir.glob("*.pem"):
        if path.name not in before:
            path.write_text("garbage")
    return result


def _withdraw_under_a_passphrase_the_server_lacks(env: dict[str, str], kid: str) -> subprocess.CompletedProcess[str]:
    return idp({**env, "IDP_KEYS_PASSPHRASE": PASSPHRASE}, "keys", "retire", kid, "--now")


FAILED_RELOADS: dict[str, tuple[Callable[[dict[str, str], str], subprocess.CompletedProcess[str]], str | None]] = {
    "damaged-new-key": (_withdraw_and_damage_the_new_key, None),
    "passphrase-the-server-lacks": (
        _withdraw_under_a_passphrase_the_server_lacks,
        "warning: the keys this command added are the keyring's first encrypted keys: "
        "every server needs this IDP_KEYS_PASSPHRASE, or it cannot load them",
    ),
}


@pytest.mark.parametrize("case", list(FAILED_RELOADS))
def test_userinfo_refuses_a_withdrawn_keys_token_even_when_the_server_cannot_load_the_change(
    server_app: Flask, sandbox: SandboxAgency, env: dict[str, str], case: str
) -> None:
    created = register(server_app)
    browser = server_app.test_client()
    sign_in(browser, sandbox)
    issued = exchange(browser, created, authorize(browser, created.client.id)).get_json()
    bearer = {"Authorization": f"Bearer {issued['access_token']}"}
    assert browser.get("/userinfo", headers=bearer).status_code == 200
    kid = jws.extract_compact(issued["access_token"].encode()).protected["kid"]
    change, warning = FAILED_RELOADS[case]

    result = change(env, kid)

    assert result.returncode == 0, result.stderr
    refused = browser.get("/userinfo", headers=bearer)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert kid not in {key["kid"] for key in browser.get("/jwks").get_json()["keys"]}
    assert browser.get("/readyz").status_code == 503
    # The command cannot know the servers' passphrase, but it says when servers need one for the first time.
    warnings = [line for line in result.stderr.splitlines() if "encrypted" in line]
    assert warnings == ([warning] if warning else [])
    # The server signs on, with the next key it already held.
    again = exchange(browser, created, authorize(browser, created.client.id)).get_json()
    fresh = jws.extract_compact(again["access_token"].encode()).protected["kid"]
    assert fresh != kid
    assert browser.get("/userinfo", headers={"Authorization": f"Bearer {again['access_token']}"}).status_code == 200


def give_to_nobody(keys_dir: Path) -> None:
    for path in [keys_dir, *keys_dir.iterdir()]:
        os.chown(path, NOBODY, NOBODY)


@ROOT_ONLY
def test_keys_changed_as_root_stay_readable_by_the_folder_owner(env: dict[str, str], keys_dir: Path) -> None:
    give_to_nobody(keys_dir)
    (active,) = by_state(manifest(keys_dir), "ES256", "active")

    result = idp(env, "keys", "retire", active, "--now")

    assert result.returncode == 0, result.stderr
    owners = {path.name: (path.stat().st_uid, path.stat().st_gid) for path in keys_dir.iterdir()}
    assert set(owners.values()) == {(NOBODY, NOBODY)}, owners


@ROOT_ONLY
def test_a_change_servers_cannot_load_is_saved_and_reported(env: dict[str, str], keys_dir: Path) -> None:
    give_to_nobody(keys_dir)
    records = manifest(keys_dir)
    (active,) = by_state(records, "ES256", "active")
    (rs256_next,) = by_state(records, "RS256", "next")
    left_by_root = keys_dir / f"{rs256_next}.pem"
    os.chown(left_by_root, 0, 0)

    result = idp(env, "keys", "retire", active, "--now")

    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == f"{active}: retired and withdrawn from the JWKS"
    assert result.stderr.splitlines()[-1] == (
        f"idp: error: the keyring changed, but servers cannot load it: {left_by_root} belongs to uid 0, but servers "
        f"run as uid {NOBODY}, which owns {keys_dir}, and cannot read it: run `chown {NOBODY}:{NOBODY} {left_by_root}`"
    )
    assert all(line.startswith("warning: ") for line in result.stderr.splitlines()[:-1])
    (withdrawn,) = [record for record in manifest(keys_dir) if record["kid"] == active]
    assert withdrawn["withdrawn"] is not None


# -- init --------------------------------------------------------------------------------------------------------


def test_init_with_an_unreachable_database_fails_with_one_line(env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **env,
        "IDP_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x",
        "IDP_KEYS_DIR": str(tmp_path / "fresh-keys"),
    }

    line = assert_one_line_error(idp(env, "init"), 1, "idp: error: database: ")

    assert "127.0.0.1" in line
    assert "port 1 failed" in line
    assert not (tmp_path / "fresh-keys").exists()


def test_init_refuses_to_create_a_keyring_over_key_files_without_a_manifest(
    env: dict[str, str], keys_dir: Path, tmp_path: Path
) -> None:
    (keys_dir / "keyring.json").unlink()
    before = snapshot(keys_dir)

    line = assert_one_line_error(idp(env, "init"), 1, "")

    assert line == (
        f"idp: error: {keys_dir} holds 4 key files but no keyring.json: restore the folder from your latest backup, "
        "or move the .pem files out of it to start a new keyring"
    )
    assert snapshot(keys_dir) == before
    assert not (tmp_path / "instance" / "idp.sqlite3").exists()


def test_init_twice_is_idempotent(env: dict[str, str], tmp_path: Path) -> None:
    keys = tmp_path / "fresh-keys"
    env = {**env, "IDP_KEYS_DIR": str(keys)}

    first = idp(env, "init")

    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    assert first.stdout.splitlines()[1] == f"keyring: created in {keys} with 4 keys"
    assert first.stdout.startswith("database: upgraded from empty to revision ")
    revision = first.stdout.splitlines()[0].rsplit(" ", 1)[1]
    manifest_bytes = (keys / "keyring.json").read_bytes()
    files = snapshot(keys)

    second = idp(env, "init")

    assert second.returncode == 0, second.stderr
    assert second.stderr == ""
    assert second.stdout == f"database: up to date (revision {revision})\nkeyring: {keys} already exists\n"
    assert (keys / "keyring.json").read_bytes() == manifest_bytes
    assert snapshot(keys) == files
    third = idp_json(env, "init")
    assert third == {"database": {"before": revision, "after": revision}, "keys_created": []}
    assert snapshot(keys) == files
