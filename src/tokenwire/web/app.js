// tokenwire chat page: one vanilla ES module, no build step, no network but our own API.
//
// Endpoints (DESIGN §3): GET v1/models, POST v1/chat (202 with events_url and cancel_url),
// EventSource(events_url) named SSE events, POST cancel_url, GET/DELETE v1/conversations.
// Model output is only ever written with textContent / Text nodes, never parsed as HTML.

const API = new URL(".", import.meta.url); // the API lives beside this page
const url = (path) => new URL(path, API).toString();
const ACTIVE_KEY = "tokenwire.active"; // {stream_id, events_url, cancel_url, conversation_id}
const CONVERSATION_KEY = "tokenwire.conversation";
const MODEL_KEY = "tokenwire.model";
const TERMINAL = new Set(["finish", "error", "cancelled"]);
const EVENT_TYPES = [
  "start", "text-delta", "reasoning-delta", "tool-call-start", "tool-call-delta",
  "tool-call", "source", "usage", "finish", "error", "cancelled",
];

const $ = (id) => document.getElementById(id);
const els = {
  sidebar: $("sidebar"), list: $("conversations"), newChat: $("new-chat"),
  toggle: $("toggle-sidebar"), title: $("title"), model: $("model"),
  messages: $("messages"), empty: $("empty"), form: $("composer"),
  prompt: $("prompt"), send: $("send"), stop: $("stop"), status: $("status"),
};

const state = {
  conversationId: null,
  source: null, // the open EventSource
  active: null, // {stream_id, events_url, cancel_url, conversation_id}
  view: null, // the AssistantView being streamed into
  sending: false, // POST v1/chat under way: no second send, Stop waits for the stream id
  stopWanted: false, // Stop clicked while sending: cancel as soon as the stream exists
  stick: true, // keep the newest text in view while streaming
};

// ---------------------------------------------------------------- small helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path.startsWith("http") ? path : url(path), {
    headers: { Accept: "application/json", ...(options.body ? { "Content-Type": "application/json" } : {}) },
    ...options,
  });
  if (response.status === 204) return null;
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) throw new Error(errorText(response, body));
  return body;
}

