"""The static chat page (``src/tokenwire/web``): well-formed, self-contained, wired to the API.

A real-browser test lives elsewhere; these checks need no browser.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "src" / "tokenwire" / "web"
VOID = {"meta", "link", "br", "hr", "img", "input", "source", "area", "base", "col", "wbr"}


class Page(HTMLParser):
    """Collects elements (tag, attributes) and checks that tags nest properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def by_id(self, element_id: str) -> tuple[str, dict[str, str | None]]:
        matches = [e for e in self.elements if e[1].get("id") == element_id]
        assert len(matches) == 1, f"expected one element with id={element_id!r}, got {len(matches)}"
        return matches[0]


@pytest.fixture(scope="module")
def page() -> Page:
    parser = Page()
    parser.feed((WEB / "index.html").read_text("utf-8"))
    parser.close()
    return parser


@pytest.fixture(scope="module")
def script() -> str:
    return (WEB / "app.js").read_text("utf-8")


def test_html_is_well_formed(page: Page) -> None:
    assert page.doctype is not None and page.doctype.lower() == "doctype html"
    assert page.problems == []
    assert page.stack == [], f"unclosed tags: {page.stack}"
    ids = [attrs["id"] for _, attrs in page.elements if attrs.get("id")]
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert ("meta", {"charset": "utf-8"}) in page.elements


def test_page_has_the_chat_controls(page: Page) -> None:
    form = page.by_id("composer")
    assert form[0] == "form"
    assert page.by_id("prompt")[0] == "textarea"
    send = page.by_id("send")
    assert send[0] == "button" and send[1]["type"] == "submit"
    stop = page.by_id("stop")
    assert stop[0] == "button" and stop[1]["type"] == "button" and "hidden" in stop[1]
    assert page.by_id("model")[0] == "select"
    assert page.by_id("new-chat")[0] == "button"
    for element_id in ("messages", "conversations", "status"):
        page.by_id(element_id)


def test_page_references_only_local_resources(page: Page) -> None:
    scripts = [a for t, a in page.elements if t == "script"]
    assert scripts == [{"type": "module", "src": "app.js"}]
    styles = [a["href"] for t, a in page.elements if t == "link" and a.get("rel") == "stylesheet"]
    assert styles == ["style.css"]
    for name in ("app.js", "style.css"):
        assert (WEB / name).is_file()
    for _, attrs in page.elements:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"(?i)(https?:)?//", value), f"external resource {value}"
    css = (WEB / "style.css").read_text("utf-8")
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(https?:)?//", css)


def test_csp_forbids_foreign_scripts(page: Page) -> None:
    csp = [a for t, a in page.elements if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'self'" in (csp[0]["content"] or "")


@pytest.mark.parametrize(
    "needle",
    [
        '"v1/models"',
        '"v1/chat"',
        '"v1/conversations"',
        "`v1/conversations/${",
        "`v1/streams/${",
        "/events`",
        "/cancel`",
        "events_url",
        "cancel_url",
        "conversation_id",
        "new EventSource(",
        "sessionStorage",
        'method: "DELETE"',
        'method: "POST"',
    ],
)
def test_script_uses_the_api(script: str, needle: str) -> None:
    assert needle in script


def test_script_listens_to_every_event_type(script: str) -> None:
    types = [
        "start", "text-delta", "reasoning-delta", "tool-call-start", "tool-call-delta",
        "tool-call", "source", "usage", "finish", "error", "cancelled",
    ]  # fmt: skip
    listed = re.search(r"const EVENT_TYPES = \[(.*?)\];", script, re.S)
    assert listed is not None
    assert sorted(re.findall(r'"([a-z-]+)"', listed.group(1))) == sorted(types)
    terminal = re.search(r"const TERMINAL = new Set\(\[(.*?)\]\)", script)
    assert terminal is not None
    assert sorted(re.findall(r'"([a-z]+)"', terminal.group(1))) == ["cancelled", "error", "finish"]
    assert "source.close()" in script  # no reconnect after a terminal event


def test_script_never_writes_html(script: str) -> None:
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    assert "textContent" in script
    assert not re.search(r"^\s*import\s", script, re.M), "the page's module imports nothing"
