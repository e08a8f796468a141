"""The chat page at ``/`` in a real headless Chromium, against the real app in-process.

Each scenario types into the page as a person would and asserts on what the page
shows. The page sends only ``model`` and ``messages``, so behaviour is chosen by
model: a ``test:`` provider registered for this module answers with a scripted
list of text deltas and can hold after some of them until the test opens its gate.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the PyPI ``playwright``
package. Without them the module is skipped, except under CI (``CI`` set), where
it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import uvicorn_thread
from tokenwire.events import TextDelta, Usage
from tokenwire.providers import ProviderRegistry
from tokenwire.providers.base import GenerationRequest, ProviderEvent, finish
from tokenwire.server.app import create_app
from tokenwire.server.tokenwire import Tokenwire
from tokenwire.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/tokenwire-chat.png")

if not os.environ.get("CI"):
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing (apt-get install chromium); under CI this test fails instead",
            allow_module_level=True,
        )
    pytest.importorskip("playwright", reason="the playwright package is not installed")

from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- a gated provider


class Gate:
    """Opened from the test's thread, awaited in the server's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def wait(self) -> None:
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._opened:
                return
            self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        finally:  # cancelled (Stop) or opened: forget this waiter
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def open(self) -> None:
        with self._lock:
            self._opened = True
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)


@dataclass
class Script:
    """The answer's deltas; with ``hold_after`` = k, wait for ``gate`` after k of them."""

    pieces: list[str]
    hold_after: int | None = None
    gate: Gate = field(default_factory=Gate)


class GatedProvider:
    """Models ``test:<name>`` answer with ``scripts[name]``."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = scripts

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        script = self.scripts[request.model]
        for i, piece in enumerate(script.pieces):
            if i == script.hold_after:
                await script.gate.wait()
            yield TextDelta(part=0, delta=piece)
        usage = Usage(input_tokens=3, output_tokens=len(script.pieces))
        yield usage
        yield finish("stop", None, usage)


def words(text: str) -> list[str]:
    """Word-sized deltas, a space leading each but the first."""
    return [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]


ANSWER = "Streaming answers arrive one word at a time."
STALLED = "This answer stops halfway"
RELOAD = "Reloading the page keeps this answer going to the end."
UNICODE = "café 👋 日本語 — naïve 👩‍👩‍👧 Ωμέγα"
HTML = "Look: <img src=x onerror=alert(1)> and <b>bold</b> stay text."

SCRIPTS = {
    "answer": Script(words(ANSWER), hold_after=3),
    "stall": Script(words(STALLED), hold_after=3),  # its gate is never opened
    "mute": Script(words("Never shown"), hold_after=0),  # nor is this one's
    "reload": Script(words(RELOAD), hold_after=4),
    # one code point a delta: the emoji's ZWJ sequence and the accents arrive in pieces
    "unicode": Script(list(UNICODE)),
    "html": Script(["Look: <im", "g src=x onerror=alert(", "1)> and <b>bo", "ld</b> stay text."]),
}
MODELS = ["fake:lorem", *(f"test:{name}" for name in SCRIPTS)]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(
        fake_provider=True,
        data_dir=tmp_path_factory.mktemp("chat-page"),
        default_model="fake:lorem",
        models=MODELS,
    )
    registry = ProviderRegistry(fake=True)
    registry.register("test", GatedProvider(SCRIPTS))
    with uvicorn_thread(create_app(tokenwire=Tokenwire(settings, registry=registry))) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """A fresh tab on the chat page; fails the test on an uncaught error or a dialog."""
    context = browser.new_context(base_url=server, viewport={"width": 1100, "height": 700})
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))

    def on_dialog(dialog: Any) -> None:
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto("/")
    expect(page.locator("#model option")).to_have_count(len(MODELS))
    yield page
    context.close()
    assert problems == []


expect.set_options(timeout=10_000)


def ask(page: Page, model: str, question: str) -> str:
    """Pick ``model``, type ``question``, press Enter; return the new stream's id."""
    page.select_option("#model", model)
    prompt = page.locator("#prompt")
    prompt.fill(question)
    with page.expect_response(
        lambda r: r.url.endswith("/v1/chat") and r.request.method == "POST"
    ) as started:
        prompt.press("Enter")
    assert started.value.status == 202
    return str(started.value.json()["stream_id"])


