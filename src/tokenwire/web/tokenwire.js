// tokenwire.js: a client for tokenwire's native HTTP API (DESIGN §3, docs/api.md).
// One vanilla ES module, no dependencies, no build step; browsers and Node >= 20 (global
// fetch, ReadableStream, TextDecoder, AbortController). The server serves it at /tokenwire.js;
// docs/frontend.md has React, Vue and plain-JS examples.
//
//   import { TokenwireClient } from "/tokenwire.js";
//   const tw = new TokenwireClient({ baseUrl: "", headers: { Authorization: "Bearer ..." } });
//   const { stream_id, conversation_id } = await tw.start({ messages: [{ role: "user", content: "Hi" }] });
//   const last = await tw.follow(stream_id, { onEvent: (e) => console.log(e.type, e.delta) });
//   // last: the terminal event, "finish" | "error" | "cancelled"
//
// follow() reads the stream's Server-Sent Events with fetch (so that it can send headers, which
// EventSource cannot). When the connection drops, or the response ends before the terminal
// event, it reconnects with `?after=<last seq>` and `Last-Event-ID` after a backoff (doubled per
// failure, 250 ms to 10 s); events are de-duplicated by `seq`, so onEvent sees every event exactly
// once, in order. A connection that is silent for longer than `idleMs` (the server sends a
// heartbeat comment every 10 s) counts as dropped. HTTP 4xx answers other than 408 and 429 (404
// unknown or not yours, 410 expired) are not retried: follow() rejects with a TokenwireError.

const TERMINAL = new Set(["finish", "error", "cancelled"]);
const EOL = /\r\n|\r|\n/g;

/** An HTTP error answer of the API: `status`, `detail` (the body's detail), `retryAfter` (s). */
export class TokenwireError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, detail?: unknown, retryAfter?: number | null}} [info]
   */
  constructor(message, { status = 0, detail = null, retryAfter = null } = {}) {
    super(message);
    this.name = "TokenwireError";
    /** HTTP status; 0 for a network error */
    this.status = status;
    /** the JSON body's `detail` (a string, or FastAPI's list of field errors) */
    this.detail = detail;
    /** seconds to wait before trying again (from `Retry-After`), or null */
    this.retryAfter = retryAfter;
  }
}

/** Whether an event ends its stream. */
export const isTerminal = (event) => TERMINAL.has(event?.type);

/**
 * @typedef {object} StreamEvent
 * @property {string} type "start", "text-delta", ... (DESIGN §2); terminal: finish, error, cancelled
 * @property {number} seq 1, 2, 3, ... within its stream
 */

