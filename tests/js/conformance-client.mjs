// The client under the MCP conformance suite's client scenarios: `node conformance-client.mjs [--direct] URL`,
// run by the suite with the scenario's server URL (and its name in MCP_CONFORMANCE_SCENARIO).
//
// Through the uplink (the default), the client is the whole path: a TypeScript SDK client talks to
// `uplink gateway`'s MCP endpoint, and `uplink sled` (the program at UPLINK_BIN) is the one that speaks to
// the scenario's server, which is its local MCP server. With `--direct`, the same SDK client talks to the
// scenario's server itself: the baseline each scenario must match.
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const args = process.argv.slice(2);
const direct = args[0] === "--direct";
const serverUrl = args[args.length - 1];
const scenario = process.env.MCP_CONFORMANCE_SCENARIO ?? "";

const ADMIN = "conformance-admin";
const SLED = "conformance-sled";

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Starts a gateway and a sled whose local MCP server is the scenario's; returns the MCP URL and a stop. */
async function uplink() {
  const bin = process.env.UPLINK_BIN;
  if (!bin) throw new Error("UPLINK_BIN must name the uplink program");
  const [gatewayPort, localPort] = [await freePort(), await freePort()];
  const state = mkdtempSync(join(tmpdir(), "uplink-conformance-"));
  const quiet = { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } };
  const gateway = spawn(
    bin,
    ["gateway", "--listen", `127.0.0.1:${gatewayPort}`, "--sled-token", SLED, "--admin-token", ADMIN, "--no-store", "--state-dir", state],
    quiet,
  );
  const base = `http://127.0.0.1:${gatewayPort}`;
  const sled = spawn(
    bin,
    [
      "sled",
      "--gateway",
      `ws://127.0.0.1:${gatewayPort}/api/sled-uplink`,
      "--token",
      SLED,
      "--project",
      "conformance",
      "--mcp",
      serverUrl,
      "--permission-listen",
      `127.0.0.1:${localPort}`,
    ],
    quiet,
  );
  const stop = () => {
    sled.kill();
    gateway.kill();
  };
  // Until the gateway lists the sled as connected (bounded by the suite's own timeout).
  for (;;) {
    try {
      const r = await fetch(`${base}/api/sleds`, { headers: { Authorization: `Bearer ${ADMIN}` } });
      if (r.ok && (await r.json()).sleds.some((s) => s.project === "conformance" && s.connected)) break;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: `${base}/api/sleds/conformance/mcp`, stop };
}

/** A value for each field of a requested schema that has a default and was left out: SEP-1034. */
function withDefaults(schema, content) {
  const out = { ...content };
  for (const [name, field] of Object.entries(schema?.properties ?? {})) {
    if (!(name in out) && field && "default" in field) out[name] = field.default;
  }
  return out;
}

async function main() {
  const target = direct ? { url: serverUrl, stop: () => {} } : await uplink();
  try {
    const client = new Client(
      { name: "uplink-conformance-client", version: "1.0.0" },
      { capabilities: { sampling: {}, elicitation: {} } },
    );
    client.setRequestHandler(ElicitRequestSchema, async (request) => ({
      action: "accept",
      content: withDefaults(request.params.requestedSchema, {}),
    }));
    const headers = direct ? {} : { Authorization: `Bearer ${ADMIN}` };
    const transport = new StreamableHTTPClientTransport(new URL(target.url), { requestInit: { headers } });
    await client.connect(transport);
    const { tools } = await client.listTools();
    if (scenario === "tools_call") {
      await client.callTool({ name: "add_numbers", arguments: { a: 5, b: 3 } });
    } else if (scenario !== "initialize") {
      // Every tool the scenario offers, in order (sse-retry's test_reconnection, the elicitation tests).
      for (const tool of tools) await client.callTool({ name: tool.name, arguments: {} });
    }
    await client.close();
  } finally {
    target.stop();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e?.stack ?? String(e));
    process.exit(1);
  },
);
