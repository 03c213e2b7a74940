// The module hook of node20.mjs: rewrites the conformance CLI's `import {…, globSync as x, …} from "fs"`.
export async function load(url, context, nextLoad) {
  const loaded = await nextLoad(url, context);
  if (!url.endsWith("/@modelcontextprotocol/conformance/dist/index.js")) return loaded;
  const source = String(loaded.source).replace(/import\{([^}]*)\}from"fs"/, (whole, names) => {
    const parts = names.split(",");
    const glob = parts.filter((p) => p.trim().startsWith("globSync"));
    if (glob.length === 0) return whole;
    const rest = parts.filter((p) => !p.trim().startsWith("globSync"));
    return `import{${rest.join(",")}}from"fs";import{${glob.join(",")}}from"glob"`;
  });
  return { ...loaded, source };
}
