// tokenwire chat page: vanilla ES modules, no build step, no network but our own server.
//
// Built on /tokenwire.js (TokenwireClient: start, follow with resume and de-duplication by seq,
// stop, conversations, models) and /tokenwire-pusher.js (followConversation over the vendored
// pusher-js): every tab showing a conversation (URL ?c={id}) receives its streams live on
// private-conversation.{id}, including answers to messages sent from another tab or device.
// Model output is rendered as markdown through DOMPurify (markdown.js); everything else is
// written with textContent.

import { TokenwireClient, TokenwireError, isTerminal } from "./tokenwire.js";
import { followConversation } from "./tokenwire-pusher.js";
import { renderMarkdown } from "./markdown.js";

const BASE = new URL(".", import.meta.url).toString().replace(/\/$/, ""); // the API lives beside this page
const MODEL_KEY = "tokenwire.model";
const TOKEN_KEY = "tokenwire.token"; // optional bearer token when the server has AUTH_TOKENS
const SHOW_ALL_KEY = "tokenwire.showAll";
const PUSHER_KEY = "tokenwire"; // the default app key (docs/websockets.md)

const authHeaders = () => {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
};
const client = new TokenwireClient({ baseUrl: BASE, headers: authHeaders });

const $ = (id) => document.getElementById(id);
const els = {
  sidebar: $("sidebar"), list: $("conversations"), newChat: $("new-chat"), search: $("search"),
  showAll: $("show-all"), backdrop: $("backdrop"), toggle: $("toggle-sidebar"), title: $("title"),
  model: $("model"), messages: $("messages"), empty: $("empty"), form: $("composer"),
  prompt: $("prompt"), send: $("send"), stop: $("stop"), status: $("status"),
};

const state = {
  conversationId: null,
  views: new Map(), // stream_id -> AssistantView of the open conversation
  following: new Map(), // stream_id -> AbortController of its client.follow()
  orphans: new Map(), // stream_id -> events heard before their message was rendered
  sending: false, // POST v1/chat under way: no second send; Stop waits for the stream id
  stopWanted: false, // Stop pressed while sending: cancel as soon as the stream exists
  stick: true, // keep the newest text in view while streaming
  epoch: 0, // bumped whenever another conversation is shown: late answers are dropped
  syncing: null, // a refetch of the open conversation under way (Promise)
  resync: false, // another refetch was asked for meanwhile
  pusher: null,
  channel: null, // {name, follower} of the open conversation
};

