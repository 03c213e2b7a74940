// An MCP server on the official TypeScript SDK, with sessions (Streamable HTTP), standing behind a sled in
// the end-to-end tests. Its tools exercise what crosses the uplink besides a plain answer: progress
// notifications, sampling and elicitation requests of the server's own (tied to the call, or on the standalone
// stream), the session each caller is in, and the headers a call came with; and `echo`.
// Prints {"port": N} once it listens on 127.0.0.1.
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { z } from "zod";

import { serve } from "./sessions.mjs";

function build() {
  const server = new McpServer({ name: "uplink-e2e", version: "1.0.0" });
  server.registerTool(
    "count",
    { description: "Counts to n, reporting progress at each step", inputSchema: { n: z.number() } },
    async ({ n }, extra) => {
      const token = extra._meta?.progressToken;
      for (let i = 1; i <= n; i++) {
        if (token !== undefined) {
          await extra.sendNotification({
            method: "notifications/progress",
            params: { progressToken: token, progress: i, total: n },
          });
        }
      }
      return { content: [{ type: "text", text: `counted to ${n}` }] };
    },
  );
  server.registerTool("ask_model", { description: "Asks the client's model (sampling)" }, async (extra) => {
    const answer = await server.server.createMessage(
      { messages: [{ role: "user", content: { type: "text", text: "say hi" } }], maxTokens: 10 },
      { relatedRequestId: extra.requestId },
    );
    return { content: [{ type: "text", text: `model said: ${answer.content.text}` }] };
  });
  server.registerTool("ask_person", { description: "Asks the client's person (elicitation)" }, async (extra) => {
    const answer = await server.server.elicitInput(
      {
        message: "Your name?",
        requestedSchema: { type: "object", properties: { name: { type: "string" } }, required: ["name"] },
      },
      { relatedRequestId: extra.requestId },
    );
    return { content: [{ type: "text", text: `${answer.action}: ${answer.content?.name}` }] };
  });
  // Asks on the session's standalone stream, not tied to the call (no related request): it reaches a client
  // only if its GET stream is open at the server when the call runs.
  server.registerTool("ask_aside", { description: "Asks the client's person on the standalone stream" }, async () => {
    const answer = await server.server.elicitInput({
      message: "Your name?",
      requestedSchema: { type: "object", properties: { name: { type: "string" } }, required: ["name"] },
    });
    return { content: [{ type: "text", text: `${answer.action}: ${answer.content?.name}` }] };
  });
  server.registerTool("whoami", { description: "The caller's session at this server" }, async (extra) => ({
    content: [{ type: "text", text: String(extra.sessionId) }],
  }));
  server.registerTool(
    "echo",
    { description: "Says the text back", inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: "text", text }] }),
  );
  server.registerTool("headers", { description: "The HTTP headers the call came with" }, async (extra) => ({
    content: [{ type: "text", text: JSON.stringify(extra.requestInfo?.headers ?? {}) }],
  }));
  return server;
}

serve(build);
