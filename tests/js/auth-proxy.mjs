// A pass-through HTTP proxy that adds `Authorization: Bearer TOKEN` to every request, for clients that cannot
// send it (the conformance suite's server scenarios): `node auth-proxy.mjs TARGET_BASE TOKEN`. Everything else
// (method, path, headers including Host and Origin, bodies and event streams) passes as it is, both ways.
// Prints {"port": N} once it listens on 127.0.0.1.
import http from "node:http";

const [target, token] = process.argv.slice(2);
const upstream = new URL(target);

const proxy = http.createServer((req, res) => {
  const forward = http.request(
    {
      hostname: upstream.hostname,
      port: upstream.port,
      method: req.method,
      path: req.url,
      headers: { ...req.headers, authorization: `Bearer ${token}` },
    },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  forward.on("error", () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  // A client that goes away takes its request upstream with it.
  res.on("close", () => forward.destroy());
  req.pipe(forward);
});

proxy.listen(0, "127.0.0.1", () => console.log(JSON.stringify({ port: proxy.address().port })));