// ---------------------------------------------------------------- small helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function button(className, text, label, onClick) {
  const node = el("button", className, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

/** A button whose visible label is drawn by CSS (data-label), so that a message's
 * textContent stays exactly what was written; `label` is its accessible name. */
function action(className, text, label, onClick) {
  const node = button(className, null, label, onClick);
  node.dataset.label = text;
  node.title = label;
  return node;
}

const setStatus = (text) => { els.status.textContent = text || ""; };

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

/** Server-side tools the page offers the model: `?tools=get_time,add` (docs/tools.md). */
const pageTools = () => (new URLSearchParams(location.search).get("tools") || "").split(",").filter(Boolean);

const textOf = (parts) => (parts || []).filter((p) => p.type === "text").map((p) => p.text).join("");

function errorMessage(error) {
  if (error instanceof TokenwireError && error.status === 429) {
    const wait = error.retryAfter ? ` Try again in ${Math.ceil(error.retryAfter)} s.` : "";
    return `Too many requests.${wait}`;
  }
  return error?.message || String(error);
}

// ---------------------------------------------------------------- markdown, once per frame

const dirty = new Set();
let frame = 0;

function scheduleRender(entry) {
  dirty.add(entry);
  if (!frame) frame = requestAnimationFrame(flushRender);
}

function flushRender() {
  frame = 0;
  for (const entry of dirty) renderMarkdown(entry.node, entry.raw);
  dirty.clear();
  scrollToBottom();
}

// ---------------------------------------------------------------- message views

function addUserMessage(text, id = null, before = null) {
  els.empty.hidden = true;
  const item = el("article", "message user");
  item.setAttribute("aria-label", "You");
  if (id) item.dataset.id = id;
  const bubble = el("div", "bubble", text);
  const actions = el("div", "actions");
  actions.append(action("edit", "Edit", "Edit and resend this message", () => startEdit(item)));
  item.append(bubble, actions);
  if (before) els.messages.insertBefore(item, before);
  else els.messages.append(item);
  return item;
}

/** One assistant message: parts keyed by their `part` index (DESIGN §2). */
class AssistantView {
  constructor() {
    els.empty.hidden = true;
    this.root = el("article", "message assistant");
    this.root.setAttribute("aria-label", "Assistant");
    this.partsEl = el("div", "parts");
    this.notices = el("div", "notices");
    this.meta = el("div", "meta");
    this.actions = el("div", "actions");
    this.root.append(this.partsEl, this.notices, this.meta, this.actions);
    els.messages.append(this.root);
    this.parts = new Map();
    this.lastSeq = 0;
    this.events = []; // every event applied, to rebuild this view (render())
    this.usage = null;
    this.ended = false;
    this.startedAt = null; // performance.now() of the send, for time to first token
    this.firstDeltaAt = null;
    this.streamId = null;
    this.messageId = null;
  }

  setStreaming(on) {
    this.root.classList.toggle("streaming", on);
    if (on) this.actions.replaceChildren();
  }

  textPart(part, kind) {
    let entry = this.parts.get(part);
    if (!entry) {
      if (kind === "reasoning") {
        const details = el("details", "reasoning");
        const body = el("div", "reasoning-text");
        details.append(el("summary", null, "Reasoning"), body);
        entry = { kind, node: details, text: body.appendChild(document.createTextNode("")) };
      } else {
        entry = { kind, node: el("div", "text"), raw: "" };
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
      const result = el("pre", "tool-result");
      head.append(el("span", "tool-icon", "⚙"), name, badge);
      card.append(head, args, result);
      entry = { kind: "tool", node: card, name, badge, args, result, text: "", id: e.tool_call_id };
      this.parts.set(part, entry);
      this.place(part, card);
    }
    if (e.name) entry.name.textContent = e.name;
    if (e.tool_call_id) entry.id = e.tool_call_id;
    entry.badge.textContent = e.provider_executed ? "run by the provider" : "tool call";
    return entry;
  }

  /** A server-side tool's result (agent loop) on its call's card; red when it failed. */
  toolResult(e) {
    const entry = [...this.parts.values()].find((p) => p.kind === "tool" && p.id === e.tool_call_id)
      || this.toolCard(e.part, e);
    const output = typeof e.output === "string" ? e.output : JSON.stringify(e.output, null, 2);
    entry.result.textContent = output ?? "";
    entry.node.classList.toggle("failed", Boolean(e.is_error));
  }

  /** Apply one event; false if it is not the next one (a duplicate from the other channel,
   * or ahead of it: the channel that is behind delivers it in order). */
  apply(e) {
    if (typeof e.seq === "number") {
      if (e.seq !== this.lastSeq + 1) return false;
      this.lastSeq = e.seq;
      this.events.push(e);
    }
    switch (e.type) {
      case "start":
        this.model = e.model;
        this.messageId = e.message_id;
        this.root.dataset.id = e.message_id;
        this.startedAt ??= performance.now();
        break;
      case "text-delta":
      case "reasoning-delta": {
        this.firstDeltaAt ??= performance.now();
        const entry = this.textPart(e.part, e.type === "text-delta" ? "text" : "reasoning");
        if (entry.kind === "text") {
          entry.raw += e.delta;
          scheduleRender(entry);
        } else {
          entry.text.appendData(e.delta);
        }
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
      case "tool-call":
        this.showToolCall(this.toolCard(e.part, e), e);
        break;
      case "tool-result":
        this.toolResult(e);
        break;
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
    return true;
  }

  showToolCall(entry, e) {
    entry.args.textContent = e.invalid || e.arguments == null
      ? (e.arguments_text ?? "")
      : JSON.stringify(e.arguments, null, 2);
    entry.node.classList.toggle("invalid", Boolean(e.invalid));
    if (e.invalid) entry.badge.textContent = "invalid arguments";
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
    this.notices.append(node);
    return node;
  }

  end() {
    this.ended = true;
    this.setStreaming(false);
    for (const entry of this.parts.values()) if (entry.kind === "text") renderMarkdown(entry.node, entry.raw);
    this.actions.replaceChildren(
      action("regenerate", "Regenerate", "Regenerate this answer", () => regenerate(this)),
      action("copy-answer", "Copy", "Copy this answer", () => {
        const text = [...this.parts.values()].filter((p) => p.kind === "text").map((p) => p.raw).join("\n\n");
        navigator.clipboard.writeText(text).catch(() => {});
      }),
    );
  }

  /** The one stats line: model, time to first token, tokens/s, tokens, cost when known. */
  finish(reason, usage) {
    this.end();
    const bits = [];
    if (this.model) bits.push(this.model);
    if (reason && reason !== "stop") bits.push(`finished: ${reason}`);
    if (this.startedAt !== null && this.firstDeltaAt !== null) {
      bits.push(`${((this.firstDeltaAt - this.startedAt) / 1000).toFixed(2)} s to first token`);
      const seconds = (performance.now() - this.firstDeltaAt) / 1000;
      if (usage?.output_tokens && seconds > 0.05) bits.push(`${(usage.output_tokens / seconds).toFixed(1)} tokens/s`);
    }
    if (usage) {
      const t = [`${usage.input_tokens ?? 0} in`, `${usage.output_tokens ?? 0} out`];
      if (usage.reasoning_tokens) t.push(`${usage.reasoning_tokens} reasoning`);
      if (usage.cached_input_tokens) t.push(`${usage.cached_input_tokens} cached`);
      bits.push(`tokens: ${t.join(", ")}`);
      if (typeof usage.cost === "number") bits.push(`$${usage.cost < 0.01 ? usage.cost.toPrecision(2) : usage.cost.toFixed(2)}`);
    }
    this.meta.textContent = bits.join(" · ");
    if (reason === "length") this.notice("warning", "The answer was cut off at the token limit.");
    if (reason === "content_filter") this.notice("warning", "The provider's content filter stopped the answer.");
  }

  fail(message, code, { retryAfter = null, retry = null } = {}) {
    this.end();
    const node = this.notice("error", `Error${code ? ` (${code})` : ""}: ${message || "the generation failed"}`);
    const again = button("retry", "Retry", "Retry", () => (retry ? retry() : regenerate(this)));
    node.append(" ", again);
    if (retryAfter) {
      again.disabled = true;
      let left = Math.ceil(retryAfter);
      again.textContent = `Retry in ${left} s`;
      const tick = setInterval(() => {
        left -= 1;
        if (left > 0) { again.textContent = `Retry in ${left} s`; return; }
        clearInterval(tick);
        again.disabled = false;
        again.textContent = "Retry";
      }, 1000);
    }
  }

  cancelled(reason) {
    this.end();
    const why = { user: "Stopped.", superseded: "Stopped: a newer message replaced it.",
      abandoned: "Stopped: nobody was reading.", deleted: "Stopped.", shutdown: "Stopped: the server restarted." }[reason];
    this.notice("cancelled", why || `Stopped (${reason}).`);
  }

  /** Render a stored message (GET /v1/conversations/{id}). */
  renderStored(m) {
    this.messageId = m.id;
    this.root.dataset.id = m.id;
    (m.parts || []).forEach((p, i) => {
      if (p.type === "text") this.textPart(i, "text").raw = p.text || "";
      else if (p.type === "reasoning") this.textPart(i, "reasoning").text.appendData(p.text || "");
      else if (p.type === "tool-call") this.showToolCall(this.toolCard(i, p), p);
      else if (p.type === "tool-result") this.toolResult({ ...p, part: i });
      else if (p.type === "source") this.addSource(i, p.url, p.title);
    });
    this.model = m.model;
    if (m.status === "completed") this.finish(m.finish_reason, m.usage);
    else if (m.status === "failed") this.fail(m.error?.message, m.error?.code);
    else if (m.status === "cancelled") this.cancelled("user");
    else this.end(); // still "streaming" with no stream to follow: what the store has
  }
}

// ---------------------------------------------------------------- streaming

const busy = () => state.sending || [...state.views.values()].some((v) => !v.ended);

function updateBusy() {
  const on = busy();
  els.send.hidden = on;
  els.stop.hidden = !on;
  if (!on) els.stop.disabled = false;
  els.messages.setAttribute("aria-busy", String(on));
}

/** An event of one of the open conversation's streams, from follow() or the Pusher channel. */
function onStreamEvent(event) {
  const view = state.views.get(event.stream_id);
  if (!view) {
    const heard = state.orphans.get(event.stream_id) || [];
    heard.push(event);
    state.orphans.set(event.stream_id, heard);
    if (event.type === "start" && !state.sending) syncConversation(); // sent from elsewhere
    return;
  }
  if (!view.apply(event)) return;
  if (isTerminal(event)) {
    if (!busy()) {
      setStatus(event.type === "finish" ? "" : event.type === "error" ? "The answer failed." : "Stopped.");
      refreshConversations();
    }
  } else if (event.type !== "start" && els.status.textContent !== "Generating…") {
    setStatus("Generating…");
  }
  updateBusy();
  scrollToBottom();
}

/** Bind a view to its stream: replay what was heard before, follow over HTTP unless Pusher does. */
function attach(streamId, view) {
  view.streamId = streamId;
  view.setStreaming(true);
  state.views.set(streamId, view);
  const heard = (state.orphans.get(streamId) || []).sort((a, b) => a.seq - b.seq);
  state.orphans.delete(streamId);
  for (const event of heard) view.apply(event);
  updateBusy();
  if (view.ended) return;
  setStatus("Generating…");
  // Over HTTP from what was heard; the channel's events arrive too, and whichever is first wins.
  follow(streamId, view);
}

function follow(streamId, view) {
  if (state.following.has(streamId)) return;
  const controller = new AbortController();
  state.following.set(streamId, controller);
  const epoch = state.epoch;
  client.follow(streamId, {
    after: view.lastSeq,
    signal: controller.signal,
    onEvent: onStreamEvent,
    onRetry: () => { if (epoch === state.epoch && !view.ended) setStatus("Connection lost; reconnecting…"); },
  }).catch((error) => {
    if (error?.name === "AbortError" || epoch !== state.epoch || view.ended) return;
    // 404/410: the live stream is gone; the stored message is the truth now.
    setStatus("The live stream is gone; showing the saved message.");
    syncConversation();
  }).finally(() => {
    if (state.following.get(streamId) === controller) state.following.delete(streamId);
  });
}

function stopFollowing() {
  for (const controller of state.following.values()) controller.abort();
  state.following.clear();
  state.views.clear();
  state.orphans.clear();
}

/**
 * Send `text` as a new user message (or, with `fromMessageId`, instead of that message and
 * everything after it; `text` null = regenerate the answer to what is left).
 */
async function send(text, { fromMessageId = null, userEl = null } = {}) {
  const user = text === null ? null : userEl || addUserMessage(text);
  const view = new AssistantView();
  view.startedAt = performance.now();
  view.setStreaming(true);
  state.sending = true;
  state.stopWanted = false;
  updateBusy();
  state.stick = true;
  scrollToBottom(true);
  const epoch = state.epoch;
  let started;
  try {
    started = await client.start({
      model: els.model.value || undefined,
      messages: text === null ? [] : [{ role: "user", content: text }],
      conversationId: state.conversationId,
      source: "page",
      fromMessageId,
      tools: pageTools(),
    });
  } catch (error) {
    state.sending = false;
    if (epoch !== state.epoch) return;
    user?.classList.add("unsent");
    view.fail(errorMessage(error), error.status === 429 ? "rate limited" : null, {
      retryAfter: error.retryAfter,
      retry: () => {
        view.root.remove();
        user?.remove();
        send(text, { fromMessageId });
      },
    });
    updateBusy();
    setStatus("");
    return;
  }
  state.sending = false;
  if (epoch !== state.epoch) return;
  if (!state.conversationId) {
    setConversation(started.conversation_id, { push: true });
    subscribe(started.conversation_id);
  }
  view.messageId = started.message_id;
  view.root.dataset.id = started.message_id;
  attach(started.stream_id, view);
  refreshConversations();
  if (state.stopWanted) stop();
  // Events of streams started elsewhere meanwhile: render them now.
  if ([...state.orphans.values()].some((events) => events.some((e) => e.type === "start"))) syncConversation();
}

async function stop() {
  const running = [...state.views.values()].filter((v) => !v.ended);
  if (!running.length && !state.sending) return;
  els.stop.disabled = true;
  setStatus("Stopping…");
  state.stopWanted = !running.length; // no stream id yet: send() stops it once it has one
  for (const view of running) {
    try {
      await client.stop(view.streamId);
    } catch (error) {
      els.stop.disabled = false;
      setStatus(`Could not stop: ${errorMessage(error)}`);
    }
  }
}

/** Drop `element` and every message after it from the page. */
function removeFrom(element) {
  let node = element;
  while (node) {
    const next = node.nextElementSibling;
    if (node !== els.empty) {
      for (const [id, view] of state.views) {
        if (view.root === node) { state.views.delete(id); state.following.get(id)?.abort(); }
      }
      node.remove();
    }
    node = next;
  }
}

async function regenerate(view) {
  if (state.sending) return;
  const id = view.messageId || (await messageIds(), view.root.dataset.id);
  if (!id) return;
  removeFrom(view.root);
  send(null, { fromMessageId: id });
}

/** Ids of user messages sent from this page are learnt from the store when needed. */
async function messageIds() {
  if (!state.conversationId) return;
  const conversation = await client.getConversation(state.conversationId);
  const nodes = [...els.messages.querySelectorAll(".message:not(.unsent)")];
  conversation.messages.filter((m) => m.role === "user" || m.role === "assistant").forEach((m, i) => {
    if (nodes[i] && !nodes[i].dataset.id) nodes[i].dataset.id = m.id;
  });
}

function startEdit(item) {
  if (item.querySelector(".edit-box")) return;
  const bubble = item.querySelector(".bubble");
  const box = el("div", "edit-box");
  const input = el("textarea", "edit-input");
  input.value = bubble.textContent;
  input.setAttribute("aria-label", "Edit message");
  const save = button("save", "Send", "Send the edited message", () => submitEdit(item, input.value));
  const cancel = button("cancel", "Cancel", "Cancel editing", () => { box.remove(); bubble.hidden = false; });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); save.click(); }
    if (event.key === "Escape") { event.stopPropagation(); cancel.click(); }
  });
  box.append(input, el("div", "edit-actions"));
  box.lastChild.append(cancel, save);
  bubble.hidden = true;
  item.insertBefore(box, bubble.nextSibling);
  input.focus();
}

