// Markdown for the chat page: model output -> sanitized HTML, nothing in it ever runs.
//
// marked (GFM: tables, lists, fenced code) turns the text into HTML, with two changes: raw HTML
// in the text is shown as text (escaped), and fenced code is highlighted by highlight.js.
// DOMPurify then sanitizes the whole result (no script, no event handler, no javascript: URL,
// no style), and only that is written into the page. Links open in a new tab without an opener.
// The page's CSP (no inline script) is the second wall.

import { Marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";
import hljs from "./vendor/highlight.js/highlight.min.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  renderer: {
    html({ text }) {
      return escapeHtml(text); // raw HTML from the model is text, never markup
    },
    code({ text, lang }) {
      const language = (lang || "").match(/^[\w+#.-]*/)[0].toLowerCase();
      const known = language && hljs.getLanguage(language);
      const body = known
        ? hljs.highlight(text, { language, ignoreIllegals: true }).value
        : escapeHtml(text);
      return `<pre><code class="hljs${known ? ` language-${escapeHtml(language)}` : ""}">${body}</code></pre>\n`;
    },
  },
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "button", "textarea", "select", "iframe"],
  FORBID_ATTR: ["style", "id", "name"],
  ALLOW_DATA_ATTR: false,
  ADD_ATTR: ["target"],
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** Sanitized HTML for markdown `text` (complete or still streaming). */
export function toSafeHtml(text) {
  return DOMPurify.sanitize(marked.parse(text).trim(), PURIFY);
}

/**
 * Render markdown `text` into `container` (replacing its content), then give each code block a
 * header with its language and a Copy button.
 */
export function renderMarkdown(container, text) {
  container.innerHTML = toSafeHtml(text);
  for (const pre of container.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const block = document.createElement("div");
    block.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    const lang = document.createElement("span");
    lang.className = "code-lang";
    // labels drawn by CSS (data-label): the message's textContent stays the model's text
    lang.dataset.label = (code?.className.match(/language-([\w+#.-]+)/) || [])[1] || "text";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.dataset.label = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    copy.addEventListener("click", () => copyText((code || pre).textContent, copy));
    head.append(lang, copy);
    pre.replaceWith(block);
    block.append(head, pre);
  }
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.dataset.label = "Copied";
  } catch {
    button.dataset.label = "Copy failed";
  }
  setTimeout(() => { button.dataset.label = "Copy"; }, 1500);
}
