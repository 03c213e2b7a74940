#!/usr/bin/env node
// Runs the pinned, real Claude Code CLI once in print mode against a (fake) Messages API and
// prints ONE JSON summary line to stdout.
//
//   node run.mjs --settings FILE --workdir DIR --api http://127.0.0.1:N
//                [--timeout-secs S (default 60)] [--extra-args '["--flag","value"]'] [--env '{"NAME":"value"}']
//
// The prompt is always "run it"; the CLI runs with DIR as its working directory (so a Bash tool
// `touch marker.txt` creates DIR/marker.txt), a fresh HOME and CLAUDE_CONFIG_DIR in a new
// DIR/.claude-home-XXXXXX, and a clean environment (PATH kept; autoupdater, telemetry, error
// reporting and nonessential traffic off; a fake API key). --env adds variables (e.g. ones a hook
// or an http hook's allowedEnvVars needs).
//
// Summary fields:
//   exit_code        the CLI's exit code (null if it died by a signal)
//   timed_out        true if it was killed at the timeout
//   hook_responses   [{hook_name, hook_event, stdout, stderr, exit_code, outcome}] from stream-json
//                    system/hook_response events (outcome: success | error | cancelled)
//   permission_denials  the result event's permission_denials ([] if there was no result event)
//   denied_by_hook   true if a system/permission_denied event says decision_reason_type "hook"
//   permission_denied_events  those events ({tool_name, decision_reason_type, decision_reason, message})
//   tool_results     text of every tool_result the CLI reported (in order)
//   validation_errors  debug-file lines "Hook JSON output validation failed — ..." and
//                    "... Hook returned incorrect event name ..." (first line of each)
//   session_rules    rules the CLI logged as added to destination 'session'
//                    ([{behavior, rule}]; null if the debug file could not be read)
//   permission_updates  every "Applying permission update: ..." debug message (any destination)
//   result           {subtype, is_error, result, terminal_reason} of the result event, or null
//   stderr           the CLI's stderr (last 2000 chars)
//   home, debug_file paths (left in place for inspection)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PKG_DIR = path.join(HERE, 'node_modules', '@anthropic-ai', 'claude-code-linux-x64');
const PINNED = '2.1.332';
const PROMPT = 'run it';

