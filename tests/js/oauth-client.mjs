// The official MCP TypeScript SDK's client with its own OAuth support, against a gateway's MCP endpoint that
// takes access tokens (the MCP authorization spec): `node oauth-client.mjs MCP_URL USER`.
//
// The first connection gets 401; the SDK reads the endpoint's Protected Resource Metadata, the provider's
// metadata, registers itself, and sends the person to the provider. The person's part (the provider's
// sign-in form and consent page, as USER) is done here over HTTP, as a browser would, up to the redirect
// that carries the code; the SDK then exchanges the code (with the resource indicator) and connects again,
// lists the tools and calls `echo`. Prints one JSON line: {"before": STATUS_OR_ERROR, "tools": [...],
// "echo": TEXT, "token_audience": AUD, "token_subject": SUB}; exits 1 with the error on stderr otherwise.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

import { signIn } from "./provider-login.mjs";

const [url, user] = process.argv.slice(2);
const REDIRECT = "http://127.0.0.1:9/callback";

class MemoryProvider {
  constructor() {
    this.saved = {};
  }
  get redirectUrl() {
    return REDIRECT;
  }
  get clientMetadata() {
    return {
      client_name: "uplink oauth test",
      redirect_uris: [REDIRECT],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  clientInformation() {
    return this.saved.client;
  }
  saveClientInformation(info) {
    this.saved.client = info;
  }
  tokens() {
    return this.saved.tokens;
  }
  saveTokens(tokens) {
    this.saved.tokens = tokens;
  }
  redirectToAuthorization(authorizationUrl) {
    this.saved.authorizationUrl = authorizationUrl;
  }
  saveCodeVerifier(verifier) {
    this.saved.verifier = verifier;
  }
  codeVerifier() {
    return this.saved.verifier;
  }
}

const provider = new MemoryProvider();
const out = {};
try {
  const first = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  try {
    await new Client({ name: "oauth-test", version: "1" }).connect(first);
    out.before = "connected without a token";
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
    out.before = "unauthorized";
  }
  if (!provider.saved.authorizationUrl) throw new Error("the SDK did not start an authorization");
  const asked = new URL(provider.saved.authorizationUrl);
  out.authorization_resource = asked.searchParams.get("resource");
  const back = new URL(await signIn(provider.saved.authorizationUrl, user, REDIRECT));
  const code = back.searchParams.get("code");
  if (!code) throw new Error(`the provider refused: ${back.search}`);
  await first.finishAuth(code);
  const token = provider.saved.tokens.access_token;
  const payload = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
  out.token_audience = payload.aud;
  out.token_subject = payload.sub;

  const client = new Client({ name: "oauth-test", version: "1" });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { authProvider: provider }));
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  const echoed = await client.callTool({ name: "echo", arguments: { text: `hello from ${user}` } });
  out.echo = echoed.content[0].text;
  await client.close();
  console.log(JSON.stringify(out));
} catch (e) {
  console.error(e?.stack ?? String(e));
  console.log(JSON.stringify({ ...out, error: String(e?.message ?? e) }));
  process.exit(1);
}
