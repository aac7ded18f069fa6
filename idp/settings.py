"""Settings: every IDP_* environment variable, its default and why, read once into a frozen dataclass."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

ENVIRONMENTS = ("development", "production")
SECRETS_FILE = "secrets.json"
SANDBOX_DEFAULT_URL = "http://127.0.0.1:8100"
# 32 characters of base64url carry 192 bits: `python -c "import secrets; print(secrets.token_urlsafe(32))"` gives 43.
MIN_SECRET_LENGTH = 32
MIN_KEYS_PASSPHRASE_LENGTH = 20  # why: the docstring of Settings.keys_passphrase
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_HELP_PHONE = "031-120"  # the Gyeonggi-do call centre
DEFAULT_HELP_HOURS = "weekdays 09:00-18:00"
HELP_PHONE = re.compile(r"\+?[0-9][0-9 ()\-]{1,28}[0-9]")
HELP_HOURS = re.compile(r"(weekdays|daily) ([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])")
SANDBOX_SITE_SECRET = "sandbox-site-secret"  # noqa: S105  (the sandbox's own; production refuses it)
# The generated secrets, each 256 random bits; the names are the IDP_* variables that override them.
GENERATED_SECRETS = ("secret_key", "data_key", "ci_pepper", "pairwise_secret")


class SettingsError(Exception):
    """The environment holds a value the IdP cannot run with; the message is one line for the admin."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the IdP runs with. Read it with `Settings.from_env()`; every field has a default for one machine."""

    issuer: str = "http://localhost:8000"
    """IDP_ISSUER: the issuer URL. Every endpoint derives from it and the WebAuthn RP ID is its host. The default
    names `localhost` (not 127.0.0.1) because browsers refuse WebAuthn on a bare IP address."""

    env: str = "development"
    """IDP_ENV: `development` or `production`. Production refuses a non-https issuer, the sandbox agency and
    every generated secret, because each of those is only safe on a developer's machine."""

    instance_dir: Path = Path("instance")
    """IDP_INSTANCE_DIR: generated local state (the SQLite file, generated secrets, the sandbox's URL)."""

    database_url: str = ""
    """IDP_DATABASE_URL: a SQLAlchemy URL. Empty means `idp.sqlite3` in the instance folder, which serves one
    machine; a fleet points every process at the same `postgresql+psycopg://…`."""

    keys_dir: Path = Path("keys")
    """IDP_KEYS_DIR: where the signing keyring lives."""

    keys_passphrase: str | None = None
    """IDP_KEYS_PASSPHRASE: when set, new private keys are encrypted at rest with it (PKCS#8 under PBKDF2 at 600,000
    iterations, pkcs8.PBKDF2_ITERATIONS). It must be at least 20 characters (MIN_KEYS_PASSPHRASE_LENGTH). It alone
    protects a stolen copy of the keys folder or of a backup, and the thief guesses offline for as long as they
    like; each guess costs those 600,000 iterations, so one current GPU tries on the order of ten thousand a second.
    Twenty random letters and digits (about 119 bits), or a phrase of four or more random words (about 52 bits for
    four: thousands of GPU-years), reach the length; the short passwords people make up do not. Generate it, like
    the other secrets. Refused in every environment: keys keep the passphrase they were encrypted under until they
    are re-encrypted, so a short one is cheapest to refuse before the first key uses it."""

    secret_key: str = ""
    """IDP_SECRET_KEY: signs cookies and CSRF tokens. Generated once into the instance folder when unset."""

    data_key: str = ""
    """IDP_DATA_KEY: encrypts secrets at rest (TOTP secrets, a raw CI where a client is allowed it)."""

    ci_pepper: str = ""
    """IDP_CI_PEPPER: keys the CI blind index, so a stolen database cannot be joined with other CI lists."""

    pairwise_secret: str = ""
    """IDP_PAIRWISE_SECRET: derives pairwise `sub` values. Never change it: every service would see new subjects."""

    generated: frozenset[str] = field(default_factory=frozenset)
    """Which of the secrets above were generated here rather than set by the admin."""

    carrier_agency_url: str | None = None
    """IDP_CARRIER_AGENCY_URL: the carrier verification agency. Unset means the sandbox agency (development)."""

    carrier_site_code: str = "GG-IDP-SANDBOX"
    """IDP_CARRIER_SITE_CODE: the site code the agency issued to this IdP; results must name it as `aud`."""

    carrier_site_secret: str = SANDBOX_SITE_SECRET
    """IDP_CARRIER_SITE_SECRET: the bearer secret the agency issued; the default is the sandbox's own."""

    carrier_timeout: float = 5.0
    """IDP_CARRIER_TIMEOUT: seconds to wait for the agency before showing the resident other ways in."""

    webauthn_require_attestation: bool = False
    """IDP_WEBAUTHN_REQUIRE_ATTESTATION: only passkeys whose authenticator model is attested and allowed."""

    fido_metadata_path: Path | None = None
    """IDP_FIDO_METADATA_PATH: the allowed authenticator models and their attestation roots, as the verified payload
    of the FIDO Metadata Service (MDS3) or a list of metadata statements (docs/admin.md, Passkeys); device-bound
    passkeys attested by one of these reach `phrh`."""

    passkey_recovery_wait: int = 72 * 3600
    """IDP_PASSKEY_RECOVERY_WAIT: seconds a passkey added on the recovery path (after a mobile-phone verification
    alone, while the resident had a passkey or an authenticator app) counts only as that verification (AAL1, no
    `mfa`). Three days give the resident, warned on every signed-in browser, time to notice and remove a passkey
    that someone who took over their phone number added."""

    ratelimit_storage: str = "database"
    """IDP_RATELIMIT_STORAGE: where limits and lockouts are counted (`database`, or `redis://…` for a fleet)."""

    code_ttl: int = 60
    """IDP_CODE_TTL: authorization code lifetime in seconds; short because a code is exchanged at once."""

    id_token_ttl: int = 300
    """IDP_ID_TOKEN_TTL: ID token lifetime in seconds."""

    access_token_ttl: int = 600
    """IDP_ACCESS_TOKEN_TTL: access token lifetime in seconds; JWTs cannot be recalled, so keep it short."""

    refresh_token_ttl: int = 14 * 86400
    """IDP_REFRESH_TOKEN_TTL: refresh token idle lifetime (sliding) in seconds."""

    refresh_token_absolute_ttl: int = 30 * 86400
    """IDP_REFRESH_TOKEN_ABSOLUTE_TTL: refresh token family lifetime in seconds, however often it is used."""

    access_token_alg: str = "ES256"  # noqa: S105  (an algorithm name, not a secret)
    """IDP_ACCESS_TOKEN_ALG: the algorithm of JWT access tokens; ES256 signs fast and verifies everywhere."""

    jwks_max_age: int = 600
    """IDP_JWKS_MAX_AGE: `Cache-Control: max-age` of the JWKS in seconds. A `next` key must be published longer
    than this before it signs, so `idp keys rotate` warns when the next key is younger."""

    keyring_check_interval: float = 1.0
    """IDP_KEYRING_CHECK_INTERVAL: how often (seconds) a running server looks for a rotated keyring."""

    client_cache_interval: float = 1.0
    """IDP_CLIENT_CACHE_INTERVAL: how often (seconds) a server process asks whether any client changed. Clients are
    cached per process (every token request names one); a change made anywhere is seen everywhere within this.
    0 asks on every request."""

    log_level: str = "INFO"
    """IDP_LOG_LEVEL: the logging level (DEBUG, INFO, WARNING, ERROR)."""

    trusted_proxies: int = 0
    """IDP_TRUSTED_PROXIES: how many reverse proxies stand in front of the IdP. Their X-Forwarded-For and
    X-Forwarded-Proto are believed, so rate limits and audit records see the resident's address; 0 believes none,
    because anyone can send those headers to a server that is reached directly."""

    help_phone: str = DEFAULT_HELP_PHONE
    """IDP_HELP_PHONE: the help desk residents can call, shown on lockout, error and recovery pages (and every
    page's footer). The default is the Gyeonggi-do call centre; set the line that can actually help your
    residents with their sign-in. Digits, spaces, hyphens, parentheses and a leading +."""

    help_hours: str = DEFAULT_HELP_HOURS
    """IDP_HELP_HOURS: when the help desk answers, in Korea time: `weekdays HH:MM-HH:MM`, `daily HH:MM-HH:MM` or
    `always`. Structured rather than free text so each language shows it in its own words."""

    @property
    def help_desk_hours(self) -> HelpHours:
        return help_hours_of(self.help_hours)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.instance_dir / 'idp.sqlite3').resolve()}"

    @property
    def longest_signed_token_ttl(self) -> int:
        """The longest time a token signed by the keyring stays valid (refresh tokens are opaque)."""
        return max(self.id_token_ttl, self.access_token_ttl)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read IDP_* variables, generating missing secrets into the instance folder outside production.

        Raises:
            SettingsError: a value is malformed, or production settings are unsafe.
        """
        env_vars = os.environ if environ is None else environ

        def text(name: str, default: str) -> str:
            return env_vars.get(f"IDP_{name}", "").strip() or default

        def seconds(name: str, default: int) -> int:
            raw = text(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"IDP_{name} must be a whole number of seconds, not {raw!r}") from None
            if value <= 0:
                raise SettingsError(f"IDP_{name} must be positive, not {value}")
            return value

        env = text("ENV", "development")
        if env not in ENVIRONMENTS:
            raise SettingsError(f"IDP_ENV must be one of {', '.join(ENVIRONMENTS)}, not {env!r}")
        issuer = text("ISSUER", "http://localhost:8000").rstrip("/")
        parts = urlsplit(issuer)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise SettingsError(f"IDP_ISSUER must be an http(s) URL without query or fragment, not {issuer!r}")
        instance_dir = Path(text("INSTANCE_DIR", "instance"))
        access_token_alg = text("ACCESS_TOKEN_ALG", "ES256")
        if access_token_alg not in ("ES256", "RS256", "PS256", "EdDSA"):
            raise SettingsError(f"IDP_ACCESS_TOKEN_ALG must be ES256, RS256, PS256 or EdDSA, not {access_token_alg!r}")
        check_interval = _positive_float(text("KEYRING_CHECK_INTERVAL", "1.0"), "IDP_KEYRING_CHECK_INTERVAL")

        given = {name: text(name.upper(), "") for name in GENERATED_SECRETS}
        missing = [name for name, value in given.items() if not value]
        generated: set[str] = set()
        if missing and env != "production":
            stored = _load_or_create_secrets(instance_dir)
            for name in missing:
                given[name] = stored[name]
                generated.add(name)

        settings = cls(
            issuer=issuer,
            env=env,
            instance_dir=instance_dir,
            database_url=text("DATABASE_URL", ""),
            keys_dir=Path(text("KEYS_DIR", "keys")),
            keys_passphrase=_keys_passphrase(env_vars.get("IDP_KEYS_PASSPHRASE") or None),
            generated=frozenset(generated),
            carrier_agency_url=text("CARRIER_AGENCY_URL", "") or None,
            carrier_site_code=text("CARRIER_SITE_CODE", "GG-IDP-SANDBOX"),
            carrier_site_secret=text("CARRIER_SITE_SECRET", SANDBOX_SITE_SECRET),
            carrier_timeout=_positive_float(text("CARRIER_TIMEOUT", "5"), "IDP_CARRIER_TIMEOUT", allow_zero=False),
            ratelimit_storage=text("RATELIMIT_STORAGE", "database"),
            passkey_recovery_wait=seconds("PASSKEY_RECOVERY_WAIT", 72 * 3600),
            webauthn_require_attestation=text("WEBAUTHN_REQUIRE_ATTESTATION", "false").lower() in ("1", "true", "yes"),
            fido_metadata_path=Path(text("FIDO_METADATA_PATH", "")) if text("FIDO_METADATA_PATH", "") else None,
            code_ttl=seconds("CODE_TTL", 60),
            id_token_ttl=seconds("ID_TOKEN_TTL", 300),
            access_token_ttl=seconds("ACCESS_TOKEN_TTL", 600),
            refresh_token_ttl=seconds("REFRESH_TOKEN_TTL", 14 * 86400),
            refresh_token_absolute_ttl=seconds("REFRESH_TOKEN_ABSOLUTE_TTL", 30 * 86400),
            access_token_alg=access_token_alg,
            jwks_max_age=seconds("JWKS_MAX_AGE", 600),
            keyring_check_interval=check_interval,
            client_cache_interval=_positive_float(text("CLIENT_CACHE_INTERVAL", "1.0"), "IDP_CLIENT_CACHE_INTERVAL"),
            log_level=_log_level(text("LOG_LEVEL", "INFO")),
            trusted_proxies=_count(text("TRUSTED_PROXIES", "0"), "IDP_TRUSTED_PROXIES"),
            help_phone=_help_phone(text("HELP_PHONE", DEFAULT_HELP_PHONE)),
            help_hours=help_hours_of(text("HELP_HOURS", DEFAULT_HELP_HOURS)).raw,
            **given,
        )
        settings.check_production()
        return settings

    def check_production(self) -> None:
        """Refuse settings that are only safe on a developer's machine.

        Raises:
            SettingsError: with one line naming the first unsafe setting.
        """
        if not self.is_production:
            return
        if urlsplit(self.issuer).scheme != "https":
            raise SettingsError(f"IDP_ENV=production needs an https IDP_ISSUER, not {self.issuer}")
        unset = [name for name in GENERATED_SECRETS if name in self.generated or not getattr(self, name)]
        if unset:
            names = ", ".join(f"IDP_{name.upper()}" for name in unset)
            raise SettingsError(f"IDP_ENV=production needs secrets set by the admin, not generated: {names}")
        short = [name for name in GENERATED_SECRETS if len(getattr(self, name)) < MIN_SECRET_LENGTH]
        if short:
            names = ", ".join(f"IDP_{name.upper()}" for name in short)
            raise SettingsError(f"IDP_ENV=production needs secrets of at least {MIN_SECRET_LENGTH} characters: {names}")
        if self.carrier_agency_url is None:
            raise SettingsError(
                "IDP_ENV=production needs IDP_CARRIER_AGENCY_URL: the sandbox agency is for development"
            )
        if urlsplit(self.carrier_agency_url).scheme != "https":
            raise SettingsError(
                f"IDP_ENV=production needs an https IDP_CARRIER_AGENCY_URL, not {self.carrier_agency_url}"
            )
        if self.carrier_site_secret == SANDBOX_SITE_SECRET:
            raise SettingsError("IDP_ENV=production needs IDP_CARRIER_SITE_SECRET: the default is the sandbox's")

    @property
    def rp_id(self) -> str:
        """The WebAuthn relying party id: the issuer's host."""
        return urlsplit(self.issuer).hostname or "localhost"

    @property
    def origin(self) -> str:
        """The origin WebAuthn responses must come from."""
        parts = urlsplit(self.issuer)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def sandbox_url_file(self) -> Path:
        """Where `idp sandbox serve` writes its URL, so the IdP and the CLI find it."""
        return self.instance_dir / "sandbox.url"

    def agency_url(self) -> str:
        """The agency to call: IDP_CARRIER_AGENCY_URL, else the sandbox `idp serve` started, else its default."""
        if self.carrier_agency_url:
            return self.carrier_agency_url
        try:
            return self.sandbox_url_file.read_text().strip() or SANDBOX_DEFAULT_URL
        except OSError:
            return SANDBOX_DEFAULT_URL