function fail(msg) {
  process.stderr.write(`run.mjs: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const o = { timeoutSecs: 60, extraArgs: [], env: {} };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) fail(`${a} needs a value`); return argv[++i]; };
    if (a === '--settings') o.settings = val();
    else if (a === '--workdir') o.workdir = val();
    else if (a === '--api') o.api = val();
    else if (a === '--timeout-secs') o.timeoutSecs = Number(val());
    else if (a === '--extra-args') {
      try { o.extraArgs = JSON.parse(val()); } catch (e) { fail(`--extra-args is not JSON: ${e.message}`); }
      if (!Array.isArray(o.extraArgs) || !o.extraArgs.every((x) => typeof x === 'string')) fail('--extra-args must be a JSON array of strings');
    } else if (a === '--env') {
      try { o.env = JSON.parse(val()); } catch (e) { fail(`--env is not JSON: ${e.message}`); }
      if (!o.env || typeof o.env !== 'object' || Array.isArray(o.env) || !Object.values(o.env).every((x) => typeof x === 'string'))
        fail('--env must be a JSON object of strings');
    } else fail(`unknown argument ${a}`);
  }
  if (!o.settings || !o.workdir || !o.api) fail('usage: node run.mjs --settings FILE --workdir DIR --api URL [--timeout-secs S] [--extra-args JSON] [--env JSON]');
  if (!(o.timeoutSecs > 0)) fail('--timeout-secs must be a positive number');
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const claudeBin = path.join(PKG_DIR, 'claude');
let version;
try { version = JSON.parse(fs.readFileSync(path.join(PKG_DIR, 'package.json'), 'utf8')).version; } catch {
  fail(`Claude Code is not installed: run  npm ci --prefix ${path.relative(process.cwd(), HERE) || '.'} --ignore-scripts --no-audit --no-fund --loglevel=error`);
}
if (version !== PINNED) fail(`installed Claude Code is ${version}, the kit is pinned to ${PINNED} (run npm ci)`);
const workdir = path.resolve(opts.workdir);
if (!fs.statSync(workdir, { throwIfNoEntry: false })?.isDirectory()) fail(`--workdir ${workdir} is not a directory`);
const settings = path.resolve(opts.settings);
if (!fs.existsSync(settings)) fail(`--settings ${settings} does not exist`);

const home = fs.mkdtempSync(path.join(workdir, '.claude-home-'));
const configDir = path.join(home, '.claude');
fs.mkdirSync(configDir);
const debugFile = path.join(home, 'debug.log');

const env = {
  PATH: process.env.PATH || '/usr/bin:/bin',
  HOME: home,
  CLAUDE_CONFIG_DIR: configDir,
  TMPDIR: process.env.TMPDIR || '/tmp',
  TERM: 'dumb',
  LANG: 'C.UTF-8',
  ANTHROPIC_BASE_URL: opts.api,
  ANTHROPIC_API_KEY: 'sk-ant-fake-key-for-tests',
  DISABLE_AUTOUPDATER: '1',
  DISABLE_TELEMETRY: '1',
  DISABLE_ERROR_REPORTING: '1',
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
  ...opts.env,
};

const args = ['-p', PROMPT, '--settings', settings, '--output-format', 'stream-json', '--verbose',
  '--include-hook-events', '--debug-file', debugFile, ...opts.extraArgs];

const child = spawn(claudeBin, args, { cwd: workdir, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
let stdout = '';
let stderr = '';
child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; if (stderr.length > 1e6) stderr = stderr.slice(-1e5); });

const killGroup = (sig) => { try { process.kill(-child.pid, sig); } catch { /* already gone */ } };
let timedOut = false;
let hardKill;
const timer = setTimeout(() => {
  timedOut = true;
  killGroup('SIGTERM');
  hardKill = setTimeout(() => killGroup('SIGKILL'), 3000);
}, opts.timeoutSecs * 1000);
// if we are told to stop, take the CLI (and its hooks / tool processes) down with us
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { killGroup('SIGKILL'); process.exit(1); });

const [code, signal, spawnError] = await new Promise((resolve) => {
  child.on('error', (e) => resolve([null, null, e]));
  child.on('close', (c, s) => resolve([c, s, null]));
});
clearTimeout(timer);
clearTimeout(hardKill);
killGroup('SIGKILL'); // leftovers (background tool processes) of this run only

// ---- stream-json
const summary = {
  exit_code: code,
  timed_out: timedOut,
  hook_responses: [],
  permission_denials: [],
  denied_by_hook: false,
  permission_denied_events: [],
  tool_results: [],
  validation_errors: [],
  session_rules: null,
  permission_updates: [],
  result: null,
  stderr: stderr.slice(-2000),
  home,
  debug_file: debugFile,
};
if (signal) summary.signal = signal;
if (spawnError) summary.spawn_error = String(spawnError.message || spawnError);
const unparsed = [];

function blockText(c) {
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) return c.map((p) => (p && p.type === 'text' ? p.text : '')).join('\n');
  return c == null ? '' : JSON.stringify(c);
}

for (const line of stdout.split('\n')) {
  if (!line.trim()) continue;
  let ev;
  try { ev = JSON.parse(line); } catch { unparsed.push(line.slice(0, 300)); continue; }
  if (ev.type === 'system' && ev.subtype === 'hook_response') {
    summary.hook_responses.push({ hook_name: ev.hook_name, hook_event: ev.hook_event, stdout: ev.stdout ?? ev.output ?? '',
      stderr: ev.stderr ?? '', exit_code: ev.exit_code ?? null, outcome: ev.outcome ?? null });
  } else if (ev.type === 'system' && ev.subtype === 'permission_denied') {
    summary.permission_denied_events.push({ tool_name: ev.tool_name, decision_reason_type: ev.decision_reason_type ?? null,
      decision_reason: ev.decision_reason ?? null, message: ev.message ?? null });
    if (ev.decision_reason_type === 'hook') summary.denied_by_hook = true;
  } else if (ev.type === 'user' && ev.message && Array.isArray(ev.message.content)) {
    for (const b of ev.message.content) if (b && b.type === 'tool_result') summary.tool_results.push(blockText(b.content));
  } else if (ev.type === 'result') {
    summary.permission_denials = Array.isArray(ev.permission_denials) ? ev.permission_denials : [];
    summary.result = { subtype: ev.subtype ?? null, is_error: ev.is_error ?? null, result: ev.result ?? null, terminal_reason: ev.terminal_reason ?? null };
  }
}
if (unparsed.length) summary.unparsed_stdout = unparsed.slice(0, 20);

// ---- debug file: lines "<ISO time> [LEVEL] <message>", the message JSON-quoted when it has newlines
let debugText = null;
try { debugText = fs.readFileSync(debugFile, 'utf8'); } catch { /* no debug file */ }
if (debugText !== null) {
  summary.session_rules = [];
  const seen = new Set();
  for (const raw of debugText.split('\n')) {
    const m = /^\S+ \[[A-Z]+\] (.*)$/.exec(raw);
    if (!m) continue;
    let msg = m[1];
    if (msg.startsWith('"')) { try { msg = JSON.parse(msg); } catch { /* keep raw */ } }
    const first = String(msg).split('\n')[0];
    if (first.startsWith('Hook JSON output validation failed')) {
      if (!seen.has(first)) { seen.add(first); summary.validation_errors.push(first); }
    } else if (first.includes('Hook returned incorrect event name') && !first.includes(') error: status code')) {
      const line = first.replace(/\. Full stdout:.*$/, '');
      if (!seen.has(line)) { seen.add(line); summary.validation_errors.push(line); }
    }
    const upd = /^Applying permission update: (.*)$/.exec(first);
    if (upd) {
      summary.permission_updates.push(upd[1]);
      const r = /^Adding \d+ (allow|deny|ask) rule\(s\) to destination '([^']+)': (\[.*\])$/.exec(upd[1]);
      if (r && r[2] === 'session') {
        let rules = [];
        try { rules = JSON.parse(r[3]); } catch { rules = [r[3]]; }
        for (const rule of rules) summary.session_rules.push({ behavior: r[1], rule });
      }
    }
  }
}

process.stdout.write(JSON.stringify(summary) + '\n');
