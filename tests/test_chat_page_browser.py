"""The chat page at ``/`` in a real headless Chromium, against the real app in-process.

Each scenario types into the page as a person would and asserts on what the page
shows. The page chooses only the model, so behaviour is chosen by model: a ``test:``
provider registered for this module answers with a scripted list of text deltas and
can hold after some of them until the test opens its gate; ``mock:`` is the mock
provider (a real process replaying a recording), whose request log tells whether
Stop closed the upstream connection. Each state reached is saved as a screenshot in
``tests/screenshots/`` (not versioned; the README's are copies in ``docs/screenshots/``).

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the PyPI ``playwright``
package. Without them the module is skipped, except under CI (``CI`` set), where
it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import uvicorn_thread
from tokenwire.engine import Tokenwire
from tokenwire.events import TextDelta, Usage
from tokenwire.providers import ProviderRegistry
from tokenwire.providers.base import GenerationRequest, ProviderEvent, finish
from tokenwire.providers.openai_chat import OpenAIChatProvider
from tokenwire.server.app import create_app
from tokenwire.settings import Settings
from tokenwire.testing import get_time

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
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
"""Each state a test reaches is saved here (committed; the README shows the best)."""

if not os.environ.get("CI"):
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing (apt-get install chromium); under CI this test fails instead",
            allow_module_level=True,
        )
    pytest.importorskip("playwright", reason="the playwright package is not installed")

from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow
MOCK_TAG = f"chat-page-{os.getpid()}"


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
MARKDOWN = """Here is the **plan**, in three steps:

1. Read the *input*
2. Call `greet()` for each name
3. Print the results

| Name | Greeting |
|------|----------|
| Ada | Hello, Ada! |
| Linus | Hello, Linus! |

```python
def greet(name: str) -> str:
    return f"Hello, {name}!"
```

More in [the documentation](https://example.com/docs)."""
EVIL = """Inert: <script>window.__pwned = "script"</script>
<img src=x onerror="window.__pwned = 'img'"> <svg onload="window.__pwned = 'svg'"></svg>
<iframe srcdoc="<script>parent.__pwned = 'iframe'</script>"></iframe>
[a link](javascript:window.__pwned='link') <a href="javascript:window.__pwned='a'">a</a>
![x](x" onerror="window.__pwned='md-img')

```html
<script>window.__pwned = "code"</script>
```
"""
LIVE = "Both tabs see this answer as it is written."
SECOND = "And this one, sent from the first tab."
DROP = "A dropped connection resumes where it stopped, without a duplicate."
MOCK = "mock:openai-chat/gpt-4.1-nano_text_303chunks"
"""A recording the mock provider replays at 40 ms a chunk (about 12 s): long enough to stop."""


def chunks(text: str, size: int = 6) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


SCRIPTS = {
    "answer": Script(words(ANSWER), hold_after=3),
    "stall": Script(words(STALLED), hold_after=3),  # its gate is never opened
    "mute": Script(words("Never shown"), hold_after=0),  # nor is this one's
    "reload": Script(words(RELOAD), hold_after=4),
    # one code point a delta: the emoji's ZWJ sequence and the accents arrive in pieces
    "unicode": Script(list(UNICODE)),
    "html": Script(["Look: <im", "g src=x onerror=alert(", "1)> and <b>bo", "ld</b> stay text."]),
    "markdown": Script(chunks(MARKDOWN), hold_after=len(chunks(MARKDOWN)) // 2),
    "evil": Script(chunks(EVIL, 5)),
    "live": Script(words(LIVE), hold_after=2),
    "second": Script(words(SECOND), hold_after=3),
    "drop": Script(words(DROP), hold_after=4),
}
MODELS = [
    "fake:lorem",
    "fake:echo",
    "fake:think",
    "fake:tool",
    "fake:tools",
    MOCK,
    *(f"test:{name}" for name in SCRIPTS),
]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mock_provider: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TOKENWIRE_FAKE_PROVIDER", "1")  # fake: models, wherever that is a setting
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("chat-page"), default_model="fake:lorem", models=MODELS
        )
    registry = ProviderRegistry(fake=True)
    registry.register("test", GatedProvider(SCRIPTS))
    # mock: the mock provider, paced, its requests tagged so that the test can ask how each ended
    upstream = httpx.AsyncClient(
        headers={"x-mock-pace-ms": "40", "x-mock-tag": MOCK_TAG}, timeout=httpx.Timeout(5.0)
    )
    registry.register(
        "mock",
        OpenAIChatProvider(base_url=mock_provider + "/v1", api_key="k", http_client=upstream),
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tw = Tokenwire(settings, registry=registry, tools=[get_time])
    with uvicorn_thread(create_app(tokenwire=tw)) as base:
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


def shoot(page: Page, name: str) -> None:
    """Save what the page shows now as ``tests/screenshots/{name}.png``."""
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), animations="disabled", caret="hide")


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
    shoot(page, "streaming")

    SCRIPTS["answer"].gate.open()
    expect(answer(page)).to_have_text(ANSWER)
    expect(page.locator(".message.assistant")).to_have_class("message assistant")
    meta = page.locator(".message.assistant .meta")
    expect(meta).to_contain_text("test:answer")
    expect(meta).to_contain_text("tokens: 3 in, 8 out")
    expect(meta).to_contain_text("s to first token")
    expect(meta).to_contain_text("tokens/s")
    # one stats line per answer: the status line does not repeat it
    expect(page.locator("#status")).to_have_text("")
    expect(page.get_by_text("tokens: 3 in, 8 out")).to_have_count(1)
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()

    # The conversation is listed, titled by the question, and is the one open.
    item = page.locator("#conversations .conversation.active .conversation-open")
    expect(item).to_have_text(question)
    expect(page.locator("#title")).to_have_text(question)
    assert snapshot(server, stream_id)["status"] == "completed"
    assert answer(page).text_content() == ANSWER
    shoot(page, "answer-finished")


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
    shoot(page, "reloaded-mid-stream")

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


