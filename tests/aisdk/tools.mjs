// Client-side tool loops through tokenwire with the AI SDK's own code (ai 7, pinned).
//
// Usage: node tools.mjs '<json config>'; prints one JSON object on stdout.
// config: {base, apiKey, model, city}
//
//   streamText   `streamText` over `@ai-sdk/openai-compatible` pointed at tokenwire's
//                /v1/chat/completions, with a `weather` tool whose `execute` runs here,
//                `stopWhen: stepCountIs(2)`: step 1 calls the tool, step 2 answers.
//   chat         `AbstractChat` + `DefaultChatTransport` against /api/chat with the
//                tool declared in the body's `tools`; `onToolCall` adds the output and
//                `sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls`
//                POSTs the chat again, as useChat does.

import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import * as ai from "ai7";
import { ArrayState } from "./array_state.mjs";

const config = JSON.parse(process.argv[2]);
const headers = { authorization: `Bearer ${config.apiKey}` };
const schema = {
  type: "object",
  properties: { city: { type: "string" } },
  required: ["city"],
};
const ran = [];

async function viaStreamText() {
  const provider = createOpenAICompatible({
    name: "tokenwire",
    baseURL: `${config.base}/v1`,
    apiKey: config.apiKey,
  });
  const result = ai.streamText({
    model: provider.chatModel(config.model),
    prompt: `How is the weather in ${config.city}?`,
    tools: {
      weather: ai.tool({
        description: "The weather in a city",
        inputSchema: ai.jsonSchema(schema),
        execute: async ({ city }) => {
          ran.push(city);
          return `sunny in ${city}`;
        },
      }),
    },
    providerOptions: { tokenwire: { tool_args: { city: config.city } } },
    stopWhen: ai.stepCountIs(2),
  });
  const text = await result.text;
  const steps = await result.steps;
  return {
    text,
    ran: [...ran],
    steps: steps.map((s) => ({
      finishReason: s.finishReason,
      toolCalls: s.toolCalls.map((c) => ({ name: c.toolName, input: c.input })),
      toolResults: s.toolResults.map((r) => r.output),
    })),
  };
}

async function viaChat() {
  const errors = [];
  const bodies = [];
  const recordingFetch = async (url, init) => {
    bodies.push(JSON.parse(init.body));
    return fetch(url, init);
  };
  const transport = new ai.DefaultChatTransport({
    api: `${config.base}/api/chat`,
    headers,
    fetch: recordingFetch,
    body: {
      model: config.model,
      params: { tool_args: { city: config.city } },
      tools: [{ name: "weather", description: "The weather in a city", inputSchema: schema }],
    },
  });
  let finished;
  const done = new Promise((resolve) => {
    finished = resolve;
  });
  let responses = 0;
  const chat = new ai.AbstractChat({
    id: `tools-${Date.now()}`,
    transport,
    state: new ArrayState(),
    onError: (error) => {
      errors.push(String(error?.message ?? error));
      finished();
    },
    // Called after each response; the second is the answer to the tool output.
    onFinish: () => {
      responses += 1;
      if (responses === 2) finished();
    },
    sendAutomaticallyWhen: ai.lastAssistantMessageIsCompleteWithToolCalls,
    onToolCall: ({ toolCall }) => {
      ran.push(toolCall.input.city);
      // Not awaited, as the AI SDK docs say (it would wait for this very stream).
      void chat.addToolOutput({
        tool: toolCall.toolName,
        toolCallId: toolCall.toolCallId,
        output: `sunny in ${toolCall.input.city}`,
      });
    },
  });
  await chat.sendMessage({ text: `How is the weather in ${config.city}?` });
  await done; // the automatic second request runs after the first response
  return {
    ran: [...ran],
    errors,
    status: chat.status,
    requests: bodies.map((b) => b.messages.map((m) => m.parts.map((p) => p.type))),
    messages: chat.messages,
  };
}

const out = config.action === "chat" ? await viaChat() : await viaStreamText();
process.stdout.write(JSON.stringify(out));
