// Lets the MCP conformance suite's CLI run on Node 20: it imports `globSync` from `fs`, which Node 22 added.
// Loaded with `node --import ./node20.mjs`; the hook gives the CLI the `glob` package's `globSync` instead.
import { register } from "node:module";

if (!("globSync" in (await import("node:fs")))) {
  register("./node20-hooks.mjs", import.meta.url);
}