export class TokenwireClient {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] where the API is, without a trailing slash ("" = this origin)
   * @param {Record<string, string> | (() => Record<string, string>)} [options.headers] sent with
   *   every request (e.g. Authorization); a function is called for each request
   * @param {typeof fetch} [options.fetch] the fetch to use; default globalThis.fetch
   */
  constructor({ baseUrl = "", headers = {}, fetch: fetchImpl } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this._headers = headers;
    this._fetch = fetchImpl ?? ((...args) => globalThis.fetch(...args));
  }

  /** The absolute or origin-relative URL of an API path ("v1/models"). */
  url(path) {
    return `${this.baseUrl}/${path.replace(/^\/+/, "")}`;
  }

  headers(extra = {}) {
    const base = typeof this._headers === "function" ? this._headers() : this._headers;
    return { ...base, ...extra };
  }

  /**
   * One JSON request. Resolves with the parsed body (null for 204).
   * @throws {TokenwireError} on an HTTP error answer (status, detail, retryAfter) or a network error
   */
  async request(method, path, { body, signal, query } = {}) {
    let target = this.url(path);
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) {
        if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
      }
      if ([...params].length) target += `?${params}`;
    }
    const headers = this.headers({ Accept: "application/json" });
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await this._fetch(target, {
        method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      if (error?.name === "AbortError") throw error;
      throw new TokenwireError(`could not reach the server (${error?.message ?? error})`);
    }
    if (response.status === 204) return null;
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    if (!response.ok) throw httpError(response, data);
    return data;
  }

  /**
   * Start a generation (POST /v1/chat).
   * @param {object} request
   * @param {{role: "user" | "assistant" | "system", content: string}[]} request.messages the new
   *   messages (the conversation's stored history comes first on the server); may be empty with
   *   `fromMessageId` (regenerate)
   * @param {string} [request.model] "provider:model"; default: the server's
   * @param {string} [request.conversationId] continue this conversation; none = a new one
   * @param {string} [request.system] a system prompt
   * @param {object} [request.params] provider parameters (temperature, max_tokens, ...)
   * @param {string} [request.source] the surface starting a new conversation ("page", "api" ...)
   * @param {string} [request.fromMessageId] delete this message and every later one first
   *   (edit-and-resend, regenerate); a running answer is superseded
   * @param {string[]} [request.tools] names of server-side tools the model may call (docs/tools.md)
   * @param {number} [request.maxSteps] most model calls of the agent loop (1–50; default 5)
   * @param {AbortSignal} [request.signal]
   * @returns {Promise<{stream_id: string, message_id: string, conversation_id: string,
   *   events_url: string, cancel_url: string}>}
   */
  start({ model, messages = [], conversationId, system, params, source, fromMessageId, tools, maxSteps, signal } = {}) {
    const body = { messages };
    if (tools && tools.length) body.tools = tools;
    if (maxSteps) body.max_steps = maxSteps;
    if (model) body.model = model;
    if (conversationId) body.conversation_id = conversationId;
    if (system) body.system = system;
    if (params) body.params = params;
    if (source) body.source = source;
    if (fromMessageId) body.from_message_id = fromMessageId;
    return this.request("POST", "v1/chat", { body, signal });
  }

  /**
   * Follow a stream to its end: replay events with `seq > after`, then live ones.
   * @param {string} streamId
   * @param {object} [options]
   * @param {number} [options.after] the last seq already seen (0 = from the start)
   * @param {(event: StreamEvent) => void} [options.onEvent] every event once, in seq order
   * @param {(info: {attempt: number, delayMs: number, error: Error}) => void} [options.onRetry]
   *   a connection dropped or failed; the next attempt is in delayMs
   * @param {AbortSignal} [options.signal] stop following (rejects with an AbortError)
   * @param {number} [options.idleMs] silence that counts as a dropped connection; default 30000
   * @param {number} [options.retryMs] first backoff, doubled per failure up to maxRetryMs
   * @param {number} [options.maxRetryMs] default 10000
   * @returns {Promise<StreamEvent>} the terminal event
   * @throws {TokenwireError} 404 (unknown, or not yours), 410 (expired: read the conversation), ...
   */
  async follow(streamId, { after = 0, onEvent = () => {}, onRetry = () => {}, signal,
    idleMs = 30_000, retryMs = 250, maxRetryMs = 10_000 } = {}) {
    let last = after;
    let failures = 0;
    for (;;) {
      throwIfAborted(signal);
      const before = last;
      let terminal = null;
      let failure;
      try {
        terminal = await this._readOnce(streamId, last, signal, idleMs, (event) => {
          if (!Number.isInteger(event.seq) || event.seq <= last) return false; // seen already
          last = event.seq;
          event.stream_id ??= streamId;
          onEvent(event);
          return isTerminal(event);
        });
        if (terminal) return terminal;
        failure = new TokenwireError("the stream ended before its terminal event");
      } catch (error) {
        if (signal?.aborted) throw abortError(signal);
        if (error instanceof TokenwireError && !retryable(error.status)) throw error;
        failure = error;
      }
      if (last > before) failures = 0;
      const wait = Math.max(
        (failure?.retryAfter ?? 0) * 1000,
        Math.min(retryMs * 2 ** failures, maxRetryMs) * (0.8 + 0.4 * Math.random()),
      );
      failures += 1;
      onRetry({ attempt: failures, delayMs: wait, error: failure });
      await sleep(wait, signal);
    }
  }

  /** One GET .../events?after=N; returns the terminal event, or null when the body ended. */
  async _readOnce(streamId, after, signal, idleMs, accept) {
    const controller = new AbortController();
    const stop = () => controller.abort(signal?.reason);
    signal?.addEventListener("abort", stop, { once: true });
    let idle = null;
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(new TokenwireError("no data or heartbeat in time")), idleMs);
    };
    try {
      touch();
      const headers = this.headers({ Accept: "text/event-stream" });
      if (after > 0) headers["Last-Event-ID"] = String(after);
      let response;
      try {
        response = await this._fetch(this.url(`v1/streams/${encodeURIComponent(streamId)}/events?after=${after}`),
          { headers, signal: controller.signal, cache: "no-store" });
      } catch (error) {
        throw controller.signal.reason instanceof TokenwireError ? controller.signal.reason
          : new TokenwireError(`could not reach the server (${error?.message ?? error})`);
      }
      if (!response.ok || !response.body) {
        let data = null;
        try { data = await response.json(); } catch { data = null; }
        throw httpError(response, data);
      }
      const reader = response.body.getReader();
      const decoder = new SSEDecoder();
      try {
        for (;;) {
          let chunk;
          try {
            chunk = await reader.read();
          } catch (error) {
            throw controller.signal.reason instanceof TokenwireError ? controller.signal.reason
              : new TokenwireError(`the connection dropped (${error?.message ?? error})`);
          }
          touch();
          for (const frame of chunk.done ? decoder.flush() : decoder.decode(chunk.value)) {
            const event = parseJson(frame.data);
            if (event && typeof event === "object") {
              event.type ??= frame.event;
              if (accept(event)) return event;
            }
          }
          if (chunk.done) return null;
        }
      } finally {
        reader.cancel().catch(() => {});
      }
    } finally {
      clearTimeout(idle);
      signal?.removeEventListener("abort", stop);
    }
  }

  /** Stop a stream (POST /v1/streams/{id}/cancel); idempotent. Readers receive `cancelled`. */
  stop(streamId) {
    return this.request("POST", `v1/streams/${encodeURIComponent(streamId)}/cancel`);
  }

  /**
   * The message so far (GET /v1/streams/{id}): {status, text, reasoning, tool_calls, usage,
   * finish_reason, error, last_seq}; with `after`, {events, last_seq, status} waiting up to
   * `wait` seconds for events with seq > after (long poll).
   */
  snapshot(streamId, { after, wait, signal } = {}) {
    return this.request("GET", `v1/streams/${encodeURIComponent(streamId)}`, { query: { after, wait }, signal });
  }

  /** The configured models: {data: [{id, owned_by}], default}. */
  models({ signal } = {}) {
    return this.request("GET", "v1/models", { signal });
  }

  /**
   * Conversations, most recently updated first: {data: [{id, title, source, created_at,
   * updated_at}]}. `source` keeps those started from one surface ("page"), `q` searches titles.
   */
  listConversations({ source, q, limit, before, signal } = {}) {
    return this.request("GET", "v1/conversations", { query: { source, q, limit, before }, signal });
  }

  /** One conversation with its messages (a running answer's message has `stream_id`). */
  getConversation(id, { signal } = {}) {
    return this.request("GET", `v1/conversations/${encodeURIComponent(id)}`, { signal });
  }

  /** Rename a conversation (PATCH); resolves with the conversation. */
  renameConversation(id, title) {
    return this.request("PATCH", `v1/conversations/${encodeURIComponent(id)}`, { body: { title } });
  }

  /** Delete a conversation and its messages (a running answer is cancelled). */
  deleteConversation(id) {
    return this.request("DELETE", `v1/conversations/${encodeURIComponent(id)}`);
  }
}

