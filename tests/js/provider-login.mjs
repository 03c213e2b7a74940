// The person's part of a sign-in at the tests' OpenID provider (oidc.mjs), done over HTTP as a browser would:
// follows redirects by hand with a cookie jar, fills the provider's sign-in form as `user` (any password) and
// gives consent, and returns the URL the provider finally sends the browser to under `redirect` (which
// carries the code, or the error), without fetching it.
export async function signIn(start, user, redirect) {
  const go = browser();
  let res = await go(start);
  for (let step = 0; step < 20; step++) {
    const location = res.headers.get("location");
    if (!location) throw new Error(`the provider stopped at ${res.status}: ${(await res.text()).slice(0, 300)}`);
    const next = new URL(location, start);
    if (next.href.startsWith(redirect)) return next.href;
    if (next.pathname.startsWith("/interaction/")) {
      const page = await (await go(next)).text();
      const prompt = /name="prompt" value="(\w+)"/.exec(page)?.[1];
      const form = prompt === "login" ? { prompt, login: user, password: "any" } : { prompt };
      res = await go(next, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(form).toString(),
      });
    } else {
      res = await go(next);
    }
  }
  throw new Error("too many redirects");
}

// A fetch that keeps cookies in `jar` and follows no redirect, as the tests' stand-in for a browser.
export function browser(jar = new Map()) {
  return async (target, init = {}) => {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
    const res = await fetch(target, { ...init, redirect: "manual", headers: { ...(init.headers ?? {}), cookie } });
    for (const line of res.headers.getSetCookie()) {
      const [pair] = line.split(";");
      const at = pair.indexOf("=");
      jar.set(pair.slice(0, at), pair.slice(at + 1));
    }
    return res;
  };
}
