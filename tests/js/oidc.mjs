// A real OpenID provider for the identity tests: the certified `oidc-provider` (pinned in package-lock.json),
// on 127.0.0.1, with test users and clients. `node oidc.mjs [CONSOLE_REDIRECT_URI]`. Prints {"issuer": URL,
// "forge": PORT} once it listens.
//
// - Users (any password; the development login form): alice (group platform-oncall), bob (group readers),
//   mallory (group marketing). Their access tokens carry their groups, email and email_verified.
// - Clients: `robot` (secret `robot-secret`, client credentials grant: its tokens' subject is `robot`);
//   `uplink-console` (secret `console-secret`, the authorization code flow, redirecting to
//   CONSOLE_REDIRECT_URI) for a gateway's console; and any client an MCP client registers for itself (dynamic
//   registration). Groups and email reach the console through UserInfo (scopes `groups`, `email`).
//   `uplink-cli` (public, the device authorization grant and refresh tokens) for `uplink login`.
// - Access tokens are JWTs (RFC 9068) for the resource the client names (RFC 8707), with the scope `mcp`.
// - The forge (a second listener, for the tests alone): `POST /sign {"claims": {...}, "key": "provider" |
//   "stranger", "alg"?: "RS256" | "HS256"}` answers a JWT signed with the provider's own key (or a key nobody
//   publishes), so that the tests can make expired, premature or otherwise wrong tokens a real provider would
//   not issue. `POST /tamper {"id_token": "aud" | "exp" | "nonce" | "sig"}` makes the provider's next token
//   answer carry an ID token with that part wrong (another audience, long expired, another sign-in's nonce:
//   each re-signed with the provider's own key; or a payload changed under its signature).
import http from "node:http";
import * as jose from "jose";
import Provider from "oidc-provider";

const [consoleRedirect] = process.argv.slice(2);

const USERS = {
  alice: ["platform-oncall"],
  bob: ["readers"],
  mallory: ["marketing"],
};

async function signingKey(kid) {
  const { privateKey } = await jose.generateKeyPair("RS256", { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid, alg: "RS256", use: "sig" };
}

const providerKey = await signingKey("provider-1");
const strangerKey = await signingKey("stranger-1");

const server = http.createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks: { keys: [providerKey] },
  clients: [
    {
      client_id: "robot",
      client_secret: "robot-secret",
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
    },
    {
      client_id: "uplink-cli",
      token_endpoint_auth_method: "none",
      grant_types: ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
      redirect_uris: [],
      response_types: [],
    },
    ...(consoleRedirect
      ? [
          {
            client_id: "uplink-console",
            client_secret: "console-secret",
            grant_types: ["authorization_code"],
            redirect_uris: [consoleRedirect],
            response_types: ["code"],
          },
        ]
      : []),
  ],
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.com`, email_verified: true, groups: USERS[id] ?? [] };
      },
    };
  },
  claims: { openid: ["sub"], email: ["email", "email_verified"], groups: ["groups"] },
  scopes: ["openid", "offline_access", "email", "groups", "mcp"],
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (_ctx, _client, oneOf) => (oneOf ? oneOf[0] : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: "mcp",
        accessTokenTTL: 600,
        accessTokenFormat: "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  async extraTokenClaims(_ctx, token) {
    if (!token.accountId) return undefined;
    const id = token.accountId;
    return { groups: USERS[id] ?? [], email: `${id}@example.com`, email_verified: true };
  },
  // Consent for a dynamically registered client is still asked (and given by the tests' browser step).
});
let tamper = null;
async function tampered(idToken, how) {
  const [header, payload, signature] = idToken.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
  const now = Math.floor(Date.now() / 1000);
  if (how === "sig") {
    claims.sub = "someone-else";
    return `${header}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${signature}`;
  }
  if (how === "aud") claims.aud = "another-client";
  if (how === "exp") Object.assign(claims, { iat: now - 7200, exp: now - 3600 });
  if (how === "nonce") claims.nonce = "another-sign-in";
  const key = await jose.importJWK(providerKey, "RS256");
  return new jose.SignJWT(claims).setProtectedHeader({ alg: "RS256", kid: providerKey.kid }).sign(key);
}
provider.use(async (ctx, next) => {
  await next();
  if (tamper && ctx.path === "/token" && ctx.body?.id_token) {
    ctx.body = { ...ctx.body, id_token: await tampered(ctx.body.id_token, tamper) };
    tamper = null;
  }
});
provider.on("server_error", (_ctx, err) => console.error("provider error:", err));
server.on("request", provider.callback());

const forge = http.createServer(async (req, res) => {
  let body = "";
  for await (const chunk of req) body += chunk;
  try {
    if (req.url === "/tamper") {
      tamper = JSON.parse(body).id_token;
      res.writeHead(200);
      res.end("ok");
      return;
    }
    const { claims, key = "provider", alg = "RS256" } = JSON.parse(body);
    let signed;
    if (alg.startsWith("HS")) {
      // A shared-secret signature whose "secret" is the provider's public key, as an attacker would try.
      const publicJwk = { kty: providerKey.kty, n: providerKey.n, e: providerKey.e };
      const secret = new TextEncoder().encode(JSON.stringify(publicJwk));
      signed = await new jose.SignJWT(claims).setProtectedHeader({ alg, kid: providerKey.kid }).sign(secret);
    } else {
      const jwk = key === "stranger" ? strangerKey : providerKey;
      const privateKey = await jose.importJWK(jwk, "RS256");
      signed = await new jose.SignJWT(claims)
        .setProtectedHeader({ alg: "RS256", kid: jwk.kid, typ: "at+jwt" })
        .sign(privateKey);
    }
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(signed);
  } catch (e) {
    res.writeHead(400);
    res.end(String(e));
  }
});
await new Promise((resolve) => forge.listen(0, "127.0.0.1", resolve));

console.log(JSON.stringify({ issuer, forge: forge.address().port }));