async function submitEdit(item, text) {
  text = text.trim();
  if (!text || state.sending) return;
  if (!item.dataset.id) await messageIds();
  const id = item.dataset.id;
  if (!id) { setStatus("This message was never saved: send it again."); return; }
  removeFrom(item);
  send(text, { fromMessageId: id }); // supersedes a running answer
}

// ---------------------------------------------------------------- Pusher: every tab live

function pusher() {
  if (state.pusher === null && typeof globalThis.Pusher === "function") {
    const secure = location.protocol === "https:";
    const port = Number(location.port) || (secure ? 443 : 80);
    state.pusher = new globalThis.Pusher(PUSHER_KEY, {
      cluster: "tokenwire", wsHost: location.hostname, wsPort: port, wssPort: port, forceTLS: secure,
      enabledTransports: ["ws", "wss"], disableStats: true,
      channelAuthorization: { endpoint: `${BASE}/broadcasting/auth`, transport: "ajax", headers: authHeaders() },
    });
  }
  return state.pusher;
}

function subscribe(conversationId) {
  unsubscribe();
  const p = pusher();
  if (!p || !conversationId) return;
  const name = `private-conversation.${conversationId}`;
  const channel = p.subscribe(name);
  const follower = followConversation(channel, {
    baseUrl: BASE, headers: authHeaders(), onEvent: onStreamEvent, onError: () => {},
  });
  state.channel = { name, follower };
}

