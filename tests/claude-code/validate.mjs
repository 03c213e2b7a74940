#!/usr/bin/env node
// Validates JSON files against Claude Code's OWN schemas, taken at run time from the installed,
// pinned Claude Code binary (nothing of Claude Code is stored in this repository).
//
//   node validate.mjs KIND [--event NAME] FILE...     (no FILE: reads one JSON document from stdin)
//
// KIND:
//   hook-output               what a command hook prints on stdout (the parser Claude Code runs on it)
//                             --event NAME additionally applies the runtime check that
//                             hookSpecificOutput.hookEventName, when present, equals NAME
//                             ("Hook returned incorrect event name")
//   prompt-tool-result        the result of a --permission-prompt-tool (SDK canUseTool) call
//   permission-request-input  the PermissionRequest hook input event
// Exit status: 0 if every file is accepted, 1 if any is rejected or not JSON, 2 on usage/setup errors.
// One line per file: "<file>: ACCEPTED ..." or "<file>: REJECTED <issues>".
// env CLAUDE_BIN overrides the binary (default: node_modules/@anthropic-ai/claude-code-linux-x64/claude here).
//
// How: Claude Code's npm package is a Bun single-file executable whose module graph (the bundled
// JavaScript chunks) is stored in the ELF after the trailer "\n---- Bun! ----\n". This script reads
// that graph, finds the chunk holding Claude Code's schema library (a zod-like library of its own)
// and loads it as an ES module, then finds the requested schema declaration by a marker string and
// its (minified, version-specific) name, collects every top-level declaration it transitively needs
// across chunks, writes them into one ES module in a temporary directory, imports it and calls
// safeParse. The minified names are specific to the pinned version; a built-in self-check per kind
// (known-good and known-bad samples) fails loudly if the extraction no longer yields the real schema.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as acorn from 'acorn';
import * as walk from 'acorn-walk';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PINNED = '2.1.332';

// ---- what to extract (located by marker strings, named by their minified names in 2.1.332)
const KINDS = {
  'hook-output': {
    // union(async acknowledgement, sync hook response) that hook stdout JSON is parsed with
    chunkMarker: 'Whether Claude should continue after hook (default: true)',
    schemaName: '$Pe',
    good: [{ hookSpecificOutput: { hookEventName: 'PermissionRequest', decision: { behavior: 'allow' } } },
      { hookSpecificOutput: { hookEventName: 'PermissionRequest', decision: { behavior: 'deny', message: 'no' } } }],
    bad: [{ hookSpecificOutput: { hookEventName: 'PermissionRequest', decision: { behavior: 'maybe' } } },
      { hookSpecificOutput: { hookEventName: 'PermissionRequest', decision: { behavior: 'allow', updatedPermissions: [{ type: 'frobnicate' }] } } }],
  },
  'prompt-tool-result': {
    chunkMarker: "Expected {behavior: 'allow', updatedInput?: object} or {behavior: 'deny', message: string}.",
    schemaName: 'hUt',
    // updatedPermissions is parsed by a helper that never rejects the answer (a malformed list is
    // dropped with a warning; only more than 4096 entries in all is an issue). Its closure reaches
    // into application state, so it is replaced by an equivalent accept-anything-optional schema
    // built from the same library (L$ = the schema library module; O = array, de = unknown).
    stopAt: { Qjt: '(()=>L$.O(L$.de()).optional().catch(void 0))' },
    good: [{ behavior: 'allow', updatedInput: { command: 'ls' } }, { behavior: 'deny', message: 'no' }],
    bad: [{ behavior: 'deny' }, { behavior: 'maybe' }],
  },
  'permission-request-input': {
    chunkMarker: '@internal Set for the ask before a skill of an MCP server loads',
    schemaName: 'EK',
    good: [{ session_id: 's', transcript_path: '/t', cwd: '/c', hook_event_name: 'PermissionRequest', tool_name: 'Bash',
      tool_input: { command: 'ls' }, permission_suggestions: [{ type: 'setMode', mode: 'acceptEdits', destination: 'session' }] }],
    bad: [{ session_id: 's', transcript_path: '/t', cwd: '/c', hook_event_name: 'PreToolUse', tool_name: 'Bash', tool_input: {} },
      { session_id: 's', transcript_path: '/t', cwd: '/c', hook_event_name: 'PermissionRequest', tool_input: {} }],
  },
};

function usage(msg) {
  if (msg) console.error(`validate.mjs: ${msg}`);
  console.error(`usage: node validate.mjs {${Object.keys(KINDS).join('|')}} [--event NAME] FILE...`);
  process.exit(2);
}