def answer(page: Page) -> Any:
    return page.locator(".message.assistant .text")


def get(server: str, path: str) -> dict[str, Any]:
    response = httpx.get(server + path, timeout=5)
    response.raise_for_status()
    return dict(response.json())


def snapshot(server: str, stream_id: str) -> dict[str, Any]:
    return get(server, f"/v1/streams/{stream_id}")


# ---------------------------------------------------------------- scenarios


def test_answer_streams_in_then_finishes(page: Page, server: str) -> None:
    question = "How do answers arrive?"
    stream_id = ask(page, "test:answer", question)
    expect(page.locator(".message.user")).to_have_text(question)
    expect(page.locator("#prompt")).to_have_value("")

    # Partial: the first three words, still generating, Stop offered.
    expect(answer(page)).to_have_text("Streaming answers arrive")
    expect(page.locator(".message.assistant")).to_have_class("message assistant streaming")
    expect(page.locator("#status")).to_have_text("Generating…")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#send")).to_be_hidden()

    SCRIPTS["answer"].gate.open()
    expect(answer(page)).to_have_text(ANSWER)
    expect(page.locator(".message.assistant")).to_have_class("message assistant")
    meta = page.locator(".message.assistant .meta")
    expect(meta).to_contain_text("test:answer")
    expect(meta).to_contain_text("tokens: 3 in, 8 out")
    expect(page.locator("#status")).to_contain_text("tokens: 3 in, 8 out")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()

    # The conversation is listed, titled by the question, and is the one open.
    item = page.locator("#conversations .conversation.active .conversation-open")
    expect(item).to_have_text(question)
    expect(page.locator("#title")).to_have_text(question)
    assert snapshot(server, stream_id)["status"] == "completed"
    assert answer(page).text_content() == ANSWER
    page.screenshot(path=str(SCREENSHOT))


def test_stop_keeps_the_partial_answer(page: Page, server: str) -> None:
    stream_id = ask(page, "test:stall", "Please stop me")
    expect(answer(page)).to_have_text("This answer stops")
    stop = page.locator("#stop")
    expect(stop).to_be_visible()
    stop.click()

    notice = page.locator(".message.assistant .notice.cancelled")
    expect(notice).to_have_text("Stopped.")
    expect(page.locator("#status")).to_have_text("Stopped.")
    expect(answer(page)).to_have_text("This answer stops")
    expect(page.locator("#send")).to_be_visible()
    expect(stop).to_be_hidden()
    expect(page.locator(".message.assistant")).not_to_have_class("message assistant streaming")
    assert snapshot(server, stream_id)["status"] == "cancelled"

    # The stopped message is what the conversation keeps: a reload shows the same.
    page.reload()
    expect(page.locator(".message.user")).to_have_text("Please stop me")
    expect(answer(page)).to_have_text("This answer stops")
    expect(page.locator(".message.assistant .notice.cancelled")).to_have_text("Stopped.")
    expect(page.locator("#send")).to_be_visible()