function unsubscribe() {
  if (!state.channel) return;
  state.channel.follower.stop();
  state.pusher?.unsubscribe(state.channel.name);
  state.channel = null;
}

// ---------------------------------------------------------------- conversations

function setConversation(id, { push = false } = {}) {
  state.conversationId = id;
  const target = id ? `?c=${encodeURIComponent(id)}` : location.pathname;
  if (push && `${location.search}` !== (id ? target : "")) history.pushState({ c: id }, "", target);
  for (const li of els.list.querySelectorAll(".conversation")) li.classList.toggle("active", li.dataset.id === id);
}

const DAY = 86_400_000;

function groupOf(updatedAt) {
  const midnight = new Date();
  midnight.setHours(0, 0, 0, 0);
  const t = updatedAt * 1000;
  if (t >= midnight.getTime()) return "Today";
  if (t >= midnight.getTime() - DAY) return "Yesterday";
  if (t >= midnight.getTime() - 7 * DAY) return "Previous 7 days";
  return "Older";
}

let listRequest = 0;

async function refreshConversations() {
  const mine = ++listRequest;
  let data;
  try {
    data = (await client.listConversations({
      source: els.showAll.checked ? undefined : "page",
      q: els.search.value.trim() || undefined,
      limit: 100,
    })).data || [];
  } catch { return; }
  if (mine !== listRequest) return; // a newer search answered first
  const groups = new Map();
  for (const c of data) {
    const name = groupOf(c.updated_at);
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push(c);
  }
  const sections = [...groups].map(([name, items]) => {
    const section = el("section", "group");
    const heading = el("h2", "group-title", name);
    const list = el("ul", "group-list");
    list.append(...items.map(conversationItem));
    section.append(heading, list);
    return section;
  });
  if (!sections.length) sections.push(el("p", "no-conversations", els.search.value.trim() ? "No matches." : "No conversations yet."));
  els.list.replaceChildren(...sections);
  const current = data.find((c) => c.id === state.conversationId);
  if (current?.title) els.title.textContent = current.title;
}

