"""The sandbox's synthetic residents: the shipped fixture, lines added at run time, and CI versions."""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import secrets
import threading
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from idp.phones import normalize_phone
from idp.sandbox.state import write_private_file

SHIPPED_FIXTURE = "residents.json"
ADDED_FILE = "residents.json"  # in the state folder: lines added with POST /sandbox/residents, and CI versions
STATE_VERSION = 1
NAME_MAX_LENGTH = 64
NOTE_MAX_LENGTH = 300
PERSON_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
BIRTHDATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The 7th digit of a resident registration number: century, sex and nationality (주민등록법 시행규칙 별지 1).
# 1/2: Korean born 1900-1999, 3/4: Korean born 2000-2099, 5/6 and 7/8: the same for foreign residents.
RRN_DIGIT7_CENTURY = {"1": 1900, "2": 1900, "3": 2000, "4": 2000, "5": 1900, "6": 1900, "7": 2000, "8": 2000}


class Carrier(enum.StrEnum):
    SKT = "SKT"
    KT = "KT"
    LGU = "LGU"
    SKT_MVNO = "SKT_MVNO"
    KT_MVNO = "KT_MVNO"
    LGU_MVNO = "LGU_MVNO"


class ResidentInvalidError(ValueError):
    """A resident to add is malformed or conflicts with a known one; the message is one English sentence."""


class UnknownPersonError(LookupError):
    """No synthetic person has the given person_id."""


@dataclass(frozen=True, slots=True)
class Line:
    """One phone line and the synthetic person who holds it (a person may hold several lines)."""

    person_id: str
    name: str
    birthdate: str
    rrn_digit7: str
    phone: str
    carrier: Carrier
    has_app: bool = True
    eligible: bool = True
    note: str = ""
    added: bool = False

    @property
    def sex(self) -> str:
        """M or F: odd registration digits are men."""
        return "M" if int(self.rrn_digit7) % 2 else "F"

    @property
    def nationality(self) -> str:
        """KR for digits 1-4, foreign for the foreign residents' digits 5-8."""
        return "KR" if self.rrn_digit7 in "1234" else "foreign"

    def to_json(self) -> dict[str, Any]:
        return {
            "person_id": self.person_id,
            "name": self.name,
            "birthdate": self.birthdate,
            "rrn_digit7": self.rrn_digit7,
            "phone": self.phone,
            "carrier": self.carrier.value,
            "has_app": self.has_app,
            "eligible": self.eligible,
            "note": self.note,
        }


def normalize_name(value: str) -> str:
    """A name as stored and compared: NFC (so composed and decomposed Hangul agree), single spaces."""
    return " ".join(unicodedata.normalize("NFC", value).split())


def parse_line(data: object, *, added: bool) -> Line:
    """Validate one resident entry (the POST /sandbox/residents body or a fixture entry).

    Raises:
        ResidentInvalidError: a field is missing, of the wrong type or malformed.
    """
    if not isinstance(data, Mapping):
        raise ResidentInvalidError("A resident must be a JSON object.")
    name = _text(data, "name")
    name = normalize_name(name)
    if not name or len(name) > NAME_MAX_LENGTH or any(unicodedata.category(c).startswith("C") for c in name):
        raise ResidentInvalidError(f"name must be 1 to {NAME_MAX_LENGTH} printable characters.")
    birthdate = parse_birthdate(_text(data, "birthdate"))
    rrn_digit7 = _text(data, "rrn_digit7")
    if rrn_digit7 not in RRN_DIGIT7_CENTURY:
        raise ResidentInvalidError("rrn_digit7 must be one digit from 1 to 8.")
    century = RRN_DIGIT7_CENTURY[rrn_digit7]
    if not century <= birthdate.year < century + 100:
        raise ResidentInvalidError(f"rrn_digit7 {rrn_digit7} is for people born in {century}-{century + 99}.")
    try:
        phone = normalize_phone(_text(data, "phone"))
    except ValueError:
        raise ResidentInvalidError("phone must be a Korean mobile number such as 010-1234-5678.") from None
    try:
        carrier = Carrier(_text(data, "carrier"))
    except ValueError:
        raise ResidentInvalidError(f"carrier must be one of {', '.join(Carrier)}.") from None
    person_id = data.get("person_id")
    if person_id is None:
        person_id = f"p-{secrets.token_hex(6)}"
    elif not isinstance(person_id, str) or not PERSON_ID.fullmatch(person_id):
        raise ResidentInvalidError("person_id must be 1 to 64 letters, digits, '-' or '_'.")
    note = data.get("note", "")
    if not isinstance(note, str) or len(note) > NOTE_MAX_LENGTH:
        raise ResidentInvalidError(f"note must be text of at most {NOTE_MAX_LENGTH} characters.")
    return Line(
        person_id=person_id,
        name=name,
        birthdate=birthdate.isoformat(),
        rrn_digit7=rrn_digit7,
        phone=phone,
        carrier=carrier,
        has_app=_flag(data, "has_app"),
        eligible=_flag(data, "eligible"),
        note=note,
        added=added,
    )


