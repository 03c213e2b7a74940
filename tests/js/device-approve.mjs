// The person's part of a device sign-in (RFC 8628) at the tests' OpenID provider (oidc.mjs), done over HTTP
// as a browser would: `node device-approve.mjs VERIFICATION_URL USER [abort]`. Opens the page the device
// showed, enters or confirms its code (or aborts, with `abort`), signs in as USER (any password) and gives
// consent. Prints {"done": TEXT} with the provider's last page's heading.
import { browser } from "./provider-login.mjs";

const [start, user, abort] = process.argv.slice(2);
const go = browser();
const post = (url, form) =>
  go(url, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(form).toString(),
  });
const hidden = (page, name) => new RegExp(`name="${name}" value="([^"]*)"`).exec(page)?.[1] ?? "";

let url = new URL(start);
let aborted = false;
let res = await go(url);
for (let step = 0; step < 30; step++) {
  const location = res.headers.get("location");
  if (location) {
    url = new URL(location, url);
    res = await go(url);
    continue;
  }
  const page = await res.text();
  if (aborted) {
    // The provider's page after the person aborted.
    console.log(JSON.stringify({ done: "aborted", status: res.status }));
    process.exit(0);
  }
  const action = (id) => new URL(new RegExp(`id="${id}"[^>]*action="([^"]*)"`).exec(page)?.[1] ?? url.href, url);
  if (page.includes('name="prompt" value="login"')) {
    res = await post(url, { prompt: "login", login: user, password: "any" });
  } else if (page.includes('name="prompt" value="consent"')) {
    res = await post(url, { prompt: "consent" });
  } else if (page.includes("op.deviceInputForm")) {
    const code = /name="user_code"[^>]*value="([^"]*)"|value="([^"]*)"[^>]*name="user_code"/.exec(page);
    res = await post(action("op.deviceInputForm"), { xsrf: hidden(page, "xsrf"), user_code: code?.[1] ?? code?.[2] ?? "" });
  } else if (page.includes("op.deviceConfirmForm")) {
    const form = { xsrf: hidden(page, "xsrf"), user_code: hidden(page, "user_code") };
    res = await post(action("op.deviceConfirmForm"), abort ? { ...form, abort: "yes" } : { ...form, confirm: "yes" });
    aborted = Boolean(abort);
  } else if (page.includes("<title>Submitting Callback</title>")) {
    // The provider's own page that posts itself back (form_post), as a browser's script would.
    const target = new URL(/<form method="post" action="([^"]*)"/.exec(page)[1].replaceAll("&amp;", "&"), url);
    const form = Object.fromEntries(
      [...page.matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)"/g)].map((m) => [m[1], m[2]]),
    );
    res = await post(target, form);
  } else {
    const heading = /<h1>([^<]*)<\/h1>/.exec(page)?.[1] ?? page.slice(0, 200);
    console.log(JSON.stringify({ done: heading, status: res.status }));
    process.exit(0);
  }
}
console.error("too many steps");
process.exit(1);