// ---- binary
function findBinary() {
  if (process.env.CLAUDE_BIN) return { bin: process.env.CLAUDE_BIN, version: null };
  const dir = path.join(HERE, 'node_modules', '@anthropic-ai', 'claude-code-linux-x64');
  let version;
  try { version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version; } catch {
    usage(`Claude Code is not installed: npm ci --prefix ${HERE} --ignore-scripts --no-audit --no-fund --loglevel=error`);
  }
  if (version !== PINNED) usage(`installed Claude Code is ${version}, this validator is pinned to ${PINNED}`);
  return { bin: path.join(dir, 'claude'), version };
}

// Bun standalone module graph: after the payload comes a trailer "\n---- Bun! ----\n"; 32 bytes
// before it a u64 payload byte count, then {u32 offset, u32 length} of the module table, whose
// 52-byte records start with {name offset, name length, contents offset, contents length}.
function readBunModules(bin) {
  const f = fs.readFileSync(bin);
  const T = f.lastIndexOf(Buffer.from('\n---- Bun! ----\n'));
  if (T < 0) throw new Error(`${bin}: no Bun standalone trailer`);
  const byteCount = Number(f.readBigUInt64LE(T - 32));
  const mo = f.readUInt32LE(T - 24), ml = f.readUInt32LE(T - 20);
  let P = -1;
  for (let d = -64; d <= 64 && P < 0; d++) {
    const c = T - byteCount + d;
    if (c < 0 || c + mo + 8 > f.length) continue;
    const no = f.readUInt32LE(c + mo), nl = f.readUInt32LE(c + mo + 4);
    if (c + no + nl <= f.length && f.toString('latin1', c + no, c + no + 13) === '/$bunfs/root/') P = c;
  }
  if (P < 0) throw new Error(`${bin}: cannot locate the Bun module graph`);
  const RS = 52, mods = new Map();
  for (let k = 0; k < Math.floor(ml / RS); k++) {
    const r = P + mo + k * RS;
    const no = f.readUInt32LE(r), nl = f.readUInt32LE(r + 4), co = f.readUInt32LE(r + 8), cl = f.readUInt32LE(r + 12);
    const name = f.toString('utf8', P + no, P + no + nl).replace('/$bunfs/root/', '');
    if (name.endsWith('.js')) mods.set(name, f.toString('utf8', P + co, P + co + cl));
  }
  if (mods.size === 0) throw new Error(`${bin}: empty Bun module graph`);
  return mods;
}

// ---- top-level declarations of a chunk, its imports and exports
const parsedChunks = new Map();
function parseChunk(mods, name) {
  if (parsedChunks.has(name)) return parsedChunks.get(name);
  const src = mods.get(name);
  const ast = acorn.parse(src, { ecmaVersion: 'latest', sourceType: 'module' });
  const imports = new Map(), decls = new Map(), exportsMap = new Map();
  for (const node of ast.body) {
    if (node.type === 'ImportDeclaration') {
      const from = node.source.value.replace('/$bunfs/root/', '');
      for (const s of node.specifiers) if (s.type === 'ImportSpecifier') imports.set(s.local.name, { from, name: s.imported.name });
    } else if (node.type === 'VariableDeclaration') {
      for (const d of node.declarations) if (d.id.type === 'Identifier') decls.set(d.id.name, { kind: node.kind, node: d });
    } else if (node.type === 'FunctionDeclaration' || node.type === 'ClassDeclaration') {
      decls.set(node.id.name, { kind: 'fn', node });
    } else if (node.type === 'ExportNamedDeclaration' && !node.declaration) {
      for (const s of node.specifiers) exportsMap.set(s.exported.name, s.local.name);
    }
  }
  const r = { src, imports, decls, exportsMap };
  parsedChunks.set(name, r);
  return r;
}

function bindingNames(p, out) {
  if (!p) return out;
  if (p.type === 'Identifier') out.add(p.name);
  else if (p.type === 'AssignmentPattern') bindingNames(p.left, out);
  else if (p.type === 'RestElement') bindingNames(p.argument, out);
  else if (p.type === 'ArrayPattern') p.elements.forEach((e) => bindingNames(e, out));
  else if (p.type === 'ObjectPattern') p.properties.forEach((q) => bindingNames(q.type === 'RestElement' ? q.argument : q.value, out));
  return out;
}

