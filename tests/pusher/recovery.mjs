// Driven by tests/test_pusher_recovery.py: src/tokenwire/web/tokenwire-pusher.js against a real
// tokenwire server. One JSON argument; JSON lines on stdout; exits when stdin closes.
//
// mode "echo" | "pusher": follow private-conversation.<conversation_id> through laravel-echo or
//   pusher-js (connecting to wsPort, the test's proxy). Prints {kind: "state", current} on every
//   connection state change, {kind: "subscribed"} on every (re)subscription, {kind: "live",
//   stream_id, seq, type} for every stream event the channel itself carried, {kind: "event",
//   event} for every event the helper delivered, {kind: "error", message, status}.
// mode "fake": the helper's own logic on a fake channel object, with its gap fills against the
//   real server; prints one {kind: "scenario", name, ...} line per scenario, then {kind: "done"}.
//   Config: stream_id (a finished stream of the conversation), other_stream_id (a second one).

import Echo from "laravel-echo";
import Pusher from "pusher-js";
import { followConversation, SSEDecoder } from "../../src/tokenwire/web/tokenwire-pusher.js";

const config = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const auth = { Authorization: `Bearer ${config.token}` };

process.stdin.on("end", () => process.exit(0));
process.stdin.resume();

function followLive() {
  const options = {
    key: config.key,
    wsHost: "127.0.0.1",
    wsPort: config.wsPort,
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "",
  };
  let pusher, channel;
  if (config.mode === "echo") {
    const echo = new Echo({
      broadcaster: "pusher",
      ...options,
      authEndpoint: `${config.base}/broadcasting/auth`,
      auth: { headers: auth },
      Pusher,
    });
    pusher = echo.connector.pusher;
    channel = echo.private(`conversation.${config.conversation_id}`);
    channel.subscribed(() => print({ kind: "subscribed" }));
    channel.subscription.bind_global(reportLive);
  } else {
    pusher = new Pusher(config.key, {
      ...options,
      channelAuthorization: { endpoint: `${config.base}/broadcasting/auth`, transport: "ajax", headers: auth },
    });
    channel = pusher.subscribe(`private-conversation.${config.conversation_id}`);
    channel.bind("pusher:subscription_succeeded", () => print({ kind: "subscribed" }));
    channel.bind_global(reportLive);
  }
  pusher.connection.bind("state_change", ({ current }) => print({ kind: "state", current }));
  followConversation(channel, {
    baseUrl: config.base,
    headers: auth,
    onEvent: (event) => print({ kind: "event", event }),
    onError: (error) => print({ kind: "error", message: String(error), status: error.status ?? null }),
  });
}

function reportLive(name, data) {
  if (data && typeof data === "object" && Number.isInteger(data.seq)) {
    print({ kind: "live", stream_id: data.stream_id, seq: data.seq, type: data.type });
  }
}

// ------------------------------------------------------------------ fake channel scenarios

/** Just enough of a pusher-js Channel: bind/unbind, bind_global/unbind_global, emit. */
class FakeChannel {
  constructor() {
    this.global = [];
    this.named = [];
  }
  bind(name, fn) { this.named.push([name, fn]); }
  unbind(name, fn) { this.named = this.named.filter(([n, f]) => n !== name || f !== fn); }
  bind_global(fn) { this.global.push(fn); }
  unbind_global(fn) { this.global = this.global.filter((f) => f !== fn); }
  emit(name, data) {
    for (const fn of [...this.global]) fn(name, data);
    for (const [n, fn] of [...this.named]) if (n === name) fn(data);
  }
  /** A live tokenwire frame as pusher-js hands it over: data parsed, with stream_id. */
  live(streamId, event) { this.emit(event.type, { stream_id: streamId, ...event }); }
  get handlers() { return this.global.length + this.named.length; }
}

/** A follower on a fresh FakeChannel whose requests go to the real server, recorded. */
function harness({ failFirst = false } = {}) {
  const channel = new FakeChannel();
  const delivered = [];
  const errors = [];
  const requests = [];
  const fetch = (url, init) => {
    const request = { url: url.slice(config.base.length), signal: init.signal };
    requests.push(request);
    if (failFirst && requests.length === 1) return Promise.reject(new TypeError("fetch failed"));
    return globalThis.fetch(url, init);
  };
  const follower = followConversation(channel, {
    baseUrl: config.base,
    headers: auth,
    retryMs: 50,
    fetch,
    onEvent: (event) => delivered.push(event),
    onError: (error) => errors.push({ message: String(error), status: error.status ?? null, stream_id: error.streamId }),
  });
  const report = (name, extra = {}) => print({
    kind: "scenario",
    name,
    delivered: delivered.map((e) => [e.stream_id, e.seq, e.type]),
    requests: requests.map((r) => ({ url: r.url, aborted: r.signal.aborted })),
    errors,
    ...extra,
  });
  return { channel, delivered, errors, requests, follower, report };
}

