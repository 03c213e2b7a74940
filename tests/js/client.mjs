// Two clients on the official TypeScript SDK against a gateway's MCP endpoint (Streamable HTTP), as the
// end-to-end tests drive it: usage `node client.mjs URL TOKEN`. Prints one JSON object with what they saw.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CreateMessageRequestSchema, ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, token] = process.argv.slice(2);

async function connect(name) {
  const client = new Client({ name, version: "1.0.0" }, { capabilities: { sampling: {}, elicitation: {} } });
  client.setRequestHandler(CreateMessageRequestSchema, async () => ({
    role: "assistant",
    content: { type: "text", text: `hi from ${name}` },
    model: "test-model",
  }));
  client.setRequestHandler(ElicitRequestSchema, async () => ({ action: "accept", content: { name } }));
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);
  return { client, transport };
}

const text = (result) => result.content[0].text;
const alice = await connect("alice");
const bob = await connect("bob");
const progress = [];
const counted = await alice.client.callTool({ name: "count", arguments: { n: 3 } }, undefined, {
  onprogress: (p) => progress.push(p.progress),
});
const sampled = await alice.client.callTool({ name: "ask_model", arguments: {} });
const elicited = await bob.client.callTool({ name: "ask_person", arguments: {} });
const local = [
  text(await alice.client.callTool({ name: "whoami", arguments: {} })),
  text(await bob.client.callTool({ name: "whoami", arguments: {} })),
];
const sessions = [alice.transport.sessionId, bob.transport.sessionId];
await alice.transport.terminateSession();
await alice.client.close();
await bob.client.close();
console.log(
  JSON.stringify({ sessions, progress, counted: text(counted), sampled: text(sampled), elicited: text(elicited), local }),
);