# ---------------------------------------------------------------- markdown, inert output


def test_markdown_renders_as_it_streams(page: Page, server: str) -> None:
    ask(page, "test:markdown", "Show me a plan")
    message = page.locator(".message.assistant")
    # Half of it: already rendered (the list), still streaming.
    expect(message.locator(".text ol li")).to_have_count(3)
    expect(message).to_have_class("message assistant streaming")
    SCRIPTS["markdown"].gate.open()
    expect(message).to_have_class("message assistant")
    text = message.locator(".text")
    expect(text.locator("strong")).to_have_text("plan")
    expect(text.locator("table tbody tr")).to_have_count(2)
    expect(text.locator("table th")).to_have_text(["Name", "Greeting"])
    expect(text.locator(":not(pre) > code")).to_have_text("greet()")
    code = text.locator(".code-block pre code.hljs.language-python")
    expect(code).to_have_count(1)
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(code.locator(".hljs-string")).to_contain_text('f"Hello, {name}!"')
    link = text.locator("a", has_text="the documentation")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    # The code's text is exactly the model's; Copy puts it on the clipboard.
    source = MARKDOWN.split("```python\n")[1].split("\n```")[0]
    assert code.text_content() == source
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy = text.get_by_role("button", name="Copy code")
    copy.click()
    expect(copy).to_have_attribute("data-label", "Copied")
    assert page.evaluate("navigator.clipboard.readText()") == source
    shoot(page, "markdown")
    # The same from the store after a reload.
    page.reload()
    expect(page.locator(".message.assistant .text table tbody tr")).to_have_count(2)
    expect(page.locator(".message.assistant .code-block code.language-python")).to_have_count(1)


def test_script_and_event_handlers_in_model_output_stay_inert(page: Page, server: str) -> None:
    page.evaluate(
        """() => {
            window.__violations = [];
            document.addEventListener("securitypolicyviolation",
                (e) => window.__violations.push(e.violatedDirective));
        }"""
    )
    ask(page, "test:evil", "Try to run something")
    message = page.locator(".message.assistant")
    expect(message).to_have_class("message assistant")
    expect(message.locator(".text")).to_contain_text("Inert:")
    expect(message.locator(".text")).to_contain_text("<script>window.__pwned")
    for selector in ("script", "img", "svg", "iframe", "[onerror]", "[onload]", "a[href^=java]"):
        expect(page.locator(f"#messages {selector}")).to_have_count(0)
    # the code block shows the script as code
    expect(message.locator("code.language-html")).to_contain_text('<script>window.__pwned = "code"')
    page.reload()  # and from the store
    expect(page.locator(".message.assistant .text")).to_contain_text("Inert:")
    for selector in ("script", "img", "svg", "iframe", "[onerror]", "[onload]", "a[href^=java]"):
        expect(page.locator(f"#messages {selector}")).to_have_count(0)
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("window.__violations ?? []") == []