async function until(check, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function storedEvents(streamId) {
  const response = await fetch(`${config.base}/v1/streams/${streamId}?after=0`, { headers: auth });
  const body = await response.json();
  return body.events;
}

async function fakeScenarios() {
  const sid = config.stream_id;
  const other = config.other_stream_id;
  const events = await storedEvents(sid);
  const e = (seq) => events[seq - 1];
  const last = events.length;
  const otherEvents = await storedEvents(other);

  {
    const h = harness();
    for (const seq of [1, 2, 2, 1, 3, 3]) h.channel.live(sid, e(seq));
    h.report("in-order-and-duplicates");
  }
  {
    const h = harness();
    h.channel.live(sid, e(1));
    h.channel.live(sid, e(2));
    h.channel.live(sid, e(5)); // 3 and 4 missed: fetched after=2, up to the buffered 5 only
    await until(() => h.requests.length && h.requests[0].signal.aborted, "the gap fill to stop");
    const atAbort = h.delivered.length;
    h.channel.live(sid, e(4));
    h.channel.live(sid, e(6));
    h.report("gap-fill-stops-when-caught-up", { delivered_when_aborted: atAbort });
  }
  {
    const h = harness();
    h.channel.live(sid, e(4)); // first sight of the stream at seq 4: 1..3 are fetched
    await until(() => h.delivered.length >= 4, "1..4");
    await until(() => h.requests[0].signal.aborted, "the fetch to stop");
    h.channel.live(sid, e(5));
    h.report("mid-stream-join");
  }
  {
    const h = harness();
    h.channel.live(sid, e(1));
    h.channel.live(sid, e(2));
    h.channel.emit("pusher:subscription_succeeded", {}); // reconnected: the stream ended meanwhile
    await until(() => h.delivered.length === last, "the rest of the stream");
    await until(() => h.requests[0].signal.aborted, "the fetch to end");
    h.channel.live(sid, e(last)); // the terminal event again: a duplicate
    h.channel.emit("pusher:subscription_succeeded", {}); // ended: nothing to catch up
    h.report("resubscribe-catch-up");
  }
  {
    const h = harness();
    h.channel.live(other, otherEvents[2]); // other stream from seq 3: a gap from 0
    h.channel.live(sid, e(1));
    h.channel.live(sid, e(3)); // sid: 2 missed
    h.channel.live(other, otherEvents[3]);
    await until(() => h.delivered.filter((x) => x.stream_id === other).length >= 4, "other 1..4");
    await until(() => h.delivered.filter((x) => x.stream_id === sid).length >= 3, "sid 1..3");
    await until(() => h.requests.every((r) => r.signal.aborted), "both fetches to stop");
    h.report("two-streams", { other_stream_id: other });
  }
  {
    const h = harness({ failFirst: true });
    h.channel.live(sid, e(3)); // the first request fails (network): reported, retried
    await until(() => h.delivered.length >= 3, "1..3 after the retry");
    await until(() => h.requests.every((r) => r.signal.aborted), "the fetches to stop");
    h.report("retry-after-network-error");
  }
  {
    const h = harness();
    h.channel.live("no-such-stream", { type: "text-delta", part: 0, delta: "x", seq: 2 });
    await until(() => h.errors.length > 0, "the 404 to be reported");
    h.channel.live("no-such-stream", { type: "text-delta", part: 0, delta: "y", seq: 3 });
    h.channel.live("no-such-stream", { type: "text-delta", part: 0, delta: "z", seq: 1 });
    h.report("unreadable-stream");
  }
  {
    const h = harness();
    const before = h.channel.handlers;
    h.channel.live(sid, e(1));
    h.follower.stop();
    h.channel.live(sid, e(2));
    h.channel.live(sid, e(4));
    h.report("stop", { handlers_before: before, handlers_after: h.channel.handlers });
  }
  await sseDecoderVariants(sid);
}

/** The server's SSE bytes for the whole stream, decoded whole, byte by byte, with CRLF and CR. */
async function sseDecoderVariants(sid) {
  const response = await fetch(`${config.base}/v1/streams/${sid}/events?after=0`, { headers: auth });
  const bytes = new Uint8Array(await response.arrayBuffer());
  const text = new TextDecoder().decode(bytes);
  const encode = (s) => new TextEncoder().encode(s);
  const decodeIn = (chunks) => {
    const decoder = new SSEDecoder();
    const out = chunks.flatMap((chunk) => decoder.decode(chunk));
    return [...out, ...decoder.flush()];
  };
  const bytewise = (b) => Array.from(b, (x) => Uint8Array.of(x));
  const variants = {
    whole: decodeIn([bytes]),
    bytewise: decodeIn(bytewise(bytes)),
    crlf_bytewise: decodeIn(bytewise(encode(text.replaceAll("\n", "\r\n")))),
    cr_bytewise: decodeIn(bytewise(encode(text.replaceAll("\n", "\r")))),
    // A heartbeat comment, a BOM, a two-line data field and an unterminated last event.
    extras: decodeIn([encode("\uFEFF: hi\r\nid: 7\nevent: x\ndata: a\ndata:b\n\ndata: lost")]),
  };
  print({ kind: "scenario", name: "sse-decoder", variants, has_multibyte: /[^\x00-\x7f]/.test(text) });
}

// ------------------------------------------------------------------ main

if (config.mode === "fake") {
  await fakeScenarios();
  print({ kind: "done" });
} else {
  followLive();
}
