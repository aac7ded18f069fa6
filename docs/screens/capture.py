"""`make screenshots`: the main pages as a Korean resident sees them on a 320 px phone, written to docs/screens/.

It starts the sandbox agency and an IdP on SQLite in a temporary folder, as the browser tests do, and reaches
each page through the same flows as the accessibility run (tests/e2e/page_states.py), in Debian's Chromium
(IDP_TEST_CHROMIUM names another) with a Korean font (Debian's fonts-nanum). The images are whole pages at device
scale 1, so they stay small.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent.parent / "tests"
sys.path[:0] = [str(TESTS / "e2e"), str(TESTS)]

from page_states import STATES, running_world  # noqa: E402  (from the tests, found just above)
from playwright.sync_api import sync_playwright  # noqa: E402
from sandbox_agency import running_sandbox  # noqa: E402

CHROMIUM = os.environ.get("IDP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
WIDTH, HEIGHT = 320, 640
# File name → state of page_states.STATES; docs link to these names.
SCREENS = {
    "login": "login-for-a-service",
    "carrier-form": "carrier-form",
    "code-page": "code-page",
    "approval-page": "approval-page",
    "welcome": "welcome-for-a-service",
    "consent": "consent",
    "account": "account",
    "passkeys": "passkeys-one",
    "totp-set-up": "totp-set-up",
    "recovery-codes": "totp-recovery-codes",
}


def korean_font() -> bool:
    """Whether fontconfig has a font for Hangul: without one Chromium draws every syllable as an empty box."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return False
    listed = subprocess.run([fc_list, ":lang=ko", "family"], capture_output=True, text=True, check=False)  # noqa: S603
    return bool(listed.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(prog="docs/screens/capture.py", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"only these screens: {', '.join(SCREENS)}")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNG files (default: %(default)s)")
    args = parser.parse_args()
    names = args.names or list(SCREENS)
    unknown = sorted(set(names) - set(SCREENS))
    if unknown:
        parser.error(f"no screen named {', '.join(unknown)}")
    if not korean_font():
        print("no Korean font: install Debian's fonts-nanum (sudo apt-get install fonts-nanum)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="idp-screens-") as folder:
        work = Path(folder)
        with (
            running_sandbox(work / "sandbox") as sandbox,
            running_world(work / "idp", sandbox) as world,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            for name in names:
                world.forget_limits()
                context = browser.new_context(
                    locale="ko-KR", viewport={"width": WIDTH, "height": HEIGHT}, device_scale_factor=1
                )
                context.set_default_timeout(15_000)
                page = context.new_page()
                STATES[SCREENS[name]](page, world)
                page.wait_for_load_state()
                path = args.out / f"{name}.png"
                page.screenshot(path=path, full_page=True, animations="disabled", caret="hide")
                print(f"{path} ({path.stat().st_size // 1024} KiB)")
                context.close()
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
