// tokenwire-pusher.js: receive a conversation's streams over Pusher without gaps or duplicates.
// A vanilla ES module; browsers and Node >= 20 (global fetch, TextDecoder). It imports its SSE
// parser from ./tokenwire.js (served beside it): copy both files together.
// The server serves it at /tokenwire-pusher.js (docs/websockets.md, "Receiving streams without gaps").
//
//   import { followConversation } from "/tokenwire-pusher.js";
//   const channel = Echo.private(`conversation.${id}`);   // or pusher.subscribe(`private-conversation.${id}`)
//   const follower = followConversation(channel, {
//     baseUrl: "",                                  // where tokenwire's HTTP API is ("" = this origin)
//     headers: { Authorization: "Bearer ..." },     // sent with the gap-filling requests
//     onEvent(event) { ... },                       // every event once, in seq order per stream_id
//     onError(error) { ... },                       // optional; error.streamId, error.status (HTTP)
//   });
//   follower.stop();
//
// tokenwire broadcasts every event of a conversation's streams on private-conversation.{id}:
// Pusher event name = event type, data = the event JSON with "stream_id" and "seq" (1, 2, 3, ...
// per stream). Pusher itself neither replays nor numbers anything, so per stream this module
// keeps the last seq delivered:
//   - seq == last + 1: delivered (then any buffered successors);
//   - seq <= last: a duplicate, dropped;
//   - seq > last + 1: a gap (a stream first seen mid-way counts from 0): buffered, and the
//     missing events are read from GET {baseUrl}/v1/streams/{stream_id}/events?after={last}
//     (SSE) until the live channel's events line up again or the stream ends (finish, error,
//     cancelled), then that request is aborted.
// When pusher-js re-subscribes after a reconnection ("pusher:subscription_succeeded"), every
// known stream that has not ended catches up the same way from its last seq: one that ended
// while the client was away sends nothing live that would reveal the gap.
// A stream whose events can no longer be read (404 unknown or not yours, 410 expired) is
// reported to onError and ignored from then on: show the stored message
// (GET /v1/conversations/{id}) instead. Network errors, 429 and 5xx are retried with backoff.
//
// Listening: pusher-js Channel.bind_global and bind("pusher:subscription_succeeded"); for a
// laravel-echo channel, on its pusher-js channel (`channel.subscription`), not Echo's
// listenToAll()/subscribed(), which rename events and wrap the callback so that stop() could
// not remove just ours.

import { SSEDecoder } from "./tokenwire.js"; // the one SSE parser, shared with the HTTP client

export { SSEDecoder };

const TERMINAL = new Set(["finish", "error", "cancelled"]);
const MAX_RETRY_MS = 30_000;

/**
 * @typedef {object} StreamEvent
 * @property {string} stream_id
 * @property {number} seq 1, 2, 3, ... within its stream
 * @property {string} type "start", "text-delta", ..., terminal "finish" | "error" | "cancelled"
 */

/**
 * @typedef {object} FollowOptions
 * @property {(event: StreamEvent) => void} onEvent called once per event, in seq order per stream
 * @property {string} [baseUrl] tokenwire's HTTP API, without a trailing slash ("" = this origin)
 * @property {Record<string, string>} [headers] sent with every gap-filling request
 * @property {(error: Error & {streamId?: string, status?: number}) => void} [onError]
 *   a gap-filling request failed (retried unless error.status is a 4xx but 429) or onEvent threw;
 *   default: console.warn
 * @property {number} [retryMs] first delay before retrying a failed request, milliseconds
 *   (doubled per failure, at most 30 s); default 1000
 * @property {typeof fetch} [fetch] the fetch to use; default globalThis.fetch
 */

/**
 * Deliver every event of a conversation's streams exactly once, in order.
 *
 * @param {object} channel a laravel-echo channel (Echo.private(`conversation.${id}`)) or a
 *   pusher-js Channel (pusher.subscribe(`private-conversation.${id}`))
 * @param {FollowOptions} options
 * @returns {{stop(): void}} stop() unbinds from the channel and aborts every request
 */
