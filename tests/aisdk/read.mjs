// Drive a tokenwire /api/chat endpoint with a pinned AI SDK version's own client code.
//
// Usage: node read.mjs '<json list of jobs>'; prints a JSON list of results on stdout.
//
// Each job picks the SDK ("5" | "6" | "7", imported from the npm aliases ai5/ai6/ai7)
// and an action:
//   send         Chat.sendMessage({text}) through DefaultChatTransport, which POSTs
//                {id, messages, trigger, messageId} and parses the response with the
//                SDK's SSE parser validated against its uiMessageChunkSchema.
//   disconnect   send, hang up after `stopAfter` chunks (Chat.stop() aborts the fetch,
//                exactly what a page reload does), then, as a reloaded page would, a
//                new Chat with the messages so far calls resumeStream()
//                (GET {api}/{id}/stream).
//   resume       a new Chat with `messages` calls resumeStream().
//   bad-chunk    feed a chunk the schema rejects through the same transport (fetch
//                replaced); proves that validation is applied (it must fail).
//
// The chat state is the minimal ChatState the SDK's own framework bindings implement
// (an array of messages); chunks are recorded on the way from the transport to the chat.

import { ArrayState } from "./array_state.mjs";

const jobs = JSON.parse(process.argv[2]);
const results = [];
for (const job of jobs) results.push(await run(job, await import(`ai${job.version}`)));
process.stdout.write(JSON.stringify(results));

async function run(job, ai) {
  class RecordingTransport extends ai.DefaultChatTransport {
    constructor(options, onChunk) {
      super(options);
      this.onChunk = onChunk;
    }
    processResponseStream(stream) {
      const onChunk = this.onChunk;
      return super.processResponseStream(stream).pipeThrough(
        new TransformStream({
          transform(chunk, controller) {
            onChunk(chunk);
            controller.enqueue(chunk);
          },
        }),
      );
    }
  }

  class Chat extends ai.AbstractChat {
    constructor({ messages, fetch, onChunk }) {
      const errors = [];
      const transport = new RecordingTransport(
        { api: job.api, headers: job.headers ?? {}, body: job.body ?? {}, fetch },
        (chunk) => onChunk(chunk, this),
      );
      super({
        id: job.chatId,
        transport,
        state: new ArrayState(messages),
        onError: (error) => errors.push(String(error?.message ?? error)),
      });
      this.errors = errors;
      this.chunks = [];
    }
  }

  // Records tokenwire's x-tokenwire-stream-id response header, so the caller can
  // compare with the native stream of the same generation.
  const streamIds = [];
  const recordingFetch = async (url, init) => {
    const response = await fetch(url, init);
    const id = response.headers.get("x-tokenwire-stream-id");
    if (id) streamIds.push(id);
    return response;
  };

  function newChat(messages, fetch = recordingFetch, stopAfter = undefined) {
    return new Chat({
      messages,
      fetch,
      onChunk: (chunk, chat) => {
        chat.chunks.push(chunk);
        if (stopAfter !== undefined && chat.chunks.length === stopAfter) void chat.stop();
      },
    });
  }

  function report(chat) {
    return { messages: chat.messages, status: chat.status, errors: chat.errors, chunks: chat.chunks };
  }

  const result = {};
  if (job.action === "send" || job.action === "disconnect") {
    const first = newChat([], recordingFetch, job.action === "disconnect" ? job.stopAfter : undefined);
    await first.sendMessage({ text: job.text });
    result.first = report(first);
    if (job.action === "disconnect") {
      const reloaded = newChat(structuredClone(first.messages));
      await reloaded.resumeStream();
      result.resumed = report(reloaded);
    }
  } else if (job.action === "resume") {
    const chat = newChat(job.messages ?? []);
    await chat.resumeStream();
    result.resumed = report(chat);
  } else if (job.action === "bad-chunk") {
    const body = `data: ${JSON.stringify(job.chunk)}\n\ndata: [DONE]\n\n`;
    const fetch = async () =>
      new Response(body, {
        headers: { "content-type": "text/event-stream", "x-vercel-ai-ui-message-stream": "v1" },
      });
    const chat = newChat([], fetch);
    await chat.sendMessage({ text: "x" });
    result.first = report(chat);
  } else {
    throw new Error(`unknown action ${job.action}`);
  }
  result.streamIds = streamIds;
  return result;
}
