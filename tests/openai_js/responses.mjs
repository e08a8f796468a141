// Drive tokenwire's OpenAI Responses API (POST /v1/responses) with the AI SDK's own
// OpenAI provider: createOpenAI({baseURL})(model) is the Responses API model.
//
// Usage: node responses.mjs '<json list of jobs>'; prints a JSON list of results on stdout.
//
// Each job: {baseURL, apiKey, model, prompt, action} with action
//   generate   generateText(): text, reasoning text, finishReason, usage;
//   stream     streamText(): the same, read from the stream, plus the part types seen;
//   tools      generateText() with a client-side `get_time` tool (returns `job.toolOutput`)
//              and stopWhen: stepCountIs(2): the two-step agent loop, one request per step;
//   multiturn  generateText() twice, the second with the first's response messages and
//              `job.second` (the SDK refers to the earlier output items by id: item_reference).
// An exception is a result too: {error: message, status}.

import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const jobs = JSON.parse(process.argv[2]);
const results = [];
for (const job of jobs) {
  try {
    results.push(await run(job));
  } catch (error) {
    results.push({ error: String(error?.message ?? error), status: error?.statusCode ?? null });
  }
}
process.stdout.write(JSON.stringify(results));

function usageOf(usage) {
  return { inputTokens: usage.inputTokens ?? null, outputTokens: usage.outputTokens ?? null };
}

async function run(job) {
  const openai = createOpenAI({ baseURL: job.baseURL, apiKey: job.apiKey });
  const model = openai(job.model);
  if (job.action === "generate") {
    const result = await generateText({ model, prompt: job.prompt, maxRetries: 0 });
    return {
      text: result.text,
      reasoning: result.reasoningText ?? "",
      finishReason: result.finishReason,
      usage: usageOf(result.usage),
      responseId: result.response.id,
    };
  }
  if (job.action === "stream") {
    const result = streamText({ model, prompt: job.prompt, maxRetries: 0 });
    const parts = new Set();
    let text = "";
    let reasoning = "";
    for await (const part of result.fullStream) {
      parts.add(part.type);
      if (part.type === "text-delta") text += part.text;
      if (part.type === "reasoning-delta") reasoning += part.text;
      if (part.type === "error") throw part.error;
    }
    return {
      text,
      reasoning,
      finishReason: await result.finishReason,
      usage: usageOf(await result.usage),
      parts: [...parts].sort(),
    };
  }
  if (job.action === "tools") {
    const calls = [];
    const result = await generateText({
      model,
      prompt: job.prompt,
      maxRetries: 0,
      stopWhen: stepCountIs(2),
      tools: {
        get_time: tool({
          description: "The current time",
          inputSchema: z.object({}),
          execute: async (input) => {
            calls.push(input);
            return job.toolOutput;
          },
        }),
      },
    });
    return {
      text: result.text,
      steps: result.steps.map((step) => step.finishReason),
      calls,
    };
  }
  if (job.action === "multiturn") {
    const first = await generateText({ model, prompt: job.prompt, maxRetries: 0 });
    const messages = [
      { role: "user", content: job.prompt },
      ...first.response.messages,
      { role: "user", content: job.second },
    ];
    const second = await generateText({ model, messages, maxRetries: 0 });
    return { first: first.text, text: second.text, responseId: second.response.id };
  }
  throw new Error(`unknown action ${job.action}`);
}