// identifiers a declaration may reference (over-approximation is fine: unknown ones are ignored)
function referencedNames(node) {
  const refs = new Set(), bound = new Set();
  walk.fullAncestor(node, (n, _st, anc) => {
    if (n.type === 'FunctionExpression' || n.type === 'ArrowFunctionExpression' || n.type === 'FunctionDeclaration') for (const p of n.params) bindingNames(p, bound);
    if (n.type === 'VariableDeclarator' && n !== node) bindingNames(n.id, bound);
    if (n.type === 'CatchClause' && n.param) bindingNames(n.param, bound);
    if (n.type !== 'Identifier') return;
    const parent = anc[anc.length - 2];
    if (parent && parent.type === 'MemberExpression' && parent.property === n && !parent.computed) return;
    if (parent && parent.type === 'Property' && parent.key === n && !parent.computed && !parent.shorthand) return;
    refs.add(n.name);
  });
  for (const b of bound) refs.delete(b);
  return refs;
}

const GLOBALS = new Set(Object.getOwnPropertyNames(globalThis).concat(['undefined', 'arguments', 'this', 'require', 'process', 'Buffer', 'console']));

async function buildSchema(mods, { chunkMarker, schemaName, stopAt = {} }, workDir) {
  const libName = [...mods.keys()].find((k) => mods.get(k).includes('A schema callback returned a Promise'));
  if (!libName) throw new Error('schema library chunk not found');
  // the schema library chunk and its dependency chunks load in Node as they are
  const writeVerbatim = (name, seen = new Set()) => {
    if (seen.has(name)) return;
    seen.add(name);
    const src = mods.get(name).replace(/"\/\$bunfs\/root\//g, '"./');
    fs.writeFileSync(path.join(workDir, name), src);
    for (const m of src.matchAll(/from"\.\/([^"]+)"/g)) writeVerbatim(m[1], seen);
  };
  writeVerbatim(libName);
  fs.writeFileSync(path.join(workDir, 'package.json'), '{"type":"module"}');

  const chunk = [...mods.keys()].find((k) => k !== libName && mods.get(k).includes(chunkMarker));
  if (!chunk) throw new Error(`marker not found in the binary: ${chunkMarker}`);
  if (!parseChunk(mods, chunk).decls.has(schemaName)) throw new Error(`${schemaName} is not declared in ${chunk} (another Claude Code version?)`);

  const needed = new Map(), alias = new Map(), stubs = new Set(), stopped = new Map(), order = [];
  const keyOf = (c, n) => `${c}|${n}`;
  const visit = (c, n) => {
    const key = keyOf(c, n);
    if (needed.has(key) || alias.has(key) || stubs.has(key) || stopped.has(key)) return key;
    if (c === libName) { alias.set(key, `LIB|${n}`); return key; }
    if (Object.hasOwn(stopAt, n)) { stopped.set(key, stopAt[n]); return key; }
    const pc = parseChunk(mods, c);
    if (pc.decls.has(n)) {
      const d = pc.decls.get(n);
      needed.set(key, { chunk: c, d });
      for (const f of referencedNames(d.node)) if (f !== n && !GLOBALS.has(f) && (pc.decls.has(f) || pc.imports.has(f))) visit(c, f);
      order.push(key);
      return key;
    }
    if (pc.imports.has(n)) {
      const im = pc.imports.get(n);
      if (!mods.has(im.from)) { stubs.add(key); return key; }
      const local = im.from === libName ? im.name : (parseChunk(mods, im.from).exportsMap.get(im.name) ?? im.name);
      alias.set(key, visit(im.from, local));
      return key;
    }
    stubs.add(key);
    return key;
  };
  visit(chunk, schemaName);

  const mangle = (key) => {
    while (alias.has(key)) key = alias.get(key);
    if (stopped.has(key)) return stopped.get(key);
    if (key.startsWith('LIB|')) return `L$.${key.slice(4)}`;
    const [c, n] = key.split('|');
    return `${c.replace(/[^a-z0-9]/gi, '_')}__${n}`;
  };
  const fnDecls = [], varDecls = [];
  for (const key of order) {
    const { chunk: c, d } = needed.get(key);
    const pc = parseChunk(mods, c);
    const localBound = new Set();
    walk.full(d.node, (n) => {
      if ((n.type === 'FunctionExpression' || n.type === 'ArrowFunctionExpression' || n.type === 'FunctionDeclaration') && n !== d.node) for (const p of n.params) bindingNames(p, localBound);
      if (n.type === 'VariableDeclarator' && n !== d.node) bindingNames(n.id, localBound);
      if (n.type === 'CatchClause' && n.param) bindingNames(n.param, localBound);
    });
    if (d.node.type === 'FunctionDeclaration') for (const p of d.node.params) bindingNames(p, localBound);
    const edits = [[d.node.id.start, d.node.id.end, mangle(key)]];
    const known = (k2) => needed.has(k2) || alias.has(k2) || stopped.has(k2);
    walk.ancestor(d.node, {
      Identifier(n, _st, anc) {
        if (n === d.node.id) return;
        const parent = anc[anc.length - 2];
        if (parent && parent.type === 'MemberExpression' && parent.property === n && !parent.computed) return;
        const k2 = keyOf(c, n.name);
        if (parent && parent.type === 'Property' && parent.key === n && !parent.computed) {
          if (parent.shorthand && !localBound.has(n.name) && (known(k2) || stubs.has(k2)))
            edits.push([n.start, n.end, `${n.name}:${stubs.has(k2) ? '__stub' : mangle(k2)}`]);
          return;
        }
        if (localBound.has(n.name)) return;
        if (known(k2)) edits.push([n.start, n.end, mangle(k2)]);
        else if (stubs.has(k2)) edits.push([n.start, n.end, '__stub']);
      },
    });
    edits.sort((a, b) => b[0] - a[0]);
    let s = pc.src.slice(d.node.start, d.node.end);
    for (const [a, b, r] of edits) s = s.slice(0, a - d.node.start) + r + s.slice(b - d.node.start);
    if (d.kind === 'fn') fnDecls.push(s); else varDecls.push(`var ${s};`);
  }
  let out = `import * as L$ from './${libName}';\n`;
  out += `const __stub = new Proxy(function(){}, { get: (t, k) => k === Symbol.toPrimitive ? () => '' : __stub, apply: () => undefined });\n`;
  out += fnDecls.join('\n') + '\n' + varDecls.join('\n') + '\n';
  out += `export const schema = ${mangle(keyOf(chunk, schemaName))};\n`;
  // Node 20 has no explicit resource management; `using x=` -> `const x=` (disposal is irrelevant here)
  out = out.replace(/\bawait using ([A-Za-z_$][\w$]*)=/g, 'const $1=').replace(/(?<![\w$.])using ([A-Za-z_$][\w$]*)=/g, 'const $1=');
  const file = path.join(workDir, `schema_${schemaName.replace(/\W/g, '_')}.mjs`);
  fs.writeFileSync(file, out);
  let s = (await import(pathToFileURL(file).href)).schema;
  if (typeof s === 'function' && typeof s.safeParse !== 'function') s = s(); // lazily declared schema
  if (!s || typeof s.safeParse !== 'function') throw new Error(`${schemaName} did not evaluate to a schema`);
  return s;
}

// ---- main
const argv = process.argv.slice(2);
const kind = argv.shift();
if (!kind || !KINDS[kind]) usage(kind ? `unknown kind ${kind}` : undefined);
let event = null;
const files = [];
while (argv.length) {
  const a = argv.shift();
  if (a === '--event') { event = argv.shift(); if (!event) usage('--event needs a value'); } else files.push(a);
}
if (event && kind !== 'hook-output') usage('--event only applies to hook-output');

const spec = KINDS[kind];
const { bin } = findBinary();
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cc-validate-'));
let schema;
try {
  schema = await buildSchema(readBunModules(bin), spec, workDir);
} catch (e) {
  console.error(`validate.mjs: cannot build the ${kind} schema from ${bin}: ${e.stack || e}`);
  process.exit(2);
} finally {
  fs.rmSync(workDir, { recursive: true, force: true });
}
// self-check: the extracted schema must behave like the real one on known samples
for (const g of spec.good) if (!schema.safeParse(g).success) { console.error(`validate.mjs: self-check failed: ${kind} rejects ${JSON.stringify(g)}`); process.exit(2); }
for (const b of spec.bad) if (schema.safeParse(b).success) { console.error(`validate.mjs: self-check failed: ${kind} accepts ${JSON.stringify(b)}`); process.exit(2); }

const inputs = files.length ? files.map((f) => [f, () => fs.readFileSync(f, 'utf8')]) : [['-', () => fs.readFileSync(0, 'utf8')]];
let ok = true;
for (const [name, read] of inputs) {
  let text;
  try { text = read(); } catch (e) { console.log(`${name}: UNREADABLE (${e.message})`); ok = false; continue; }
  let val;
  try { val = JSON.parse(text); } catch (e) { console.log(`${name}: NOT JSON (${e.message})`); ok = false; continue; }
  const r = schema.safeParse(val);
  if (!r.success) { ok = false; console.log(`${name}: REJECTED ${JSON.stringify(r.error.issues)}`); continue; }
  const got = r.data && typeof r.data === 'object' ? r.data.hookSpecificOutput?.hookEventName : undefined;
  if (event && got !== undefined && got !== event) {
    ok = false;
    console.log(`${name}: REJECTED incorrect event name: expected '${event}' but got '${got}'`);
    continue;
  }
  console.log(`${name}: ACCEPTED ${JSON.stringify(r.data)}`);
}
process.exit(ok ? 0 : 1);