function conversationItem(c) {
  const title = c.title || "Untitled";
  const li = el("li", "conversation");
  li.dataset.id = c.id;
  li.classList.toggle("active", c.id === state.conversationId);
  const open = el("a", "conversation-open", title);
  open.href = `?c=${encodeURIComponent(c.id)}`;
  open.title = title;
  if (c.source && c.source !== "page") open.append(el("span", "badge", c.source));
  open.addEventListener("click", (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return; // a new tab
    event.preventDefault();
    setConversation(c.id, { push: true });
    openConversation(c.id);
    closeSidebarOnMobile();
  });
  const rename = button("conversation-rename", "✎", `Rename ${title}`, () => startRename(li, c));
  const del = button("conversation-delete", "×", `Delete ${title}`, () => confirmDelete(li, c));
  li.append(open, rename, del);
  return li;
}

function startRename(li, c) {
  const input = el("input", "rename-input");
  input.value = c.title || "";
  input.setAttribute("aria-label", "New title");
  input.maxLength = 200;
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== c.title) {
      try {
        await client.renameConversation(c.id, title);
      } catch (error) {
        setStatus(`Could not rename: ${errorMessage(error)}`);
      }
    }
    refreshConversations();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

function confirmDelete(li, c) {
  const title = c.title || "this conversation";
  const keep = li.cloneNode(false);
  const question = el("span", "confirm-text", `Delete “${title}”?`);
  const yes = button("confirm-delete", "Delete", `Delete ${title} for good`, async () => {
    try {
      await client.deleteConversation(c.id);
    } catch (error) {
      setStatus(`Could not delete: ${errorMessage(error)}`);
    }
    if (c.id === state.conversationId) newChat({ push: true });
    refreshConversations();
  });
  const no = button("cancel-delete", "Cancel", "Keep it", () => refreshConversations());
  keep.classList.add("confirming");
  keep.append(question, yes, no);
  li.replaceWith(keep);
  yes.focus();
}

