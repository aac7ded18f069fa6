"""The Korean catalogue covers every text of the pages, and the compiled catalogue matches its source."""

from __future__ import annotations

from pathlib import Path

from babel.messages.catalog import Message
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[3]
CATALOGUE = ROOT / "idp" / "web" / "translations" / "ko" / "LC_MESSAGES"
METHODS = [("**.py", "python"), ("templates/**.html", "jinja2")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None, "lazy_gettext": None}


def source_messages() -> set[str]:
    found = list(extract_from_dir(str(ROOT / "idp" / "web"), METHODS, keywords=KEYWORDS))
    found += extract_from_dir(str(ROOT / "idp" / "oidc"), [("views.py", "python")], keywords=KEYWORDS)
    return {message if isinstance(message, str) else message[0] for _, _, message, _, _ in found}


def _key(message: Message) -> str:
    # A plural message (ngettext) is known by its singular form.
    return message.id if isinstance(message.id, str) else message.id[0]


def _text(message: Message) -> tuple[str, ...]:
    # Korean has one plural form; every form must be translated.
    forms = (message.string,) if isinstance(message.string, str) else tuple(message.string)
    return forms if all(forms) else ()


def test_every_page_text_has_a_korean_translation() -> None:
    with (CATALOGUE / "messages.po").open("rb") as handle:
        catalogue = read_po(handle)
    translated = {_key(message): _text(message) for message in catalogue if message.id and not message.fuzzy}
    missing = sorted(text for text in source_messages() if not translated.get(text))
    assert missing == [], "run `make translations` and translate these in ko/messages.po"


def test_compiled_catalogue_matches_its_source() -> None:
    with (CATALOGUE / "messages.po").open("rb") as handle:
        source = {_key(m): _text(m) for m in read_po(handle) if m.id and not m.fuzzy}
    with (CATALOGUE / "messages.mo").open("rb") as handle:
        compiled = {_key(m): _text(m) for m in read_mo(handle) if m.id}
    assert compiled == source, "run `pybabel compile -d idp/web/translations`"
