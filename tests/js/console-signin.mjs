// A person's sign-in to a gateway's console at the tests' OpenID provider, stopped before the gateway's
// callback: `node console-signin.mjs GATEWAY_BASE USER [PUBLIC_URL]` (the gateway's public URL, on which the
// callback is, when it is not GATEWAY_BASE). Prints {"callback": URL, "binding": VALUE}: the
// callback the provider sends the browser to, and the gateway's cookie that binds the sign-in to the browser.
import { signIn } from "./provider-login.mjs";

const [base, user, publicUrl = base] = process.argv.slice(2);
const start = await fetch(`${base}/console/oidc`, { redirect: "manual" });
const location = start.headers.get("location");
if (start.status !== 303 || !location) {
  console.error(`the gateway did not send the browser to the provider: ${start.status} ${await start.text()}`);
  process.exit(1);
}
const binding = start.headers.getSetCookie().map((c) => /^uplink_oidc=([^;]*)/.exec(c)?.[1]).find(Boolean);
const callback = await signIn(location, user, `${publicUrl}/console/oidc/callback`);
console.log(JSON.stringify({ callback, binding, authorize: location }));