function clearMessages() {
  state.epoch += 1;
  stopFollowing();
  els.messages.replaceChildren(els.empty);
  els.empty.hidden = false;
  setStatus("");
  updateBusy();
}

function newChat({ push = false } = {}) {
  unsubscribe();
  clearMessages();
  setConversation(null, { push });
  els.title.textContent = "New chat";
  els.prompt.focus();
}

/** Show a conversation: its stored messages, and its running answer followed live. */
async function openConversation(id) {
  const epoch = ++state.epoch;
  let conversation;
  try {
    conversation = await client.getConversation(id);
  } catch (error) {
    if (epoch !== state.epoch) return;
    setStatus(`Could not open the conversation: ${errorMessage(error)}`);
    return;
  }
  if (epoch !== state.epoch) return;
  if (state.channel?.name !== `private-conversation.${id}`) {
    state.orphans.clear();
    subscribe(id);
  }
  render(conversation);
  scrollToBottom(true);
}

/** Rebuild the page from a stored conversation, keeping what was heard live. */
function render(conversation) {
  const orphans = state.orphans;
  state.orphans = new Map();
  for (const controller of state.following.values()) controller.abort();
  state.following.clear();
  const old = state.views;
  state.views = new Map();
  els.messages.replaceChildren(els.empty);
  els.empty.hidden = true;
  setConversation(conversation.id);
  els.title.textContent = conversation.title || "Untitled";
  for (const m of conversation.messages || []) {
    if (m.role === "user") { addUserMessage(textOf(m.parts), m.id); continue; }
    if (m.role !== "assistant") continue;
    const view = new AssistantView();
    if (m.stream_id && (m.status === "streaming" || m.status === "pending")) {
      view.messageId = m.id;
      view.root.dataset.id = m.id;
      const before = old.get(m.stream_id);
      if (before) { view.startedAt = before.startedAt; }
      // what was heard of it so far: events applied to the old view, then orphans
      state.orphans.set(m.stream_id, [...(before?.events || []), ...(orphans.get(m.stream_id) || [])]);
      attach(m.stream_id, view);
    } else {
      view.renderStored(m);
    }
  }
  if (!(conversation.messages || []).length) els.empty.hidden = false;
  updateBusy();
  if (!busy()) setStatus("");
  flushRender();
}

