"""Settings read from IDP_* variables: defaults, generated secrets, and what production refuses."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from idp.settings import GENERATED_SECRETS, Settings, SettingsError

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


def test_defaults_serve_one_machine(tmp_path: Path) -> None:
    settings = Settings.from_env({"IDP_INSTANCE_DIR": str(tmp_path)})
    assert settings.issuer == "http://localhost:8000"
    assert settings.env == "development"
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path.resolve() / 'idp.sqlite3'}"
    assert settings.keys_dir == Path("keys")
    assert settings.carrier_agency_url is None
    assert (settings.code_ttl, settings.id_token_ttl, settings.access_token_ttl) == (60, 300, 600)
    assert settings.refresh_token_ttl == 14 * 86400
    assert settings.refresh_token_absolute_ttl == 30 * 86400
    assert settings.jwks_max_age < 86400


def test_missing_secrets_are_generated_once_with_private_mode(tmp_path: Path) -> None:
    first = Settings.from_env({"IDP_INSTANCE_DIR": str(tmp_path)})
    second = Settings.from_env({"IDP_INSTANCE_DIR": str(tmp_path)})
    assert first.generated == frozenset(GENERATED_SECRETS)
    for name in GENERATED_SECRETS:
        assert len(getattr(first, name)) >= 43
        assert getattr(first, name) == getattr(second, name)
    assert len({getattr(first, name) for name in GENERATED_SECRETS}) == len(GENERATED_SECRETS)
    secrets_file = tmp_path / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert set(json.loads(secrets_file.read_text())) == set(GENERATED_SECRETS)


def test_secret_set_by_admin_wins_over_generated(tmp_path: Path) -> None:
    settings = Settings.from_env({"IDP_INSTANCE_DIR": str(tmp_path), "IDP_SECRET_KEY": "from-admin"})
    assert settings.secret_key == "from-admin"
    assert "secret_key" not in settings.generated


def test_variables_override_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "IDP_INSTANCE_DIR": str(tmp_path),
            "IDP_ISSUER": "http://localhost:9000/",
            "IDP_DATABASE_URL": "postgresql+psycopg://idp@db/idp",
            "IDP_KEYS_DIR": "/etc/idp/keys",
            "IDP_CODE_TTL": "30",
            "IDP_JWKS_MAX_AGE": "120",
            "IDP_ACCESS_TOKEN_ALG": "EdDSA",
        }
    )
    assert settings.issuer == "http://localhost:9000"
    assert settings.sqlalchemy_url == "postgresql+psycopg://idp@db/idp"
    assert settings.keys_dir == Path("/etc/idp/keys")
    assert settings.code_ttl == 30
    assert settings.jwks_max_age == 120
    assert settings.access_token_alg == "EdDSA"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"IDP_ENV": "staging"}, "IDP_ENV must be one of development, production, not 'staging'"),
        ({"IDP_ISSUER": "ftp://idp"}, "IDP_ISSUER must be an http(s) URL"),
        ({"IDP_ISSUER": "https://idp.example/?a=b"}, "IDP_ISSUER must be an http(s) URL"),
        ({"IDP_CODE_TTL": "soon"}, "IDP_CODE_TTL must be a whole number of seconds, not 'soon'"),
        ({"IDP_ACCESS_TOKEN_TTL": "-5"}, "IDP_ACCESS_TOKEN_TTL must be positive, not -5"),
        ({"IDP_ACCESS_TOKEN_ALG": "HS256"}, "IDP_ACCESS_TOKEN_ALG must be ES256, RS256, PS256 or EdDSA"),
        ({"IDP_KEYRING_CHECK_INTERVAL": "often"}, "IDP_KEYRING_CHECK_INTERVAL must be a number of seconds"),
        ({"IDP_KEYS_PASSPHRASE": "s3cret passphrase"}, "IDP_KEYS_PASSPHRASE must be at least 20 characters, not 17"),
    ],
)
def test_malformed_values_are_refused_in_one_line(tmp_path: Path, variables: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"IDP_INSTANCE_DIR": str(tmp_path), **variables})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_production_with_every_secret_set_starts(tmp_path: Path) -> None:
    settings = Settings.from_env({**PRODUCTION, "IDP_INSTANCE_DIR": str(tmp_path)})
    assert settings.is_production
    assert settings.generated == frozenset()


def test_production_refuses_plain_http_issuer(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=re.escape("needs an https IDP_ISSUER, not http://login.gg.go.kr")):
        Settings.from_env({**PRODUCTION, "IDP_INSTANCE_DIR": str(tmp_path), "IDP_ISSUER": "http://login.gg.go.kr"})


@pytest.mark.parametrize("variable", ["IDP_SECRET_KEY", "IDP_DATA_KEY", "IDP_CI_PEPPER", "IDP_PAIRWISE_SECRET"])
def test_production_refuses_generated_secrets_and_writes_none(tmp_path: Path, variable: str) -> None:
    variables = {**PRODUCTION, "IDP_INSTANCE_DIR": str(tmp_path)}
    del variables[variable]
    with pytest.raises(SettingsError, match=f"needs secrets set by the admin, not generated: {variable}$"):
        Settings.from_env(variables)
    assert not (tmp_path / "secrets.json").exists()


def test_production_refuses_the_sandbox_agency(tmp_path: Path) -> None:
    variables = {**PRODUCTION, "IDP_INSTANCE_DIR": str(tmp_path)}
    del variables["IDP_CARRIER_AGENCY_URL"]
    with pytest.raises(SettingsError, match="needs IDP_CARRIER_AGENCY_URL"):
        Settings.from_env(variables)


def test_unwritable_instance_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SettingsError, match="cannot read or create generated secrets in"):
        Settings.from_env({"IDP_INSTANCE_DIR": str(blocker / "instance")})


def test_production_refuses_a_plain_http_agency(tmp_path: Path) -> None:
    variables = {**PRODUCTION, "IDP_INSTANCE_DIR": str(tmp_path), "IDP_CARRIER_AGENCY_URL": "http://agency.example.kr"}
    with pytest.raises(SettingsError, match="needs an https IDP_CARRIER_AGENCY_URL"):
        Settings.from_env(variables)


def test_production_refuses_the_sandbox_site_secret_and_short_secrets(tmp_path: Path) -> None:
    variables = {**PRODUCTION, "IDP_INSTANCE_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match="needs IDP_CARRIER_SITE_SECRET"):
        Settings.from_env({**variables, "IDP_CARRIER_SITE_SECRET": "sandbox-site-secret"})
    with pytest.raises(SettingsError, match="at least 32 characters: IDP_DATA_KEY"):
        Settings.from_env({**variables, "IDP_DATA_KEY": "short"})


@pytest.mark.parametrize(("variable", "value"), [("IDP_CARRIER_TIMEOUT", "0"), ("IDP_LOG_LEVEL", "loud")])
def test_values_that_would_break_the_server_are_refused(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({"IDP_INSTANCE_DIR": str(tmp_path), variable: value})


def test_help_desk_defaults_to_the_call_centre_on_weekdays(tmp_path: Path) -> None:
    settings = Settings.from_env({"IDP_INSTANCE_DIR": str(tmp_path)})
    assert settings.help_phone == "031-120"
    hours = settings.help_desk_hours
    assert (hours.days, hours.opens, hours.closes) == ("weekdays", "09:00", "18:00")


@pytest.mark.parametrize(
    ("raw", "days", "opens", "closes"),
    [("always", "always", "", ""), ("Daily  08:00-24:00", "daily", "08:00", "24:00")],
)
def test_help_desk_hours_are_read_into_their_parts(
    tmp_path: Path, raw: str, days: str, opens: str, closes: str
) -> None:
    settings = Settings.from_env(
        {"IDP_INSTANCE_DIR": str(tmp_path), "IDP_HELP_HOURS": raw, "IDP_HELP_PHONE": "+82 31-120"}
    )
    assert settings.help_phone == "+82 31-120"
    hours = settings.help_desk_hours
    assert (hours.days, hours.opens, hours.closes) == (days, opens, closes)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IDP_HELP_HOURS", "24/7"),
        ("IDP_HELP_HOURS", "weekdays 18:00-09:00"),
        ("IDP_HELP_HOURS", "daily 09:00-24:30"),
        ("IDP_HELP_HOURS", "weekdays 9:00-18:00"),
        ("IDP_HELP_PHONE", "call us"),
        ("IDP_HELP_PHONE", "<script>"),
    ],
)
def test_help_desk_values_residents_could_not_use_are_refused(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable) as error:
        Settings.from_env({"IDP_INSTANCE_DIR": str(tmp_path), variable: value})
    assert "\n" not in str(error.value)