function errorText(response, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ");
  }
  if (response.status === 429) {
    const retry = response.headers.get("Retry-After");
    return `Too many requests${retry ? `; try again in ${retry} s` : ""}.`;
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

function saveActive(active) {
  state.active = active;
  if (active) sessionStorage.setItem(ACTIVE_KEY, JSON.stringify(active));
  else sessionStorage.removeItem(ACTIVE_KEY);
}

function loadActive() {
  try { return JSON.parse(sessionStorage.getItem(ACTIVE_KEY) || "null"); } catch { return null; }
}

function nearBottom() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom(force = false) {
  if (force || state.stick) els.messages.scrollTop = els.messages.scrollHeight;
}

function safeHref(href) {
  try {
    const parsed = new URL(href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.toString() : null;
  } catch { return null; }
}

function formatTokens(usage) {
  if (!usage) return "";
  const bits = [`${usage.input_tokens ?? 0} in`, `${usage.output_tokens ?? 0} out`];
  if (usage.reasoning_tokens) bits.push(`${usage.reasoning_tokens} reasoning`);
  if (usage.cached_input_tokens) bits.push(`${usage.cached_input_tokens} cached`);
  return `tokens: ${bits.join(", ")}`;
}

// ---------------------------------------------------------------- message views

function addUserMessage(text) {
  els.empty.hidden = true;
  const item = el("article", "message user");
  item.append(el("div", "bubble", text));
  els.messages.append(item);
  return item;
}

/** One assistant message: parts keyed by their `part` index (DESIGN §2). */
class AssistantView {
  constructor(before = null) {
    els.empty.hidden = true;
    this.root = el("article", "message assistant");
    this.partsEl = el("div", "parts");
    this.meta = el("div", "meta");
    this.root.append(this.partsEl, this.meta);
    if (before) before.replaceWith(this.root);
    else els.messages.append(this.root);
    this.reset();
  }

  reset() {
    this.parts = new Map();
    this.lastSeq = 0;
    this.partsEl.replaceChildren();
    this.meta.replaceChildren();
    this.root.querySelectorAll(".notice").forEach((n) => n.remove());
    this.usage = null;
    this.firstDeltaAt = null;
    this.startedAt = performance.now();
  }

  setStreaming(on) { this.root.classList.toggle("streaming", on); }

  textPart(part, kind) {
    let entry = this.parts.get(part);
    if (!entry) {
      if (kind === "reasoning") {
        const details = el("details", "reasoning");
        const summary = el("summary", null, "Reasoning");
        const body = el("div", "reasoning-text");
        details.append(summary, body);
        entry = { kind, node: details, text: body.appendChild(document.createTextNode("")) };
      } else {
        const div = el("div", "text");
        entry = { kind, node: div, text: div.appendChild(document.createTextNode("")) };
      }
      this.parts.set(part, entry);
      this.place(part, entry.node);
    }
    return entry;
  }

  place(part, node) {
    // Keep DOM order equal to part order even if a part arrives late.
    const later = [...this.parts.entries()].filter(([p, e]) => p > part && e.node !== node && e.node.isConnected);
    later.sort((a, b) => a[0] - b[0]);
    if (later.length) this.partsEl.insertBefore(node, later[0][1].node);
    else this.partsEl.append(node);
  }

  toolCard(part, e) {
    let entry = this.parts.get(part);
    if (!entry || entry.kind !== "tool") {
      const card = el("div", "tool-call");
      const head = el("div", "tool-head");
      const name = el("span", "tool-name");
      const badge = el("span", "tool-badge");
      const args = el("pre", "tool-args");
      head.append(el("span", "tool-icon", "⚙"), name, badge);
      card.append(head, args);
      entry = { kind: "tool", node: card, name, badge, args, text: "" };
      this.parts.set(part, entry);
      this.place(part, card);
    }
    if (e.name) entry.name.textContent = e.name;
    entry.badge.textContent = e.provider_executed ? "run by the provider" : "tool call";
    return entry;
  }

  apply(e) {
    if (typeof e.seq === "number") {
      if (e.seq <= this.lastSeq) return; // already rendered (a replay overlap)
      this.lastSeq = e.seq;
    }
    switch (e.type) {
      case "start":
        this.model = e.model;
        break;
      case "text-delta":
      case "reasoning-delta": {
        if (this.firstDeltaAt === null) this.firstDeltaAt = performance.now();
        const entry = this.textPart(e.part, e.type === "text-delta" ? "text" : "reasoning");
        entry.text.appendData(e.delta);
        break;
      }
      case "tool-call-start":
        this.toolCard(e.part, e);
        break;
      case "tool-call-delta": {
        const entry = this.toolCard(e.part, e);
        entry.text += e.delta;
        entry.args.textContent = entry.text;
        break;
      }
      case "tool-call": {
        const entry = this.toolCard(e.part, e);
        entry.args.textContent = e.invalid || e.arguments === null
          ? (e.arguments_text ?? "")
          : JSON.stringify(e.arguments, null, 2);
        entry.node.classList.toggle("invalid", Boolean(e.invalid));
        if (e.invalid) entry.badge.textContent = "invalid arguments";
        break;
      }
      case "source":
        this.addSource(e.part, e.url, e.title);
        break;
      case "usage":
        this.usage = e;
        break;
      case "finish":
        this.finish(e.finish_reason, e.usage || this.usage);
        break;
      case "error":
        this.fail(e.message, e.code);
        break;
      case "cancelled":
        this.cancelled(e.reason);
        break;
      default:
        break; // newer event types: ignore (the contract only adds)
    }
  }

  addSource(part, href, title) {
    const safe = safeHref(href);
    const node = el(safe ? "a" : "span", "source", title || href);
    if (safe) { node.href = safe; node.target = "_blank"; node.rel = "noopener noreferrer"; }
    this.parts.set(part, { kind: "source", node });
    this.place(part, node);
  }

  notice(kind, text) {
    const node = el("div", `notice ${kind}`, text);
    this.root.insertBefore(node, this.meta);
  }

  finish(reason, usage) {
    this.setStreaming(false);
    const seconds = this.firstDeltaAt === null ? null : (performance.now() - this.firstDeltaAt) / 1000;
    const bits = [];
    if (this.model) bits.push(this.model);
    if (reason && reason !== "stop") bits.push(`finished: ${reason}`);
    if (usage) bits.push(formatTokens(usage));
    if (this.live && usage && seconds && seconds > 0.05 && usage.output_tokens) {
      bits.push(`${(usage.output_tokens / seconds).toFixed(1)} tokens/s`);
    }
    this.meta.textContent = bits.join(" · ");
    if (reason === "length") this.notice("warning", "The answer was cut off at the token limit.");
    if (reason === "content_filter") this.notice("warning", "The provider's content filter stopped the answer.");
    return bits.join(" · ");
  }

  fail(message, code) {
    this.setStreaming(false);
    this.notice("error", `Error${code ? ` (${code})` : ""}: ${message || "the generation failed"}`);
  }

  cancelled(reason) {
    this.setStreaming(false);
    const why = { user: "Stopped.", superseded: "Stopped: a newer message replaced it.",
      abandoned: "Stopped: nobody was reading.", deleted: "Stopped." }[reason];
    this.notice("cancelled", why || `Stopped (${reason}).`);
  }

  /** Render a stored message (GET /v1/conversations/{id}). */
  renderStored(m) {
    (m.parts || []).forEach((p, i) => {
      if (p.type === "text" || p.type === "reasoning") this.textPart(i, p.type).text.appendData(p.text || "");
      else if (p.type === "tool-call") {
        const entry = this.toolCard(i, p);
        entry.args.textContent = p.arguments != null ? JSON.stringify(p.arguments, null, 2) : (p.arguments_text || "");
        entry.node.classList.toggle("invalid", Boolean(p.invalid));
      }
      else if (p.type === "source") this.addSource(i, p.url, p.title);
    });
    this.lastSeq = 0;
    this.model = m.model;
    if (m.status === "completed") this.finish(m.finish_reason, m.usage);
    else if (m.status === "failed") this.fail(m.error && m.error.message, m.error && m.error.code);
    else if (m.status === "cancelled") this.cancelled("user");
  }
}

// ---------------------------------------------------------------- streaming

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.stop.disabled = false;
  els.messages.setAttribute("aria-busy", String(busy));
}

function closeSource() {
  if (state.source) state.source.close();
  state.source = null;
  state.view = null;
  setBusy(false);
}

/** Follow a stream with EventSource; the browser resumes drops with Last-Event-ID. */
function follow(active, view) {
  closeSource();
  saveActive(active);
  state.view = view;
  view.reset();
  view.setStreaming(true);
  setBusy(true);
  els.status.textContent = "Generating…";
  const source = new EventSource(active.events_url);
  state.source = source;
  const onEvent = (message) => {
    if (state.source !== source) return;
    let data;
    try { data = JSON.parse(message.data); } catch { return; }
    if (!data.type) data.type = message.type;
    view.apply(data);
    scrollToBottom();
    if (TERMINAL.has(data.type)) {
      source.close();
      if (data.type === "finish") els.status.textContent = view.meta.textContent;
      else if (data.type === "error") els.status.textContent = "The answer failed.";
      else els.status.textContent = "Stopped.";
      saveActive(null);
      closeSource();
      refreshConversations();
    }
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  source.onerror = () => {
    if (state.source !== source) return;
    if (source.readyState === EventSource.CLOSED) {
      // 404/410 or another non-SSE answer: the stored message is the truth now.
      saveActive(null);
      closeSource();
      els.status.textContent = "The live stream is gone; showing the saved message.";
      if (active.conversation_id) openConversation(active.conversation_id, { resume: false });
    } else {
      els.status.textContent = "Connection lost; reconnecting…";
    }
  };
  source.onopen = () => {
    if (state.source === source) els.status.textContent = "Generating…";
  };
}

async function send(text) {
  const userEl = addUserMessage(text);
  const view = new AssistantView();
  view.live = true; // followed from its first token: tokens/s is meaningful
  view.setStreaming(true);
  setBusy(true);
  state.stick = true;
  scrollToBottom(true);
  const body = { messages: [{ role: "user", content: text }] };
  if (els.model.value) body.model = els.model.value;
  if (state.conversationId) body.conversation_id = state.conversationId;
  let started;
  state.sending = true;
  state.stopWanted = false;
  try {
    started = await api("v1/chat", { method: "POST", body: JSON.stringify(body) });
  } catch (err) {
    view.fail(err.message);
    setBusy(false);
    els.status.textContent = "";
    userEl.classList.add("unsent");
    return;
  } finally {
    state.sending = false;
  }
  if (!state.conversationId) setConversation(started.conversation_id);
  follow({
    stream_id: started.stream_id,
    events_url: started.events_url,
    cancel_url: started.cancel_url,
    conversation_id: started.conversation_id,
  }, view);
  refreshConversations();
  if (state.stopWanted) stop();
}

async function stop() {
  const active = state.active;
  if (!active && !state.sending) return;
  els.stop.disabled = true;
  els.status.textContent = "Stopping…";
  state.stopWanted = !active; // no stream id yet: send() stops it once it has one
  if (!active) return;
  try {
    await api(active.cancel_url || `v1/streams/${encodeURIComponent(active.stream_id)}/cancel`, { method: "POST" });
  } catch (err) {
    els.stop.disabled = false;
    els.status.textContent = `Could not stop: ${err.message}`;
  }
}

// ---------------------------------------------------------------- conversations

function setConversation(id) {
  state.conversationId = id;
  if (id) sessionStorage.setItem(CONVERSATION_KEY, id);
  else sessionStorage.removeItem(CONVERSATION_KEY);
  for (const li of els.list.children) li.classList.toggle("active", li.dataset.id === id);
}

async function refreshConversations() {
  let data;
  try { data = (await api("v1/conversations")).data || []; } catch { return; }
  const items = data.map((c) => {
    const li = el("li", "conversation");
    li.dataset.id = c.id;
    li.classList.toggle("active", c.id === state.conversationId);
    const open = el("button", "conversation-open", c.title || "Untitled");
    open.type = "button";
    open.title = c.title || "Untitled";
    open.addEventListener("click", () => { openConversation(c.id); closeSidebarOnMobile(); });
    const del = el("button", "conversation-delete", "×");
    del.type = "button";
    del.setAttribute("aria-label", `Delete ${c.title || "conversation"}`);
    del.addEventListener("click", () => deleteConversation(c.id, c.title));
    li.append(open, del);
    if (c.id === state.conversationId && c.title) els.title.textContent = c.title;
    return li;
  });
  els.list.replaceChildren(...items);
}

async function deleteConversation(id, title) {
  if (!window.confirm(`Delete “${title || "this conversation"}”?`)) return;
  try { await api(`v1/conversations/${encodeURIComponent(id)}`, { method: "DELETE" }); }
  catch (err) { els.status.textContent = `Could not delete: ${err.message}`; return; }
  if (id === state.conversationId) newChat();
  refreshConversations();
}

function clearMessages() {
  closeSource();
  els.messages.replaceChildren(els.empty);
  els.empty.hidden = false;
  els.status.textContent = "";
}

function newChat() {
  clearMessages();
  saveActive(null);
  setConversation(null);
  els.title.textContent = "New chat";
  els.prompt.focus();
}

async function openConversation(id, { resume = true } = {}) {
  let conversation;
  try { conversation = await api(`v1/conversations/${encodeURIComponent(id)}`); }
  catch (err) {
    if (id === sessionStorage.getItem(CONVERSATION_KEY)) setConversation(null);
    els.status.textContent = `Could not open the conversation: ${err.message}`;
    return;
  }
  clearMessages();
  setConversation(id);
  els.title.textContent = conversation.title || "Untitled";
  const saved = loadActive();
  let resumed = false;
  for (const m of conversation.messages || []) {
    if (m.role === "user") {
      addUserMessage((m.parts || []).filter((p) => p.type === "text").map((p) => p.text).join(""));
      continue;
    }
    if (m.role !== "assistant") continue;
    const view = new AssistantView();
    const live = m.status === "streaming" || m.status === "pending";
    if (resume && live && m.stream_id && !resumed) {
      resumed = true;
      const same = saved && saved.stream_id === m.stream_id;
      follow(same ? saved : {
        stream_id: m.stream_id,
        events_url: url(`v1/streams/${encodeURIComponent(m.stream_id)}/events`),
        cancel_url: url(`v1/streams/${encodeURIComponent(m.stream_id)}/cancel`),
        conversation_id: id,
      }, view);
    } else {
      view.renderStored(m);
    }
  }
  if (resume && !resumed && saved && saved.conversation_id === id) {
    // Started but not yet in the store: follow the saved stream from seq 1.
    follow(saved, new AssistantView());
  } else if (!resumed) {
    saveActive(null);
  }
  state.stick = true;
  scrollToBottom(true);
}

// ---------------------------------------------------------------- models, composer

async function loadModels() {
  try {
    const body = await api("v1/models");
    const wanted = localStorage.getItem(MODEL_KEY) || body.default;
    els.model.replaceChildren(...(body.data || []).map((m) => {
      const option = el("option", null, m.id);
      option.value = m.id;
      return option;
    }));
    if ([...els.model.options].some((o) => o.value === wanted)) els.model.value = wanted;
  } catch (err) {
    els.status.textContent = `Could not load models: ${err.message}`;
  }
}

function autoGrow() {
  els.prompt.style.height = "auto";
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, 240)}px`;
}

function closeSidebarOnMobile() {
  if (window.matchMedia("(max-width: 760px)").matches) document.body.classList.remove("sidebar-open");
}

function wire() {
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = els.prompt.value.trim();
    if (!text || state.source || state.sending) return; // one answer at a time
    els.prompt.value = "";
    autoGrow();
    send(text);
  });
  els.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });
  els.prompt.addEventListener("input", autoGrow);
  els.stop.addEventListener("click", stop);
  els.newChat.addEventListener("click", () => { newChat(); closeSidebarOnMobile(); });
  els.toggle.addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
  els.model.addEventListener("change", () => localStorage.setItem(MODEL_KEY, els.model.value));
  els.messages.addEventListener("scroll", () => { state.stick = nearBottom(); });
}

async function main() {
  wire();
  await Promise.all([loadModels(), refreshConversations()]);
  const saved = loadActive();
  const id = sessionStorage.getItem(CONVERSATION_KEY) || (saved && saved.conversation_id);
  if (id) await openConversation(id);
  els.prompt.focus();
}

main();
