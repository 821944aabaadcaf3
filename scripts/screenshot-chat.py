"""Take docs/chat.png: two users in the chat example's lobby with a few messages.

    .venv/bin/python scripts/screenshot-chat.py [OUTPUT.png]

Runs ``python -m examples.chat`` on a free port and drives the system's Chromium
(``/usr/bin/chromium``) with Playwright; it never downloads a browser.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
CONVERSATION = [
    ("ada", "Morning! Did the deploy with --workers 2 go through?"),
    ("bob", "Yes: both workers share the Redis hub, so we see each other whichever one we hit."),
    ("ada", "And the page just reconnected after the restart. Not a message lost."),
    ("bob", "History and presence come from the hub too. Nice and boring."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_text(page: Page, text: str) -> None:
    page.wait_for_function(
        "(t) => [...document.querySelectorAll('#messages .text')].some((e) => e.textContent === t)", arg=text
    )


def main() -> int:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "chat.png"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "examples.chat", "--port", str(port)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        log.seek(0)
                        sys.stderr.write(log.read().decode(errors="replace"))
                        return 1
                    time.sleep(0.1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                try:
                    pages: dict[str, Page] = {}
                    for nick in ("ada", "bob"):
                        context = browser.new_context(viewport={"width": 1120, "height": 640}, device_scale_factor=1)
                        page = context.new_page()
                        page.goto(f"{url}/login")
                        page.fill("#nickname", nick)
                        page.click("button[type=submit]")
                        page.wait_for_selector("#status[data-state=online]")
                        pages[nick] = page
                    for nick, text in CONVERSATION:
                        pages[nick].fill("#text", text)
                        pages[nick].press("#text", "Enter")
                        for page in pages.values():
                            wait_text(page, text)
                    ada = pages["ada"]
                    ada.wait_for_function("document.querySelectorAll('#presence li').length === 2")
                    ada.evaluate("document.activeElement.blur()")
                    output.parent.mkdir(parents=True, exist_ok=True)
                    ada.screenshot(path=str(output))
                finally:
                    browser.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