def _keys_passphrase(raw: str | None) -> str | None:
    if raw is not None and len(raw) < MIN_KEYS_PASSPHRASE_LENGTH:
        # The length only: the passphrase itself is never echoed.
        raise SettingsError(
            f"IDP_KEYS_PASSPHRASE must be at least {MIN_KEYS_PASSPHRASE_LENGTH} characters, not {len(raw)}: "
            "generate one, and re-encrypt keys encrypted under the short one (docs/admin.md, The passphrase)"
        )
    return raw


@dataclass(frozen=True, slots=True)
class HelpHours:
    """When the help desk answers (Korea time): every day round the clock, or from `opens` to `closes` on
    weekdays or every day."""

    raw: str
    days: str  # "always", "weekdays" or "daily"
    opens: str = ""
    closes: str = ""


def help_hours_of(raw: str) -> HelpHours:
    """IDP_HELP_HOURS read: `always`, `weekdays 09:00-18:00` or `daily 08:00-22:00`.

    Raises:
        SettingsError: anything else.
    """
    value = " ".join(raw.split()).lower()
    if value == "always":
        return HelpHours(value, "always")
    match = HELP_HOURS.fullmatch(value)
    opens, closes = (f"{match[2]}:{match[3]}", f"{match[4]}:{match[5]}") if match else ("", "")
    if match is None or closes > "24:00" or opens >= closes:
        raise SettingsError(
            f"IDP_HELP_HOURS must be 'always', 'weekdays HH:MM-HH:MM' or 'daily HH:MM-HH:MM', not {raw!r}"
        )
    return HelpHours(value, match[1], opens, closes)