def parse_birthdate(value: str) -> dt.date:
    """A YYYY-MM-DD calendar date (leap days included) no later than today.

    Raises:
        ResidentInvalidError: not such a date.
    """
    try:
        if not BIRTHDATE.fullmatch(value):
            raise ValueError(value)
        birthdate = dt.date.fromisoformat(value)
    except ValueError:
        raise ResidentInvalidError("birthdate must be a date written YYYY-MM-DD.") from None
    if birthdate > dt.date.today():
        raise ResidentInvalidError("birthdate must not be in the future.")
    return birthdate


def _text(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ResidentInvalidError(f"{key} is required and must be a string.")
    return value.strip()


def _flag(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, True)
    if not isinstance(value, bool):
        raise ResidentInvalidError(f"{key} must be true or false.")
    return value


class ResidentDirectory:
    """Every line the sandbox knows: the shipped fixture plus lines added at run time (kept in the state folder).

    CI versions live here too, because a CI re-issue must survive a restart just as an added resident does.
    """

    def __init__(self, shipped: list[Line], shipped_ci_versions: Mapping[str, int], state_file: Path) -> None:
        self._lock = threading.Lock()
        self._state_file = state_file
        self._shipped = shipped
        self._shipped_ci_versions = dict(shipped_ci_versions)
        self._added: list[Line] = []
        self._ci_versions: dict[str, int] = {}
        self._read_state()

    @classmethod
    def load(cls, state_dir: Path) -> ResidentDirectory:
        """The shipped fixture and whatever was added in `state_dir` before.

        Raises:
            ResidentInvalidError: the fixture or the state file is malformed (a message naming the file).
        """
        fixture = resources.files("idp.sandbox").joinpath(SHIPPED_FIXTURE).read_text(encoding="utf-8")
        lines, versions = _parse_fixture(json.loads(fixture), SHIPPED_FIXTURE)
        return cls(lines, versions, state_dir / ADDED_FILE)

    def lines(self) -> list[Line]:
        """Every line, shipped first, then added ones in the order they were added."""
        with self._lock:
            return [*self._shipped, *self._added]

    def find_line(self, phone: str) -> Line | None:
        """The line with this E.164 number, if the sandbox knows it."""
        return next((line for line in self.lines() if line.phone == phone), None)

    def ci_version(self, person_id: str) -> int:
        with self._lock:
            return self._ci_versions.get(person_id, self._shipped_ci_versions.get(person_id, 1))

    def add(self, data: object) -> Line:
        """Add a line; a known person_id adds a line for that person, whose identity must then be the same.

        Raises:
            ResidentInvalidError: the entry is malformed, its phone is taken, or it contradicts its person.
        """
        line = parse_line(data, added=True)
        with self._lock:
            known = [*self._shipped, *self._added]
            if any(other.phone == line.phone for other in known):
                raise ResidentInvalidError(f"{line.phone} already belongs to a sandbox resident.")
            same_person = next((other for other in known if other.person_id == line.person_id), None)
            if same_person is not None and (same_person.name, same_person.birthdate, same_person.rrn_digit7) != (
                line.name,
                line.birthdate,
                line.rrn_digit7,
            ):
                raise ResidentInvalidError(
                    f"person {line.person_id} has another name, birthdate or rrn_digit7; a second line must match."
                )
            self._added.append(line)
            self._write_state()
        return line

    def reissue_ci(self, person_id: str) -> int:
        """Give the person a new CI (the next version); the new version.

        Raises:
            UnknownPersonError: no line belongs to `person_id`.
        """
        with self._lock:
            if not any(line.person_id == person_id for line in (*self._shipped, *self._added)):
                raise UnknownPersonError(person_id)
            version = self._ci_versions.get(person_id, self._shipped_ci_versions.get(person_id, 1)) + 1
            self._ci_versions[person_id] = version
            self._write_state()
        return version

    def _read_state(self) -> None:
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ResidentInvalidError(f"{self._state_file} cannot be read: {exc}") from None
        lines, _ = _parse_fixture(data, str(self._state_file), added=True)
        versions = data.get("ci_versions", {})
        if not isinstance(versions, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 1 for k, v in versions.items()
        ):
            raise ResidentInvalidError(f"{self._state_file}: ci_versions must map person ids to versions.")
        self._added = lines
        self._ci_versions = versions

    def _write_state(self) -> None:
        body = {
            "version": STATE_VERSION,
            "residents": [line.to_json() for line in self._added],
            "ci_versions": self._ci_versions,
        }
        write_private_file(self._state_file, (json.dumps(body, ensure_ascii=False, indent=2) + "\n").encode())


def _parse_fixture(data: object, source: str, *, added: bool = False) -> tuple[list[Line], dict[str, int]]:
    if not isinstance(data, dict) or not isinstance(data.get("residents"), list):
        raise ResidentInvalidError(f"{source}: expected an object with a residents list.")
    lines: list[Line] = []
    versions: dict[str, int] = {}
    for index, entry in enumerate(data["residents"]):
        try:
            line = parse_line(entry, added=added)
        except ResidentInvalidError as exc:
            raise ResidentInvalidError(f"{source}: resident {index}: {exc}") from None
        if isinstance(entry, dict) and "ci_version" in entry:
            version = entry["ci_version"]
            if type(version) is not int or version < 1:
                raise ResidentInvalidError(f"{source}: resident {index}: ci_version must be a positive integer.")
            versions[line.person_id] = max(version, versions.get(line.person_id, 1))
        lines.append(line)
    return lines, versions
