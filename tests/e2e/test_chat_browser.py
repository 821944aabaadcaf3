"""The chat example in headless Chromium: two users, history, presence, XSS, rate
limit, and pages that resume after a server restart without losing a message.

The chat server runs in a subprocess (``python -m examples.chat``) so that it can be
stopped and started again on the same port; Playwright drives the system's
``/usr/bin/chromium`` (never a downloaded browser). Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 10_000


class ChatServer:
    """``python -m examples.chat`` in a subprocess, restartable on the same port."""

    def __init__(self, broker: str | None = None) -> None:
        self.port = free_port()
        self.broker = broker
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="rtserver-chat-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "examples.chat", "--port", str(self.port)]
        if self.broker:
            cmd += ["--broker", self.broker]
        offset = self.log.tell()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with open(self.log.name, "rb") as f:
                f.seek(offset)
                if b"rtserver chat: http" in f.read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the chat server did not start:\n{Path(self.log.name).read_text()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        self.stop()
        self.log.close()
        os.unlink(self.log.name)


@contextlib.contextmanager
def chat_server(broker: str | None = None) -> Iterator[ChatServer]:
    server = ChatServer(broker)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is not installed (Debian package chromium)")
    need(importlib.util.find_spec("playwright") is not None, "playwright (PyPI) is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@contextlib.contextmanager
def user(browser: Any, server: ChatServer, nick: str, room: str = "lobby", width: int = 1100) -> Iterator[Any]:
    """A browser context logged in as ``nick``, its page open on ``room``."""
    context = browser.new_context(viewport={"width": width, "height": 720})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{server.url}/")
        assert page.url.endswith("/login")
        page.fill("#nickname", nick)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.url}/")
        if room != "lobby":
            page.goto(f"{server.url}/#{room}")
        wait_online(page)
        page.errors = errors  # checked by the tests: no script failed
        yield page
    finally:
        context.close()


def wait_online(page: Any) -> None:
    page.wait_for_selector("#status[data-state=online]")


def say(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def count_text(page: Any, text: str) -> int:
    """How many messages on ``page`` have exactly ``text``."""
    return int(
        page.evaluate(
            "(t) => [...document.querySelectorAll('#messages .text')].filter((e) => e.textContent === t).length",
            text,
        )
    )


def wait_text(page: Any, text: str) -> None:
    page.wait_for_function(
        "(t) => [...document.querySelectorAll('#messages .text')].some((e) => e.textContent === t)",
        arg=text,
    )


def presence(page: Any) -> list[str]:
    return sorted(page.eval_on_selector_all("#presence li", "items => items.map((i) => i.textContent)"))


def wait_presence(page: Any, nicks: list[str]) -> None:
    page.wait_for_function(
        "(want) => JSON.stringify([...document.querySelectorAll('#presence li')].map((i) => i.textContent).sort())"
        " === JSON.stringify(want)",
        arg=sorted(nicks),
    )


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"chat-{name}.png"))


def test_two_users_chat_see_presence_and_history(browser):
    with chat_server() as server, user(browser, server, "ada") as ada, user(browser, server, "bob") as bob:
        wait_presence(ada, ["ada", "bob"])
        wait_presence(bob, ["ada", "bob"])
        say(ada, "Hello Bob!")
        wait_text(bob, "Hello Bob!")
        say(bob, "Hi Ada, all good here.")
        wait_text(ada, "Hi Ada, all good here.")
        assert ada.input_value("#text") == ""  # sent: the composer is cleared
        shot(ada, "two-users")
        # A reload shows the history (the hub's), in order, once.
        bob.reload()
        wait_online(bob)
        wait_text(bob, "Hi Ada, all good here.")
        texts = bob.eval_on_selector_all("#messages .text", "items => items.map((i) => i.textContent)")
        assert texts == ["Hello Bob!", "Hi Ada, all good here."]
        wait_presence(bob, ["ada", "bob"])
        # Rooms: bob creates one and moves; ada's list shows it live, presence follows.
        bob.fill("#room-name", "design")
        bob.press("#room-name", "Enter")
        bob.wait_for_selector("#room-title:text-is('#design')")
        ada.wait_for_selector("#rooms a[href='#design']")
        wait_presence(ada, ["ada"])
        wait_presence(bob, ["bob"])
        bob.click("#leave")
        bob.wait_for_selector("#room-title:text-is('No room')")
        # A phone-sized window is readable too.
        ada.set_viewport_size({"width": 390, "height": 780})
        shot(ada, "phone")
        assert ada.errors == [] and bob.errors == []


def test_messages_are_rendered_as_text_never_as_html(browser):
    payloads = ["<script>window.pwned=1</script>", '<img src=x onerror="window.pwned=1">']
    with chat_server() as server, user(browser, server, "eve") as eve, user(browser, server, "amy") as amy:
        for payload in payloads:
            say(eve, payload)
        for page in (eve, amy):
            for payload in payloads:
                wait_text(page, payload)
                assert count_text(page, payload) == 1
            assert page.evaluate("typeof window.pwned") == "undefined"
            assert page.locator("#messages img, #messages script").count() == 0
        # The nickname is text too.
        shot(amy, "xss")


def test_a_flood_gets_a_visible_rate_limit_error(browser):
    with chat_server() as server, user(browser, server, "fast") as page:
        assert page.is_hidden("#error")
        for i in range(8):
            say(page, f"spam {i}")
        page.wait_for_selector("#error:visible")
        assert "Slow down" in page.text_content("#error")
        assert count_text(page, "spam 7") == 0
        # Too long: a clear error, nothing sent.
        page.fill("#text", "x" * 501)
        page.press("#text", "Enter")
        page.wait_for_selector("#error:has-text('at most 500 characters')")
        shot(page, "rate-limit")


PUBLISH = """
import sys
from gevent import monkey
monkey.patch_all()
import rtserver
rtserver.config.update({"hub.broker": sys.argv[1]})
rtserver.hub.publish("room:lobby", {"nick": "cron", "text": sys.argv[2], "ts": 0})
rtserver.hub.stop()
"""


def test_pages_resume_after_a_server_restart_without_losing_a_message(browser, redis_server):
    with (
        chat_server(redis_server.url) as server,
        user(browser, server, "ada") as ada,
        user(browser, server, "bob") as bob,
    ):
        say(ada, "before the restart")
        wait_text(bob, "before the restart")
        server.stop()
        for page in (ada, bob):
            page.wait_for_selector("#status[data-state=offline]")
        # Published through the hub (Redis) while no server runs and both pages are away.
        subprocess.run(
            [sys.executable, "-c", PUBLISH, redis_server.url, "sent during the restart"],
            cwd=REPO,
            check=True,
            timeout=30,
        )
        server.start()
        for page in (ada, bob):
            wait_online(page)
            wait_text(page, "sent during the restart")
        say(bob, "after the restart")
        for page in (ada, bob):
            wait_text(page, "after the restart")
            for text in ("before the restart", "sent during the restart", "after the restart"):
                assert count_text(page, text) == 1, text
        wait_presence(ada, ["ada", "bob"])
        shot(ada, "after-restart")
        assert ada.errors == [] and bob.errors == []


def test_logout_in_one_tab_signs_out_the_other_tab_and_the_user_leaves_presence(browser):
    with chat_server() as server, user(browser, server, "dan") as tab1, user(browser, server, "amy") as amy:
        tab2 = tab1.context.new_page()  # a second tab of dan's browser: the same cookie
        tab2.set_default_timeout(WAIT_MS)
        tab2.goto(f"{server.url}/")
        wait_online(tab2)
        wait_presence(amy, ["amy", "dan"])
        tab1.click("form.me button[type=submit]")  # "Log out"
        tab1.wait_for_url(f"{server.url}/login")
        # The other tab's socket is closed (4401): it goes to the login page, no reconnect.
        tab2.wait_for_url(f"{server.url}/login", timeout=3_000)
        wait_presence(amy, ["amy"])
        shot(amy, "after-logout")
        assert amy.errors == []