def _help_phone(raw: str) -> str:
    if not HELP_PHONE.fullmatch(raw):
        raise SettingsError(
            f"IDP_HELP_PHONE must be a phone number (digits, spaces, hyphens, parentheses, a leading +), not {raw!r}"
        )
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"IDP_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {raw!r}")
    return level


def _count(raw: str, name: str) -> int:
    if not raw.isdigit():
        raise SettingsError(f"{name} must be a whole number, not {raw!r}")
    return int(raw)


def _positive_float(raw: str, name: str, *, allow_zero: bool = True) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise SettingsError(f"{name} must be {'at least 0' if allow_zero else 'more than 0'}, not {raw}")
    return value


def _load_or_create_secrets(instance_dir: Path) -> dict[str, str]:
    """Read the generated secrets, creating them once (mode 0600) so that restarts keep sessions and subjects."""
    path = instance_dir / SECRETS_FILE
    try:
        instance_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        existed = path.exists()
        stored: dict[str, str] = json.loads(path.read_text()) if existed else {}
        if all(isinstance(stored.get(name), str) and stored[name] for name in GENERATED_SECRETS):
            return stored
        for name in GENERATED_SECRETS:
            stored.setdefault(name, secrets.token_urlsafe(32))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(stored, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        # Processes starting at once on a fresh folder must agree: link() creates the file only if it is still
        # absent, so the first wins and the others read its secrets. Only a file read and found incomplete
        # (an older version's) is replaced.
        try:
            if existed:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        result: dict[str, str] = json.loads(path.read_text())
        return result
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read or create generated secrets in {path}: {exc}") from None


def data_fernet(settings: Settings) -> Fernet:
    """The cipher for secrets at rest (TOTP secrets, a raw CI where allowed), keyed from IDP_DATA_KEY."""
    # Fernet (AES-128-CBC + HMAC-SHA256): authenticated, so a changed ciphertext is detected, not decrypted.
    key = base64.urlsafe_b64encode(hashlib.sha256(b"idp data key\x00" + settings.data_key.encode()).digest())
    return Fernet(key)


def recovery_code_key(settings: Settings) -> bytes:
    """The key of the recovery codes' digests, derived from IDP_DATA_KEY (a copy of the table alone is useless)."""
    return hashlib.sha256(b"idp recovery codes\x00" + settings.data_key.encode()).digest()