/** Refetch the open conversation (a message came from another tab); one at a time. */
function syncConversation() {
  if (state.syncing) { state.resync = true; return; }
  const id = state.conversationId;
  if (!id) return;
  const epoch = state.epoch;
  state.syncing = client.getConversation(id).then((conversation) => {
    if (epoch === state.epoch && state.conversationId === id) render(conversation);
  }).catch(() => {}).finally(() => {
    state.syncing = null;
    if (state.resync) { state.resync = false; syncConversation(); }
    refreshConversations();
  });
}

// ---------------------------------------------------------------- models, composer

async function loadModels() {
  try {
    const body = await client.models();
    const wanted = localStorage.getItem(MODEL_KEY) || body.default;
    els.model.replaceChildren(...(body.data || []).map((m) => {
      const option = el("option", null, m.id);
      option.value = m.id;
      return option;
    }));
    if ([...els.model.options].some((o) => o.value === wanted)) els.model.value = wanted;
  } catch (error) {
    setStatus(`Could not load models: ${errorMessage(error)}`);
  }
}

function autoGrow() {
  els.prompt.style.height = "auto";
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, 240)}px`;
}

function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  els.toggle.setAttribute("aria-expanded", String(open));
  els.backdrop.hidden = !open;
}

function closeSidebarOnMobile() {
  if (window.matchMedia("(max-width: 760px)").matches) setSidebar(false);
}

function fromLocation() {
  const id = new URLSearchParams(location.search).get("c");
  if (id) openConversation(id);
  else newChat();
}

function wire() {
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = els.prompt.value.trim();
    if (!text || busy()) return; // one answer at a time (Esc or Stop first)
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
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && busy()) { event.preventDefault(); stop(); }
    else if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) setSidebar(false);
  });
  els.prompt.addEventListener("input", autoGrow);
  els.stop.addEventListener("click", stop);
  els.newChat.addEventListener("click", () => { newChat({ push: true }); closeSidebarOnMobile(); });
  els.toggle.addEventListener("click", () => setSidebar(!document.body.classList.contains("sidebar-open")));
  els.backdrop.addEventListener("click", () => setSidebar(false));
  els.model.addEventListener("change", () => localStorage.setItem(MODEL_KEY, els.model.value));
  els.messages.addEventListener("scroll", () => { state.stick = nearBottom(); });
  let searchTimer = 0;
  els.search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(refreshConversations, 200);
  });
  els.showAll.checked = localStorage.getItem(SHOW_ALL_KEY) === "1";
  els.showAll.addEventListener("change", () => {
    localStorage.setItem(SHOW_ALL_KEY, els.showAll.checked ? "1" : "0");
    refreshConversations();
  });
  window.addEventListener("popstate", fromLocation);
}

async function main() {
  wire();
  fromLocation();
  await Promise.all([loadModels(), refreshConversations()]);
  els.prompt.focus();
}

main();
