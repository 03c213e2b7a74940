// Serves an MCP server of the official TypeScript SDK over Streamable HTTP with sessions, for the tests'
// servers (server.mjs, everything.mjs): a transport per session, made on `initialize`, forgotten when it
// closes. Prints {"port": N} once it listens on 127.0.0.1.
import { randomUUID } from "node:crypto";
import http from "node:http";

import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";

/**
 * `build()` makes a fresh server for each session. `options.transport` is added to each session's
 * transport options; `options.admit(req)` may refuse a request first (answering it itself) by returning
 * false.
 */
export function serve(build, options = {}) {
  const transports = new Map();
  const server = http.createServer(async (req, res) => {
    if (options.admit && !options.admit(req, res)) return;
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
        ...options.transport?.(),
      });
      fresh.onclose = () => fresh.sessionId && transports.delete(fresh.sessionId);
      await build().connect(fresh);
      transport = fresh;
    }
    await transport.handleRequest(req, res, body);
  });
  server.listen(0, "127.0.0.1", () => {
    console.log(JSON.stringify({ port: server.address().port }));
  });
}