/**
 * Incremental Server-Sent Events parser (HTML Living Standard, "Server-sent events",
 * §9.2.6 "Interpreting an event stream"): bytes in, complete events out. Survives any split
 * of its input, a multi-byte UTF-8 character or a CR | LF across two chunks included; lines
 * end with CR, LF or CRLF; comments and unknown fields are ignored.
 */
export class SSEDecoder {
  #text = new TextDecoder(); // UTF-8; drops a leading BOM as the standard says
  #line = ""; // the unfinished line
  #afterCR = false; // the last chunk ended with CR: a LF opening the next one is the same EOL
  #data = [];
  #event = "";
  #id = "";

  /**
   * @param {Uint8Array} bytes the next chunk of the response body
   * @returns {{id: string, event: string, data: string}[]} the events it completed
   */
  decode(bytes) {
    return this.#lines(this.#text.decode(bytes, { stream: true }));
  }

  /** The end of the body: an event not ended by a blank line is dropped, per the standard. */
  flush() {
    const events = this.#lines(this.#text.decode());
    this.#line = "";
    this.#data = [];
    return events;
  }

  #lines(text) {
    const events = [];
    if (this.#afterCR && text) {
      this.#afterCR = false;
      if (text[0] === "\n") text = text.slice(1);
    }
    let start = 0;
    for (const eol of text.matchAll(EOL)) {
      this.#field(this.#line + text.slice(start, eol.index), events);
      this.#line = "";
      start = eol.index + eol[0].length;
      if (eol[0] === "\r" && start === text.length) this.#afterCR = true;
    }
    this.#line += text.slice(start);
    return events;
  }

  #field(line, events) {
    if (line === "") {
      if (this.#data.length) events.push({ id: this.#id, event: this.#event || "message", data: this.#data.join("\n") });
      this.#data = [];
      this.#event = "";
      return;
    }
    if (line[0] === ":") return; // a comment (heartbeat)
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (name === "data") this.#data.push(value);
    else if (name === "event") this.#event = value;
    else if (name === "id" && !value.includes("\0")) this.#id = value;
  }
}

function httpError(response, data) {
  const detail = data?.detail ?? data?.error ?? null;
  const header = response.headers.get("Retry-After");
  let retryAfter = null;
  if (header) {
    const seconds = Number(header);
    retryAfter = Number.isFinite(seconds) ? seconds : Math.max(0, (Date.parse(header) - Date.now()) / 1000) || null;
  }
  let message;
  if (typeof detail === "string") message = detail;
  else if (Array.isArray(detail) && detail.length) {
    message = detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ");
  } else if (typeof detail?.message === "string") message = detail.message;
  else message = `HTTP ${response.status} ${response.statusText || ""}`.trim();
  if (response.status === 429 && retryAfter !== null) message += ` (try again in ${Math.ceil(retryAfter)} s)`;
  return new TokenwireError(message, { status: response.status, detail, retryAfter });
}

/** Network errors (0), 408, 429 and 5xx are worth another try; other 4xx are not. */
const retryable = (status) => !status || status === 408 || status === 429 || status >= 500;

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function abortError(signal) {
  const reason = signal?.reason;
  if (reason instanceof Error && reason.name === "AbortError") return reason;
  const error = new Error("aborted");
  error.name = "AbortError";
  error.cause = reason;
  return error;
}

function throwIfAborted(signal) {
  if (signal?.aborted) throw abortError(signal);
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const timer = setTimeout(() => { signal?.removeEventListener("abort", onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(timer); reject(abortError(signal)); };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
