// A client on the official TypeScript SDK that calls a tool at once after connecting, again and again: the
// tool (`ask_aside` of server.mjs) asks on the session's standalone stream, which the client opened (its GET)
// just before the call (its POST). Usage `node aside.mjs URL TOKEN RUNS`; prints one JSON object with each
// run's answer, or its error.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, token, runs] = process.argv.slice(2);

async function run(name) {
  const client = new Client({ name, version: "1.0.0" }, { capabilities: { elicitation: {} } });
  client.setRequestHandler(ElicitRequestSchema, async () => ({ action: "accept", content: { name } }));
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);
  let answer;
  try {
    const result = await client.callTool({ name: "ask_aside", arguments: {} }, undefined, { timeout: 5000 });
    answer = result.content[0].text;
  } catch (e) {
    answer = `error: ${e.message}`;
  }
  await transport.terminateSession();
  await client.close();
  return answer;
}

// Four clients at a time, so that the sled's connections to the server are as many as its calls and streams.
const answers = [];
for (let i = 0; i < Number(runs); i += 4) {
  const batch = [0, 1, 2, 3].filter((k) => i + k < Number(runs)).map((k) => run(`run-${i + k}`));
  answers.push(...(await Promise.all(batch)));
}
console.log(JSON.stringify({ answers }));