# ---------------------------------------------------------------- stop reaches the provider


def _mock_requests(mock: str) -> list[dict[str, Any]]:
    data = httpx.get(f"{mock}/_mock/requests", params={"tag": MOCK_TAG}, timeout=5).json()
    return data if isinstance(data, list) else data["requests"]  # type: ignore[no-any-return]


def test_stop_closes_the_upstream_request(page: Page, server: str, mock_provider: str) -> None:
    stream_id = ask(page, MOCK, "Tell me something long")
    expect(answer(page)).not_to_have_text("")
    expect(page.locator("#stop")).to_be_visible()
    page.locator("#prompt").press("Escape")  # Esc stops, as the Stop button does
    expect(page.locator(".message.assistant .notice.cancelled")).to_have_text("Stopped.")
    expect(page.locator("#send")).to_be_visible()
    shown = answer(page).text_content()
    stored = snapshot(server, stream_id)
    assert stored["status"] == "cancelled" and shown and stored["text"]
    # the mock provider notices the closed connection at its next write (40 ms pace)
    deadline = time.monotonic() + 10
    (record,) = _mock_requests(mock_provider)
    while record["outcome"] == "streaming" and time.monotonic() < deadline:
        page.wait_for_timeout(50)
        (record,) = _mock_requests(mock_provider)
    assert record["outcome"] == "client_disconnected"
    assert record["events_sent"] < record["events_total"]
    assert answer(page).text_content() == shown  # nothing arrived after the stop
    shoot(page, "stopped")


# ---------------------------------------------------------------- two tabs, one conversation


def test_a_conversation_url_follows_live_in_a_second_tab(
    page: Page, server: str, browser: Browser
) -> None:
    ask(page, "test:live", "Watch this from another tab")
    expect(answer(page)).to_have_text("Both tabs")
    conversation_id = page.evaluate("new URLSearchParams(location.search).get('c')")
    assert conversation_id

    other = browser.new_context(base_url=server, viewport={"width": 1100, "height": 700})
    second = other.new_page()
    errors: list[str] = []
    second.on("pageerror", lambda error: errors.append(str(error)))
    try:
        second.goto(f"/?c={conversation_id}")
        expect(second.locator(".message.user .bubble")).to_have_text("Watch this from another tab")
        expect(answer(second)).to_have_text("Both tabs")
        expect(second.locator("#stop")).to_be_visible()
        SCRIPTS["live"].gate.open()
        expect(answer(second)).to_have_text(LIVE)
        expect(answer(page)).to_have_text(LIVE)
        expect(second.locator("#send")).to_be_visible()

        # A message sent from the first tab appears in the second, its answer streaming in.
        page.select_option("#model", "test:second")
        page.locator("#prompt").fill("A second question")
        page.locator("#prompt").press("Enter")
        bubbles = second.locator(".message.user .bubble")
        expect(bubbles).to_have_text(["Watch this from another tab", "A second question"])
        expect(answer(second)).to_have_text([LIVE, "And this one,"])
        expect(second.locator(".message.assistant").nth(1)).to_have_class(
            "message assistant streaming"
        )
        shoot(second, "second-tab-live")
        SCRIPTS["second"].gate.open()
        expect(answer(second)).to_have_text([LIVE, SECOND])
        expect(answer(page)).to_have_text([LIVE, SECOND])
        expect(second.locator(".message.assistant")).to_have_count(2)
        assert second.url.endswith(f"/?c={conversation_id}")
    finally:
        other.close()
    assert errors == []


# ---------------------------------------------------------------- a dropped connection


