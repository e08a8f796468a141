// Drive tokenwire's /api/agui with @ag-ui/client's own HttpAgent (its SSE parser,
// event verification and message application).
//
// Usage: node run.mjs '<json config>'; prints one JSON object on stdout:
//   {runs: [{types, pending, outcome, error}], messages}: the AG-UI event types each
//   run received, the tool calls it left pending, its RUN_FINISHED outcome or its
//   RUN_ERROR (or the rejection of runAgent), and the agent's messages at the end.
// Config: url, token, threadId, text (the user message), model and params (forwardedProps),
// and optionally tool ({name, description, parameters}) and toolResult: then the
// first run offers the tool, the client answers every pending call with toolResult
// and runs again (a client-side tool loop).
import { HttpAgent } from "@ag-ui/client";

const config = JSON.parse(process.argv[2]);
const agent = new HttpAgent({
  url: config.url,
  headers: { authorization: `Bearer ${config.token}` },
  threadId: config.threadId,
  initialMessages: [{ id: "user-1", role: "user", content: config.text }],
});

async function run(parameters) {
  const types = [];
  let pending = [];
  let outcome = null;
  let error = null;
  try {
    await agent.runAgent(parameters, {
      onEvent: ({ event }) => {
        types.push(event.type);
      },
      onRunFinishedEvent: (params) => {
        outcome = params.outcome;
        if (params.outcome === "success") pending = params.pendingToolCallIds;
      },
      onRunErrorEvent: ({ event }) => {
        error = { message: event.message, code: event.code };
      },
    });
  } catch (e) {
    error ??= { message: String(e?.message ?? e) };
  }
  return { types, pending, outcome, error };
}

const forwardedProps = { model: config.model, params: config.params ?? {} };
const runs = [];
if (config.tool) {
  const first = await run({ tools: [config.tool], forwardedProps });
  runs.push(first);
  for (const id of first.pending) {
    agent.addMessage({ id: `tool-${id}`, role: "tool", toolCallId: id, content: config.toolResult });
  }
  runs.push(await run({ tools: [config.tool], forwardedProps }));
} else {
  runs.push(await run({ forwardedProps }));
}
process.stdout.write(JSON.stringify({ runs, messages: agent.messages }));