export function followConversation(channel, options) {
  const pusherChannel = typeof channel?.bind_global === "function" ? channel : channel?.subscription;
  if (typeof pusherChannel?.bind_global !== "function") {
    throw new TypeError("followConversation: expected a pusher-js or laravel-echo channel");
  }
  const { onEvent, baseUrl = "", headers = {}, retryMs = 1000 } = options;
  const onError = options.onError ?? ((error) => console.warn("tokenwire-pusher:", error));
  const report = (error) => {
    try {
      onError(error);
    } catch {} // an onError that throws must not break the channel's dispatch or a catch-up
  };
  const fetchImpl = options.fetch ?? ((...args) => globalThis.fetch(...args));
  /** @type {Map<string, StreamState>} */
  const streams = new Map();
  let stopped = false;

  /**
   * @typedef {object} StreamState
   * @property {string} id
   * @property {number} last seq of the last event delivered (0: none)
   * @property {Map<number, StreamEvent>} pending events received ahead of a gap, by seq
   * @property {boolean} ended a terminal event was delivered, or the stream can't be read
   * @property {boolean} heardLive a live event arrived since the last (re)subscription
   * @property {AbortController | null} catchUp the gap-filling request under way
   */
  function stream(id) {
    let s = streams.get(id);
    if (!s) {
      s = { id, last: 0, pending: new Map(), ended: false, heardLive: false, catchUp: null };
      streams.set(id, s);
    }
    return s;
  }

  /** Nothing left to fetch: the stream ended, or live events follow on from `last`. */
  const caughtUp = (s) => stopped || s.ended || (s.heardLive && s.pending.size === 0);

  function accept(s, event) {
    if (stopped || s.ended || event.seq <= s.last) return; // a duplicate
    if (event.seq > s.last + 1) {
      s.pending.set(event.seq, event);
      return;
    }
    deliver(s, event);
    for (let next; !s.ended && (next = s.pending.get(s.last + 1)); ) {
      s.pending.delete(next.seq);
      deliver(s, next);
    }
  }

  function deliver(s, event) {
    s.last = event.seq;
    if (TERMINAL.has(event.type)) {
      s.ended = true;
      s.pending.clear();
    }
    try {
      onEvent(event);
    } catch (error) {
      report(error);
    }
  }

  function onLive(name, data) {
    if (stopped || name.startsWith("pusher:") || name.startsWith("pusher_internal:")) return;
    const event = typeof data === "string" ? parseJson(data) : data;
    if (typeof event?.stream_id !== "string" || !Number.isInteger(event.seq)) return; // not ours
    const s = stream(event.stream_id);
    s.heardLive = true;
    accept(s, event);
    if (!caughtUp(s)) catchUp(s);
    else s.catchUp?.abort();
  }

  function onSubscribed() {
    for (const s of streams.values()) {
      if (s.ended) continue;
      s.heardLive = false; // until the new subscription's events show where live resumes
      catchUp(s);
    }
  }

  /** Read the stream's missing events over HTTP until caught up; retry what fails. */
  async function catchUp(s) {
    if (s.catchUp || caughtUp(s)) return;
    const controller = (s.catchUp = new AbortController());
    let failures = 0;
    try {
      while (!caughtUp(s) && !controller.signal.aborted) {
        try {
          if (await replay(s, controller.signal)) failures = 0;
        } catch (thrown) {
          if (controller.signal.aborted) break;
          const error = Object.assign(thrown instanceof Error ? thrown : new Error(String(thrown)), { streamId: s.id });
          report(error);
          if (error.status >= 400 && error.status < 500 && error.status !== 429) {
            s.ended = true; // gone for good: nothing more will line up
            s.pending.clear();
            break;
          }
        }
        if (!caughtUp(s)) await delay(Math.min(retryMs * 2 ** failures++, MAX_RETRY_MS), controller.signal);
      }
    } finally {
      controller.abort(); // caught up: stop reading the SSE response
      if (s.catchUp === controller) s.catchUp = null;
    }
  }

  /** One GET .../events?after=last; returns whether it delivered anything. */
  async function replay(s, signal) {
    const before = s.last;
    const url = `${baseUrl}/v1/streams/${encodeURIComponent(s.id)}/events?after=${s.last}`;
    const response = await fetchImpl(url, { headers: { Accept: "text/event-stream", ...headers }, signal });
    if (!response.ok || !response.body) {
      await response.body?.cancel();
      throw Object.assign(new Error(`GET ${url}: HTTP ${response.status}`), { status: response.status });
    }
    const reader = response.body.getReader();
    const decoder = new SSEDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        for (const frame of done ? decoder.flush() : decoder.decode(value)) {
          const event = parseJson(frame.data);
          if (!Number.isInteger(event?.seq)) continue;
          event.stream_id ??= s.id; // SSE data carries it only on "start"
          accept(s, event);
          if (caughtUp(s)) return true;
        }
        if (done) return s.last > before;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  pusherChannel.bind_global(onLive);
  pusherChannel.bind("pusher:subscription_succeeded", onSubscribed);
  return {
    stop() {
      stopped = true;
      pusherChannel.unbind_global(onLive);
      pusherChannel.unbind("pusher:subscription_succeeded", onSubscribed);
      for (const s of streams.values()) s.catchUp?.abort();
    },
  };
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function delay(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
