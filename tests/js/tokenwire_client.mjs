// Driven by tests/test_tokenwire_js.py: src/tokenwire/web/tokenwire.js in Node against a real
// tokenwire server (argv[2] = its base URL). The network faults are injected in the fetch the
// client is given (the response body errors after some chunks, a connection is refused); the
// server and its streams are real. Prints one JSON line per check; exits 1 on a failure.
import assert from "node:assert/strict";
import { TokenwireClient, TokenwireError } from "../../src/tokenwire/web/tokenwire.js";

const base = process.argv[2];
const lorem = (tokens, delay) => ({ model: "fake:lorem", params: { tokens, delay_ms: delay } });

/** A fetch whose event-stream bodies fail after `cut[i]` chunks on the i-th request (none: whole). */
function faultyFetch(plan) {
  const requests = [];
  const fetchImpl = async (url, init = {}) => {
    const i = requests.length;
    requests.push({ url: String(url), lastEventId: init.headers?.["Last-Event-ID"] ?? null });
    const step = plan[i];
    if (step === "refuse") throw new TypeError("fetch failed (connection refused)");
    const response = await fetch(url, init);
    if (typeof step !== "number") return response;
    const reader = response.body.getReader();
    let chunks = 0;
    const body = new ReadableStream({
      async pull(controller) {
        if (chunks++ >= step) {
          reader.cancel().catch(() => {});
          controller.error(new TypeError("network error (connection reset)"));
          return;
        }
        const { value, done } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  return { fetchImpl, requests };
}

async function check(name, fn) {
  try {
    await fn();
    console.log(JSON.stringify({ check: name, ok: true }));
  } catch (error) {
    console.log(JSON.stringify({ check: name, ok: false, error: String(error?.stack ?? error) }));
    process.exitCode = 1;
  }
}

await check("start and follow: every event once, in order", async () => {
  const tw = new TokenwireClient({ baseUrl: base });
  const started = await tw.start({ ...lorem(12, 0), messages: [{ role: "user", content: "x" }], source: "api" });
  assert.ok(started.stream_id && started.conversation_id && started.message_id);
  const seen = [];
  const last = await tw.follow(started.stream_id, { onEvent: (e) => seen.push(e) });
  assert.equal(last.type, "finish");
  assert.deepEqual(seen.map((e) => e.seq), seen.map((_, i) => i + 1));
  assert.equal(seen[0].type, "start");
  assert.ok(seen.every((e) => e.stream_id === started.stream_id));
  const text = seen.filter((e) => e.type === "text-delta").map((e) => e.delta).join("");
  assert.equal(text.split(" ").length, 12);
  const snapshot = await tw.snapshot(started.stream_id);
  assert.equal(snapshot.text, text);
  assert.equal(snapshot.status, "completed");
});

await check("drops mid-stream resume after the last seq, without duplicates", async () => {
  const { fetchImpl, requests } = faultyFetch([undefined, 2, "refuse", 1]);
  const tw = new TokenwireClient({ baseUrl: base, fetch: fetchImpl });
  const started = await tw.start({ ...lorem(30, 5), messages: [{ role: "user", content: "x" }] });
  const seen = [];
  const retries = [];
  const last = await tw.follow(started.stream_id, {
    onEvent: (e) => seen.push(e.seq), onRetry: (r) => retries.push(r.attempt), retryMs: 10,
  });
  assert.equal(last.type, "finish");
  assert.deepEqual(seen, seen.map((_, i) => i + 1));
  assert.ok(retries.length >= 3, `retries: ${retries}`);
  const follows = requests.slice(1);
  assert.ok(follows.length >= 4, JSON.stringify(follows));
  assert.match(follows[0].url, /\?after=0$/);
  for (const r of follows.slice(1)) {
    const after = Number(r.url.match(/\?after=(\d+)$/)[1]);
    assert.ok(after > 0, r.url);
    assert.equal(r.lastEventId, String(after));
  }
  const snapshot = await new TokenwireClient({ baseUrl: base }).snapshot(started.stream_id);
  assert.equal(snapshot.last_seq, seen.at(-1));
});

await check("stop ends the stream with cancelled", async () => {
  const tw = new TokenwireClient({ baseUrl: base });
  const started = await tw.start({
    model: "fake:lorem", params: { tokens: 50, stall_after: 3 }, messages: [{ role: "user", content: "x" }],
  });
  let deltas = 0;
  const done = tw.follow(started.stream_id, {
    onEvent: (e) => { if (e.type === "text-delta" && ++deltas === 1) tw.stop(started.stream_id); },
  });
  const last = await done;
  assert.equal(last.type, "cancelled");
  assert.equal(last.reason, "user");
});

await check("404 rejects at once with a TokenwireError", async () => {
  const tw = new TokenwireClient({ baseUrl: base });
  await assert.rejects(tw.follow("no-such-stream"), (error) => {
    assert.ok(error instanceof TokenwireError);
    assert.equal(error.status, 404);
    return true;
  });
});

await check("an abort signal stops following", async () => {
  const tw = new TokenwireClient({ baseUrl: base });
  const started = await tw.start({
    model: "fake:lorem", params: { stall_after: 1 }, messages: [{ role: "user", content: "x" }],
  });
  const controller = new AbortController();
  const following = tw.follow(started.stream_id, {
    signal: controller.signal, onEvent: (e) => { if (e.type === "text-delta") controller.abort(); },
  });
  await assert.rejects(following, { name: "AbortError" });
  await tw.stop(started.stream_id);
});

await check("conversations: source, search, rename, delete; 422 names the field", async () => {
  const tw = new TokenwireClient({ baseUrl: base });
  const marker = `okapi${process.pid}`;
  const started = await tw.start({ ...lorem(2, 0), messages: [{ role: "user", content: `About ${marker}` }], source: "page" });
  await tw.follow(started.stream_id);
  const found = await tw.listConversations({ source: "page", q: marker });
  assert.deepEqual(found.data.map((c) => c.id), [started.conversation_id]);
  const renamed = await tw.renameConversation(started.conversation_id, `Renamed ${marker}`);
  assert.equal(renamed.title, `Renamed ${marker}`);
  assert.equal((await tw.getConversation(started.conversation_id)).messages.length, 2);
  await tw.deleteConversation(started.conversation_id);
  await assert.rejects(tw.getConversation(started.conversation_id), { status: 404 });
  await assert.rejects(tw.start({ model: "nope:x", messages: [{ role: "user", content: "x" }] }),
    (error) => error.status === 422 && /^model: /.test(error.message));
  const models = await tw.models();
  assert.equal(models.default, "fake:echo");
  assert.ok(models.data.some((m) => m.id === models.default));
});