def test_reload_mid_stream_resumes_without_duplicates(page: Page, server: str) -> None:
    stream_id = ask(page, "test:reload", "Survive a reload")
    partial = "Reloading the page keeps"
    expect(answer(page)).to_have_text(partial)

    page.reload()
    expect(page.locator(".message.user")).to_have_count(1)
    expect(page.locator(".message.user")).to_have_text("Survive a reload")
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(answer(page)).to_have_count(1)
    expect(answer(page)).to_have_text(partial)
    expect(page.locator("#stop")).to_be_visible()
    assert answer(page).text_content() == partial

    SCRIPTS["reload"].gate.open()
    expect(answer(page)).to_have_text(RELOAD)
    expect(page.locator(".message.assistant .meta")).to_contain_text("tokens: 3 in, 10 out")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator(".message.assistant")).to_have_count(1)
    assert answer(page).text_content() == RELOAD
    assert snapshot(server, stream_id)["text"] == RELOAD

    # Once finished, a reload renders the stored message, once.
    page.reload()
    expect(answer(page)).to_have_text(RELOAD)
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(page.locator(".message.assistant .meta")).to_contain_text("tokens: 3 in, 10 out")
    assert answer(page).text_content() == RELOAD


def test_multibyte_text_renders_exactly(page: Page, server: str) -> None:
    question = "Ça va? 👋 日本語で"
    ask(page, "test:unicode", question)
    expect(answer(page)).to_have_text(UNICODE)
    expect(page.locator("#send")).to_be_visible()
    assert answer(page).text_content() == UNICODE
    assert page.locator(".message.user .bubble").text_content() == question
    expect(page.locator("#conversations .conversation.active .conversation-open")).to_have_text(
        question
    )


def test_html_in_the_answer_is_shown_as_text(page: Page, server: str) -> None:
    ask(page, "test:html", "Show me some markup")
    expect(answer(page)).to_have_text(HTML)
    expect(page.locator("#send")).to_be_visible()
    assert answer(page).text_content() == HTML
    expect(page.locator("#messages img")).to_have_count(0)
    expect(page.locator("#messages b")).to_have_count(0)
    # The same after a reload, from the store.
    page.reload()
    expect(answer(page)).to_have_text(HTML)
    expect(page.locator("#messages img")).to_have_count(0)
    expect(page.locator("#messages b")).to_have_count(0)


def test_one_message_at_a_time_while_the_first_is_being_sent(page: Page, server: str) -> None:
    """Enter and Stop in the moment between pressing Enter and the server's 202."""
    held: list[Route] = []
    page.route("**/v1/chat", lambda route: held.append(route))  # held until let go below
    page.select_option("#model", "test:mute")
    prompt = page.locator("#prompt")
    prompt.fill("First question")
    prompt.press("Enter")
    expect(page.locator(".message.user")).to_have_text("First question")
    expect(page.locator("#stop")).to_be_visible()

    # A second Enter is not sent: the text stays in the box.
    prompt.fill("Second question")
    prompt.press("Enter")
    expect(prompt).to_have_value("Second question")
    expect(page.locator(".message.user")).to_have_count(1)
    # Stop before the stream exists: it is cancelled as soon as it does.
    page.locator("#stop").click()
    expect(page.locator("#status")).to_have_text("Stopping…")

    assert len(held) == 1, "the second Enter must not send a request"
    with page.expect_response(lambda r: r.url.endswith("/v1/chat")) as started:
        held[0].continue_()
    page.unroute("**/v1/chat")
    stream_id = started.value.json()["stream_id"]
    conversation_id = started.value.json()["conversation_id"]
    expect(page.locator(".message.assistant .notice.cancelled")).to_have_text("Stopped.")
    expect(page.locator("#send")).to_be_visible()
    assert snapshot(server, stream_id)["status"] == "cancelled"

    # Now the second question goes, into the same conversation.
    page.select_option("#model", "test:html")
    prompt.press("Enter")
    expect(page.locator(".message.assistant")).to_have_count(2)
    expect(answer(page)).to_have_text([HTML])
    expect(page.locator(".message.user")).to_have_text(["First question", "Second question"])
    expect(page.locator(".message.assistant.streaming")).to_have_count(0)
    expect(page.locator("#title")).to_have_text("First question")
    expect(page.locator(".conversation-open", has_text="Second question")).to_have_count(0)
    stored = get(server, f"/v1/conversations/{conversation_id}")["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
