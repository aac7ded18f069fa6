"""Passkey attestation: FIDO metadata files, packed x5c chains to each model's own roots, and what is refused."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from webauthn_authenticator import AttestationKey, CertificateAuthority, SoftAuthenticator

from idp.authn.attestation import UNTRUSTED_STATUSES, AttestationPolicy
from idp.authn.passkeys import (
    PasskeyRejectedError,
    register_passkey,
    registration_options,
)
from idp.models import AuditEvent, Passkey, Resident
from idp.web.passkeys import passkey_event

RP_ID = "login.gg.go.kr"
ORIGIN = "https://login.gg.go.kr"
ISSUER = "https://login.gg.go.kr"
BINDING = "binding-of-this-browser"
NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
# Two authenticator models of made-up vendors (not real AAGUIDs).
MODEL_A = uuid.UUID("a11ce000-0000-4000-8000-00000000000a").bytes
MODEL_B = uuid.UUID("b0b00000-0000-4000-8000-00000000000b").bytes
CERTIFIED = (("FIDO_CERTIFIED_L1", "2024-01-15"),)

Attestation = AttestationKey | Literal["none", "self"]

# -- helpers ---------------------------------------------------------------------------------------------------------


def text(aaguid: bytes) -> str:
    return str(uuid.UUID(bytes=aaguid))


def statement(aaguid: bytes, *roots: CertificateAuthority) -> dict[str, Any]:
    """A FIDO metadata statement (v3) for a passkey model, with its roots as base64 DER."""
    return {
        "aaguid": text(aaguid),
        "description": f"Security key {text(aaguid)[:4]}",
        "protocolFamily": "fido2",
        "schema": 3,
        "attestationTypes": ["basic_full"],
        "attestationRootCertificates": [root.base64_der for root in roots],
    }


def mds3_entry(
    aaguid: bytes, *roots: CertificateAuthority, statuses: Sequence[tuple[str, str]] = CERTIFIED
) -> dict[str, Any]:
    """An entry of the MDS3 BLOB payload: the statement wrapped with its status reports."""
    return {
        "aaguid": text(aaguid),
        "metadataStatement": statement(aaguid, *roots),
        "statusReports": [{"status": status, "effectiveDate": date} for status, date in statuses],
        "timeOfLastStatusChange": statuses[-1][1] if statuses else "2024-01-15",
    }


def mds3_payload(*entries: dict[str, Any]) -> dict[str, Any]:
    """The decoded payload of the MDS3 BLOB (the JWS the FIDO Alliance signs)."""
    return {"legalHeader": "Retrieval and use of this BLOB …", "no": 42, "nextUpdate": "2026-12-01", "entries": entries}


def metadata_file(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "fido-metadata.json"
    path.write_text(json.dumps(document))
    return path


def policy_of(tmp_path: Path, document: object, *, require: bool = True) -> AttestationPolicy:
    return AttestationPolicy.from_metadata_file(metadata_file(tmp_path, document), require=require)


def enrol(
    db: Session,
    resident: Resident,
    policy: AttestationPolicy,
    *,
    aaguid: bytes,
    attestation: Attestation,
    backup_eligible: bool = False,
) -> Passkey:
    """One registration ceremony: options under `policy`, a response from a model `aaguid` authenticator."""
    authenticator = SoftAuthenticator(RP_ID, ORIGIN, aaguid=aaguid, backup_eligible=backup_eligible)
    options = json.loads(
        registration_options(
            db, resident, rp_id=RP_ID, rp_name="경기도 통합로그인", binding=BINDING, policy=policy, now=NOW
        )
    )
    response = authenticator.create(options, attestation=attestation)
    return register_passkey(
        db,
        resident,
        json.dumps(response),
        rp_id=RP_ID,
        origin=ORIGIN,
        binding=BINDING,
        policy=policy,
        name="보안 키",
        now=NOW,
    )


def assert_refused_storing_nothing(
    db: Session, resident: Resident, policy: AttestationPolicy, *, aaguid: bytes, attestation: Attestation
) -> None:
    with pytest.raises(PasskeyRejectedError) as refused:
        enrol(db, resident, policy, aaguid=aaguid, attestation=attestation)
    assert refused.value.reason == "attestation_required"
    assert db.scalar(select(func.count()).select_from(Passkey)) == 0
    assert db.scalars(select(AuditEvent).where(AuditEvent.event == "passkey.registered")).all() == []


@pytest.fixture
def resident(db: Session) -> Resident:
    resident = Resident(id=uuid.uuid4(), name="김민준", phone="+821012345678")
    db.add(resident)
    db.flush()
    return resident


@pytest.fixture(scope="module")
def vendor() -> CertificateAuthority:
    return CertificateAuthority.create("Example Keys")


@pytest.fixture(scope="module")
def other_vendor() -> CertificateAuthority:
    return CertificateAuthority.create("Other Keys")


# -- what is attested ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("require", [pytest.param(True, id="required"), pytest.param(False, id="optional")])
def test_packed_attestation_chaining_to_the_models_root_is_attested(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority, require: bool
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)), require=require)

    passkey = enrol(db, resident, policy, aaguid=MODEL_A, attestation=vendor.issue(MODEL_A))

    assert passkey.attested is True
    assert passkey.aaguid == text(MODEL_A)
    assert db.scalars(select(Passkey)).all() == [passkey]


@pytest.mark.parametrize(
    ("backup_eligible", "acr"),
    [pytest.param(False, "phrh", id="device-bound"), pytest.param(True, "phr", id="synced")],
)
def test_attested_passkey_reaches_phrh_only_when_device_bound(
    db: Session,
    resident: Resident,
    tmp_path: Path,
    vendor: CertificateAuthority,
    backup_eligible: bool,
    acr: str,
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)))

    passkey = enrol(
        db, resident, policy, aaguid=MODEL_A, attestation=vendor.issue(MODEL_A), backup_eligible=backup_eligible
    )

    assert passkey.attested is True
    assert passkey.is_hardware_bound is not backup_eligible
    assert passkey_event(passkey, ISSUER, NOW).acr == acr


def test_attestation_certificate_without_an_aaguid_extension_is_attested_by_the_models_root(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)))
    passkey = enrol(db, resident, policy, aaguid=MODEL_A, attestation=vendor.issue(None))
    assert passkey.attested is True


@pytest.mark.parametrize("attestation", ["self", "none"])
def test_attestation_without_a_certificate_chain_is_not_attested(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority, attestation: Attestation
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)), require=False)
    passkey = enrol(db, resident, policy, aaguid=MODEL_A, attestation=attestation)
    assert passkey.attested is False


@pytest.mark.parametrize("attestation", ["self", "none"])
def test_required_attestation_refuses_an_attestation_without_a_certificate_chain(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority, attestation: Attestation
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)))
    assert_refused_storing_nothing(db, resident, policy, aaguid=MODEL_A, attestation=attestation)


# -- what is not -----------------------------------------------------------------------------------------------------


def test_required_attestation_refuses_a_chain_to_an_unknown_root(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority, other_vendor: CertificateAuthority
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)))
    assert_refused_storing_nothing(db, resident, policy, aaguid=MODEL_A, attestation=other_vendor.issue(MODEL_A))


def test_optional_attestation_stores_a_chain_to_an_unknown_root_as_not_attested(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority, other_vendor: CertificateAuthority
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)), require=False)

    passkey = enrol(db, resident, policy, aaguid=MODEL_A, attestation=other_vendor.issue(MODEL_A))

    assert passkey.attested is False
    assert db.scalars(select(Passkey)).all() == [passkey]


def test_required_attestation_refuses_a_model_missing_from_the_metadata(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)))
    assert_refused_storing_nothing(db, resident, policy, aaguid=MODEL_B, attestation=vendor.issue(MODEL_B))


def test_chain_to_another_models_root_does_not_vouch_for_this_model(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority, other_vendor: CertificateAuthority
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor), mds3_entry(MODEL_B, other_vendor)))
    assert_refused_storing_nothing(db, resident, policy, aaguid=MODEL_B, attestation=vendor.issue(MODEL_B))


def test_certificate_naming_another_model_of_the_same_vendor_does_not_vouch_for_this_model(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority
) -> None:
    # One vendor root for two models: only the certificate's id-fido-gen-ce-aaguid tells them apart.
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor), mds3_entry(MODEL_B, vendor)))
    assert_refused_storing_nothing(db, resident, policy, aaguid=MODEL_B, attestation=vendor.issue(MODEL_A))


@pytest.mark.parametrize("status", sorted(UNTRUSTED_STATUSES))
def test_required_attestation_refuses_a_model_whose_latest_status_is_untrusted(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority, status: str
) -> None:
    entry = mds3_entry(MODEL_A, vendor, statuses=[("FIDO_CERTIFIED_L1", "2023-03-01"), (status, "2025-09-30")])
    policy = policy_of(tmp_path, mds3_payload(entry))

    assert policy.allowed_aaguids == frozenset()
    assert_refused_storing_nothing(db, resident, policy, aaguid=MODEL_A, attestation=vendor.issue(MODEL_A))


@pytest.mark.parametrize(
    "issue",
    [
        pytest.param(lambda ca: ca.issue(MODEL_A, organizational_unit="Engineering"), id="ou-not-attestation"),
        pytest.param(lambda ca: ca.issue(MODEL_A, ca=True), id="ca-certificate"),
        pytest.param(
            lambda ca: ca.issue(MODEL_A, not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC)), id="expired-certificate"
        ),
    ],
)
def test_required_attestation_refuses_a_certificate_breaking_the_packed_requirements(
    db: Session, resident: Resident, tmp_path: Path, vendor: CertificateAuthority, issue: Any
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor)))
    assert_refused_storing_nothing(db, resident, policy, aaguid=MODEL_A, attestation=issue(vendor))


# -- metadata files --------------------------------------------------------------------------------------------------


def test_metadata_formats_give_the_same_policy(
    tmp_path: Path, vendor: CertificateAuthority, other_vendor: CertificateAuthority
) -> None:
    mds3 = mds3_payload(mds3_entry(MODEL_A, vendor, other_vendor), mds3_entry(MODEL_B, other_vendor))
    statements = [statement(MODEL_A, vendor, other_vendor), statement(MODEL_B, other_vendor)]
    own = [
        {"aaguid": text(MODEL_A).upper(), "attestationRootCertificates": [vendor.pem, other_vendor.pem]},
        {"aaguid": text(MODEL_B), "attestationRootCertificates": [other_vendor.pem]},
    ]
    # Base64 wrapped at 64 columns, as some exports are, and a PEM root in a statement list.
    wrapped = [
        {**statement(MODEL_A), "attestationRootCertificates": [wrap(vendor.base64_der), other_vendor.pem]},
        statement(MODEL_B, other_vendor),
    ]

    policies = [policy_of(tmp_path, document) for document in (mds3, statements, own, wrapped)]

    assert policies[1:] == policies[:1] * 3
    assert policies[0].allowed_aaguids == {text(MODEL_A), text(MODEL_B)}
    assert policies[0].roots_for(text(MODEL_A)) == (vendor.pem.encode(), other_vendor.pem.encode())
    assert policies[0].roots_for(text(MODEL_B).upper()) == (other_vendor.pem.encode(),)


def wrap(base64_text: str) -> str:
    return "\n".join(base64_text[i : i + 64] for i in range(0, len(base64_text), 64))


def test_metadata_entries_without_an_aaguid_are_skipped(tmp_path: Path, vendor: CertificateAuthority) -> None:
    u2f = {
        "attestationCertificateKeyIdentifiers": ["923881fe2f214ee465484371aeb72e97f5a58e0a"],
        "metadataStatement": {"protocolFamily": "u2f", "attestationRootCertificates": [vendor.base64_der]},
        "statusReports": [{"status": "FIDO_CERTIFIED", "effectiveDate": "2020-05-12"}],
    }
    uaf = {"aaid": "4e4e#4005", "metadataStatement": {"aaid": "4e4e#4005", "attestationRootCertificates": []}}

    policy = policy_of(tmp_path, mds3_payload(u2f, uaf, mds3_entry(MODEL_A, vendor)))

    assert policy.allowed_aaguids == {text(MODEL_A)}


@pytest.mark.parametrize(
    ("statuses", "trusted"),
    [
        pytest.param([("REVOKED", "2025-06-01"), ("FIDO_CERTIFIED_L2", "2024-01-01")], False, id="latest-by-date"),
        pytest.param(
            [("USER_VERIFICATION_BYPASS", "2024-01-01"), ("UPDATE_AVAILABLE", "2025-06-01")], True, id="fixed"
        ),
        pytest.param([("FIDO_CERTIFIED_L1", "2024-01-01"), ("REVOKED", "2024-01-01")], False, id="same-date-last-wins"),
        pytest.param([], True, id="no-reports"),
    ],
)
def test_latest_status_report_decides_whether_a_model_is_trusted(
    tmp_path: Path, vendor: CertificateAuthority, statuses: list[tuple[str, str]], trusted: bool
) -> None:
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor, statuses=statuses)))
    assert (text(MODEL_A) in policy.allowed_aaguids) is trusted
    assert bool(policy.roots_for(text(MODEL_A))) is trusted


def test_status_reports_without_dates_are_read_in_list_order(tmp_path: Path, vendor: CertificateAuthority) -> None:
    entry = {**mds3_entry(MODEL_A, vendor), "statusReports": [{"status": "FIDO_CERTIFIED"}, {"status": "REVOKED"}]}
    assert policy_of(tmp_path, mds3_payload(entry)).allowed_aaguids == frozenset()


def test_a_model_revoked_in_one_entry_stays_out_when_another_lists_it(
    tmp_path: Path, vendor: CertificateAuthority
) -> None:
    revoked = mds3_entry(MODEL_A, vendor, statuses=[("REVOKED", "2025-06-01")])
    policy = policy_of(tmp_path, mds3_payload(mds3_entry(MODEL_A, vendor), revoked))
    assert policy.roots_for(text(MODEL_A)) == ()


def test_no_metadata_file_allows_no_model() -> None:
    policy = AttestationPolicy.from_metadata_file(None, require=True)
    assert policy == AttestationPolicy(require_attestation=True)
    assert policy.allowed_aaguids == frozenset()


UNUSABLE_METADATA: list[Any] = [
    pytest.param(b'[{"aaguid": ', id="not-json"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-text"),
    pytest.param(b'{"no": 42, "nextUpdate": "2026-12-01"}', id="object-without-entries"),
    pytest.param(b'"entries"', id="json-string"),
    pytest.param(b"[42]", id="entry-not-an-object"),
    pytest.param(b'[{"aaguid": "not-a-uuid"}]', id="aaguid-not-a-uuid"),
    pytest.param(b'[{"aaguid": 7}]', id="aaguid-a-number"),
    pytest.param(b'{"entries": [{"aaguid": "%s", "metadataStatement": []}]}' % text(MODEL_A).encode(), id="statement"),
    pytest.param(
        b'[{"aaguid": "%s", "attestationRootCertificates": "MIIB"}]' % text(MODEL_A).encode(), id="roots-not-a-list"
    ),
    pytest.param(
        b'[{"aaguid": "%s", "attestationRootCertificates": ["bm90IGEgY2VydGlmaWNhdGU="]}]' % text(MODEL_A).encode(),
        id="root-not-a-certificate",
    ),
    pytest.param(
        b'[{"aaguid": "%s", "attestationRootCertificates": ["not base64!"]}]' % text(MODEL_A).encode(),
        id="root-not-base64",
    ),
    pytest.param(
        b'[{"aaguid": "%s", "attestationRootCertificates": ["-----BEGIN CERTIFICATE-----\\nMIIB\\n'
        b'-----END CERTIFICATE-----"]}]' % text(MODEL_A).encode(),
        id="root-broken-pem",
    ),
    pytest.param(
        b'{"entries": [{"aaguid": "%s", "statusReports": {"status": "REVOKED"}}]}' % text(MODEL_A).encode(),
        id="status-reports-not-a-list",
    ),
    pytest.param(
        b'{"entries": [{"aaguid": "%s", "statusReports": [{"effectiveDate": "2024-01-01"}]}]}' % text(MODEL_A).encode(),
        id="status-report-without-status",
    ),
]


@pytest.mark.parametrize("content", UNUSABLE_METADATA)
def test_unusable_metadata_file_raises_one_line_value_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fido-metadata.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"^FIDO metadata file ") as raised:
        AttestationPolicy.from_metadata_file(path, require=True)
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("make", [pytest.param(lambda p: None, id="missing"), pytest.param(Path.mkdir, id="directory")])
def test_unreadable_metadata_file_raises_one_line_value_error_naming_it(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "fido-metadata.json"
    make(path)
    with pytest.raises(ValueError, match="cannot be read") as raised:
        AttestationPolicy.from_metadata_file(path, require=False)
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)