def sse_frames(events: list[dict[str, Any]]) -> str:
    import json

    return "".join(f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def test_a_connection_dropped_mid_stream_resumes(page: Page, server: str) -> None:
    """The first events response ends after the events so far (a connection cut mid-stream),
    the next attempt fails at the network level; the page resumes from the last seq."""
    page.route("**/vendor/pusher-js/*", lambda route: route.abort())  # only the HTTP stream
    page.reload()
    expect(page.locator("#model option")).to_have_count(len(MODELS))
    seen: list[tuple[str, str | None]] = []
    cut: dict[str, int] = {}

    def on_events(route: Route) -> None:
        request = route.request
        seen.append((request.url, request.headers.get("last-event-id")))
        if len(seen) == 1:  # the events so far, then the body ends
            stream_id = request.url.split("/v1/streams/")[1].split("/")[0]
            events: list[dict[str, Any]] = []
            while not any(e["type"] == "text-delta" for e in events):
                polled = get(server, f"/v1/streams/{stream_id}?after={len(events)}&wait=5")
                events += polled["events"]
            cut["seq"] = events[-1]["seq"]
            route.fulfill(
                status=200,
                headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
                body=sse_frames(events),
            )
        elif len(seen) == 2:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/v1/streams/*/events*", on_events)
    stream_id = ask(page, "test:drop", "Drop the connection")
    expect(answer(page)).to_have_text("A dropped connection resumes")
    expect(page.locator("#stop")).to_be_visible()
    SCRIPTS["drop"].gate.open()
    expect(answer(page)).to_have_text(DROP)
    expect(page.locator("#send")).to_be_visible()
    assert answer(page).text_content() == DROP
    assert snapshot(server, stream_id)["text"] == DROP
    assert len(seen) == 3, seen
    assert seen[0][0].endswith("?after=0") and seen[0][1] is None
    for url, last_event_id in seen[1:]:
        assert url.endswith(f"?after={cut['seq']}") and last_event_id == str(cut["seq"])


# ---------------------------------------------------------------- edit, regenerate, errors


def conversation_of(page: Page, server: str) -> dict[str, Any]:
    conversation_id = page.evaluate("new URLSearchParams(location.search).get('c')")
    return get(server, f"/v1/conversations/{conversation_id}")


def test_edit_and_regenerate(page: Page, server: str) -> None:
    ask(page, "fake:echo", "First version")
    expect(answer(page)).to_have_text("First version")
    expect(page.locator("#send")).to_be_visible()
    page.get_by_role("button", name="Edit and resend this message").click()
    editor = page.get_by_role("textbox", name="Edit message")
    editor.fill("Second version")
    editor.press("Enter")
    expect(page.locator(".message.user .bubble")).to_have_text(["Second version"])
    expect(answer(page)).to_have_text(["Second version"])
    expect(page.locator("#send")).to_be_visible()
    stored = conversation_of(page, server)["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["parts"][0]["text"] == "Second version"

    page.get_by_role("button", name="Regenerate this answer").click()
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(page.locator("#send")).to_be_visible()
    expect(answer(page)).to_have_text(["Second version"])
    again = conversation_of(page, server)["messages"]
    assert [m["role"] for m in again] == ["user", "assistant"]
    assert again[0]["id"] == stored[0]["id"] and again[1]["id"] != stored[1]["id"]


def test_rate_limited_send_shows_the_wait_and_retries(page: Page, server: str) -> None:
    def too_many(route: Route) -> None:
        route.fulfill(
            status=429,
            headers={"retry-after": "2", "content-type": "application/json"},
            body='{"detail": "slow down"}',
        )
        page.unroute("**/v1/chat")

    page.route("**/v1/chat", too_many)
    page.select_option("#model", "fake:echo")
    page.locator("#prompt").fill("Rate limited once")
    page.locator("#prompt").press("Enter")
    notice = page.locator(".message.assistant .notice.error")
    expect(notice).to_contain_text("Too many requests. Try again in 2 s.")
    retry = notice.get_by_role("button", name="Retry")
    expect(retry).to_be_disabled()
    expect(retry).to_contain_text("Retry in")
    shoot(page, "rate-limited")
    expect(retry).to_be_enabled()
    retry.click()
    expect(page.locator(".message.user .bubble")).to_have_text(["Rate limited once"])
    expect(answer(page)).to_have_text(["Rate limited once"])
    expect(page.locator(".notice.error")).to_have_count(0)


# ---------------------------------------------------------------- the sidebar


def test_sidebar_search_rename_filter_delete(page: Page, server: str) -> None:
    marker = f"zebra{os.getpid()}"
    ask(page, "fake:echo", f"Plan the {marker} migration")
    expect(page.locator("#send")).to_be_visible()
    # started through the API: hidden unless asked for
    api = httpx.post(
        server + "/v1/chat",
        json={"model": "fake:echo", "messages": [{"role": "user", "content": f"API {marker}"}]},
        timeout=5,
    ).json()["conversation_id"]
    page.locator("#search").fill(marker)
    items = page.locator("#conversations .conversation")
    expect(items).to_have_count(1)
    expect(page.locator("#conversations .group-title")).to_have_text(["Today"])
    page.locator("#show-all").check()
    expect(items).to_have_count(2)
    expect(page.locator(f"#conversations .conversation[data-id='{api}'] .badge")).to_have_text(
        "api"
    )
    page.locator("#show-all").uncheck()
    expect(items).to_have_count(1)

    item = items.first
    item.hover()
    item.get_by_role("button", name=f"Rename Plan the {marker} migration").click()
    title = page.get_by_role("textbox", name="New title")
    title.fill(f"Renamed {marker}")
    title.press("Enter")
    expect(page.locator("#conversations .conversation .conversation-open")).to_have_text(
        f"Renamed {marker}"
    )
    expect(page.locator("#title")).to_have_text(f"Renamed {marker}")
    shoot(page, "sidebar")

    page.locator("#conversations .conversation").first.hover()
    page.get_by_role("button", name=f"Delete Renamed {marker}").click()
    page.get_by_role("button", name=f"Delete Renamed {marker} for good").click()
    expect(page.locator("#conversations .conversation")).to_have_count(0)
    expect(page.locator("#title")).to_have_text("New chat")
    expect(page.locator(".message")).to_have_count(0)


def test_narrow_screen_sidebar_is_a_drawer(page: Page, server: str) -> None:
    page.set_viewport_size({"width": 390, "height": 760})
    ask(page, "fake:echo", "On a phone")
    expect(answer(page)).to_have_text("On a phone")
    sidebar = page.locator("#sidebar")
    toggle = page.get_by_role("button", name="Show or hide conversations")
    expect(toggle).to_be_visible()
    expect(sidebar).not_to_be_in_viewport()
    toggle.click()
    expect(sidebar).to_be_in_viewport()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    shoot(page, "narrow-drawer")
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()


def test_reasoning_and_tool_calls(page: Page, server: str) -> None:
    ask(page, "fake:think", "Think first")
    reasoning = page.locator(".message.assistant details.reasoning")
    expect(reasoning.locator(".reasoning-text")).to_have_text("Let me think.")
    expect(reasoning).not_to_have_attribute("open", "")  # collapsed
    expect(answer(page)).to_have_text("Think first")
    expect(page.locator("#send")).to_be_visible()
    reasoning.locator("summary").click()
    expect(reasoning.locator(".reasoning-text")).to_be_visible()

    page.locator("#prompt").fill("What is the weather?")
    page.select_option("#model", "fake:tool")
    page.locator("#prompt").press("Enter")
    card = page.locator(".message.assistant .tool-call")
    expect(card.locator(".tool-name")).to_have_text("get_weather")
    expect(card.locator(".tool-args")).to_have_text('{\n  "city": "Paris",\n  "unit": "celsius"\n}')
    expect(page.locator(".message.assistant .meta").nth(1)).to_contain_text("finished: tool_calls")
    # one stats line per answer
    expect(page.locator(".message.assistant .meta")).to_have_count(2)
    shoot(page, "reasoning-and-tool-call")


def test_server_tool_cards_live_and_after_reload(page: Page) -> None:
    """``?tools=get_time`` offers the server-side tool: its card shows the call and the
    result as the events arrive, and again when the conversation is reloaded."""
    clock = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    page.goto("/?tools=get_time")
    expect(page.locator("#model option")).to_have_count(len(MODELS))
    ask(page, "fake:tools", "What time is it?")
    card = page.locator(".message.assistant .tool-call")
    expect(card.locator(".tool-name")).to_have_text("get_time")
    expect(card.locator(".tool-result")).to_have_text(clock)
    expect(answer(page)).to_have_text(clock)
    expect(page.locator("#send")).to_be_visible()
    page.reload()
    expect(card.locator(".tool-name")).to_have_text("get_time")
    expect(card.locator(".tool-result")).to_have_text(clock)
