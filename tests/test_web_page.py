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


@pytest.fixture(scope="module")
def client() -> str:
    return (WEB / "tokenwire.js").read_text("utf-8")


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
    assert scripts == [
        {"src": "vendor/pusher-js/pusher.min.js", "defer": None},
        {"type": "module", "src": "app.js"},
    ], "no inline script: every script is a file"
    styles = [a["href"] for t, a in page.elements if t == "link" and a.get("rel") == "stylesheet"]
    assert styles == [
        "vendor/highlight.js/github.min.css",
        "vendor/highlight.js/github-dark.min.css",
        "style.css",
    ]
    for name in [*styles, *(a["src"] for a in scripts)]:
        assert (WEB / str(name)).is_file(), name
    for _, attrs in page.elements:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"(?i)(https?:)?//", value), f"external resource {value}"
    css = (WEB / "style.css").read_text("utf-8")
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(https?:)?//", css)


def test_csp_allows_only_own_scripts(page: Page) -> None:
    csp = [a for t, a in page.elements if t == "meta" and a.get("http-equiv")]
    content = csp[0]["content"] or ""
    assert "default-src 'self'" in content and "script-src 'self'" in content
    assert "unsafe-inline" not in content and "unsafe-eval" not in content


@pytest.mark.parametrize(
    "needle",
    [
        '"v1/chat"',
        '"v1/models"',
        '"v1/conversations"',
        "`v1/conversations/${",
        "`v1/streams/${",
        "/events?after=${",
        '"Last-Event-ID"',
        "/cancel`",
        '"PATCH"',
        '"DELETE"',
        '"POST"',
        "from_message_id",
        "conversation_id",
        "Retry-After",
    ],
)
def test_client_uses_the_api(client: str, needle: str) -> None:
    assert needle in client


def test_client_knows_the_terminal_events(client: str) -> None:
    terminal = re.search(r"const TERMINAL = new Set\(\[(.*?)\]\)", client)
    assert terminal is not None
    assert sorted(re.findall(r'"([a-z]+)"', terminal.group(1))) == ["cancelled", "error", "finish"]


@pytest.mark.parametrize(
    "needle",
    [
        'from "./tokenwire.js"',
        'from "./tokenwire-pusher.js"',
        'from "./markdown.js"',
        'source: "page"',
        "fromMessageId",
        "history.pushState",
        '"popstate"',
        "requestAnimationFrame",
        "`private-conversation.${",
        "followConversation(",
        "localStorage.getItem(TOKEN_KEY)",
    ],
)
def test_page_is_built_on_the_client(script: str, needle: str) -> None:
    assert needle in script


def test_pusher_helper_shares_the_sse_parser() -> None:
    pusher = (WEB / "tokenwire-pusher.js").read_text("utf-8")
    assert 'import { SSEDecoder } from "./tokenwire.js"' in pusher
    assert "class SSEDecoder" not in pusher


SINKS = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(")


@pytest.mark.parametrize("name", ["app.js", "tokenwire.js", "tokenwire-pusher.js", "markdown.js"])
def test_only_sanitized_html_is_written(name: str) -> None:
    """Model output becomes HTML in one place: markdown.js, through DOMPurify."""
    source = (WEB / name).read_text("utf-8")
    found = [sink for sink in SINKS if sink in source]
    if name != "markdown.js":
        assert found == [], f"{name} writes HTML"
        return
    assert found == ["innerHTML"]
    assert re.findall(r"\binnerHTML\b.*", source) == ["innerHTML = toSafeHtml(text);"]
    assert "return DOMPurify.sanitize(marked.parse(text).trim(), PURIFY);" in source
    assert 'import DOMPurify from "./vendor/dompurify/purify.es.mjs";' in source


def test_vendored_files_have_licenses_and_are_listed() -> None:
    vendor = WEB / "vendor"
    readme = (vendor / "README.md").read_text("utf-8")
    folders = sorted(p for p in vendor.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["dompurify", "highlight.js", "marked", "pusher-js"]
    for folder in folders:
        assert list(folder.glob("LICENSE*")), f"{folder.name} has no license file"
        assert f"`{folder.name}/`" in readme
    for name in ("app.js", "markdown.js"):
        for imported in re.findall(r'from "\./(vendor/[^"]+)"', (WEB / name).read_text("utf-8")):
            assert (WEB / imported).is_file(), imported
