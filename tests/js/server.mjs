// An MCP server on the official TypeScript SDK, with sessions (Streamable HTTP), standing behind a sled in
// the end-to-end tests. Its tools exercise what crosses the uplink besides a plain answer: progress
// notifications, sampling and elicitation requests of the server's own, and the session each caller is in.
// Prints {"port": N} once it listens on 127.0.0.1.
import { randomUUID } from "node:crypto";
import http from "node:http";

import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";

const transports = new Map();

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
  server.registerTool("whoami", { description: "The caller's session at this server" }, async (extra) => ({
    content: [{ type: "text", text: String(extra.sessionId) }],
  }));
  return server;
}

const httpServer = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  let body;
  try {
    body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : undefined;
  } catch {
    res.writeHead(400).end();
    return;
  }
  const sid = req.headers["mcp-session-id"];
  let transport = sid ? transports.get(sid) : undefined;
  if (!transport) {
    if (req.method !== "POST" || !isInitializeRequest(body)) {
      res.writeHead(sid ? 404 : 400, { "content-type": "application/json" });
      res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message: "no such session" }, id: null }));
      return;
    }
    const fresh = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => transports.set(id, fresh),
    });
    fresh.onclose = () => fresh.sessionId && transports.delete(fresh.sessionId);
    await build().connect(fresh);
    transport = fresh;
  }
  await transport.handleRequest(req, res, body);
});

httpServer.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ port: httpServer.address().port }));
});
