#!/usr/bin/env node
// A fake Anthropic Messages API for driving the real Claude Code CLI end to end.
//
//   node fake-api.mjs            listens on 127.0.0.1, port 0; prints {"port":N} once listening
//
// POST /v1/messages (streaming SSE; a JSON body when the request says "stream": false):
//   - the main conversation (a request offering tools) with no tool_result anywhere in it yet
//       -> one tool_use of env FAKE_TOOL (default Bash) with input env FAKE_TOOL_INPUT (JSON;
//          default {"command":"touch marker.txt","description":"make a marker"}), stop_reason tool_use
//   - anything else (a conversation that already carries a tool_result, side requests without tools)
//       -> a short text, stop_reason end_turn
// Every tool_result received (once per tool_use_id) is appended as a JSON line
// {"tool_use_id","text","is_error"} to the file named by env FAKE_RESULTS, if set.
// env FAKE_LOG: if set, one JSON line per request is appended there (for debugging a test).
// Claude Code can send messages whose role is "system" (2.1.332); only user/assistant turns are looked at.
// Exits on SIGTERM / SIGINT.
import http from 'node:http';
import fs from 'node:fs';

const TOOL = process.env.FAKE_TOOL || 'Bash';
let TOOL_INPUT;
try {
  TOOL_INPUT = JSON.parse(process.env.FAKE_TOOL_INPUT || '{"command":"touch marker.txt","description":"make a marker"}');
} catch (e) {
  console.error(`fake-api: FAKE_TOOL_INPUT is not JSON: ${e.message}`);
  process.exit(2);
}
const RESULTS = process.env.FAKE_RESULTS || '';
const LOG = process.env.FAKE_LOG || '';
const seenResults = new Set();
let toolUseCounter = 0;

function append(file, obj) {
  if (!file) return;
  try { fs.appendFileSync(file, JSON.stringify(obj) + '\n'); } catch (e) { console.error(`fake-api: cannot write ${file}: ${e.message}`); }
}

function contentBlocks(message) {
  const c = message && message.content;
  if (Array.isArray(c)) return c.filter((b) => b && typeof b === 'object');
  if (typeof c === 'string') return [{ type: 'text', text: c }];
  return [];
}

function resultText(block) {
  const c = block.content;
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) return c.map((p) => (p && p.type === 'text' ? p.text : p && p.type ? `[${p.type}]` : '')).join('\n');
  return c == null ? '' : JSON.stringify(c);
}

function assistantMessage(model, blocks, stopReason) {
  return {
    id: `msg_fake_${Date.now()}_${toolUseCounter}`, type: 'message', role: 'assistant', model,
    content: blocks, stop_reason: stopReason, stop_sequence: null,
    usage: { input_tokens: 10, output_tokens: 5 },
  };
}

function sseEvents(msg) {
  const start = { ...msg, content: [], stop_reason: null, usage: { input_tokens: 10, output_tokens: 1 } };
  const ev = [['message_start', { type: 'message_start', message: start }]];
  msg.content.forEach((b, index) => {
    if (b.type === 'text') {
      ev.push(['content_block_start', { type: 'content_block_start', index, content_block: { type: 'text', text: '' } }]);
      ev.push(['content_block_delta', { type: 'content_block_delta', index, delta: { type: 'text_delta', text: b.text } }]);
    } else {
      ev.push(['content_block_start', { type: 'content_block_start', index, content_block: { type: 'tool_use', id: b.id, name: b.name, input: {} } }]);
      ev.push(['content_block_delta', { type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: JSON.stringify(b.input) } }]);
    }
    ev.push(['content_block_stop', { type: 'content_block_stop', index }]);
  });
  ev.push(['message_delta', { type: 'message_delta', delta: { stop_reason: msg.stop_reason, stop_sequence: null }, usage: { output_tokens: 5 } }]);
  ev.push(['message_stop', { type: 'message_stop' }]);
  return ev.map(([event, data]) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`).join('');
}

function json(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'request-id': 'req_fake', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function handleMessages(req, res, body) {
  let j;
  try { j = JSON.parse(body); } catch { return json(res, 400, { type: 'error', error: { type: 'invalid_request_error', message: 'fake-api: body is not JSON' } }); }
  const turns = (Array.isArray(j.messages) ? j.messages : []).filter((m) => m && (m.role === 'user' || m.role === 'assistant'));
  const toolResults = [];
  for (const m of turns) if (m.role === 'user') for (const b of contentBlocks(m)) if (b.type === 'tool_result') toolResults.push(b);
  for (const b of toolResults) {
    const key = b.tool_use_id || JSON.stringify(b);
    if (seenResults.has(key)) continue;
    seenResults.add(key);
    append(RESULTS, { tool_use_id: b.tool_use_id ?? null, text: resultText(b), is_error: b.is_error === true });
  }
  const tools = Array.isArray(j.tools) ? j.tools : [];
  const last = turns[turns.length - 1];
  const model = typeof j.model === 'string' ? j.model : 'claude-sonnet-4-5';
  let msg;
  if (tools.length > 0 && toolResults.length === 0 && last && last.role === 'user') {
    toolUseCounter += 1;
    msg = assistantMessage(model, [{ type: 'tool_use', id: `toolu_fake_${process.pid}_${toolUseCounter}`, name: TOOL, input: TOOL_INPUT }], 'tool_use');
  } else {
    const lastResult = toolResults[toolResults.length - 1];
    msg = assistantMessage(model, [{ type: 'text', text: lastResult ? `done: ${resultText(lastResult).slice(0, 200)}` : 'ok' }], 'end_turn');
  }
  append(LOG, { url: req.url, model: j.model, stream: j.stream, tools: tools.length, turns: turns.length,
    roles: (j.messages || []).map((m) => m && m.role), tool_results: toolResults.length, answer: msg.stop_reason });
  if (j.stream === false) return json(res, 200, msg);
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'request-id': 'req_fake' });
  res.end(sseEvents(msg));
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('error', () => res.destroy());
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const url = req.url || '';
    try {
      if (req.method === 'POST' && /^\/v1\/messages\/count_tokens(\?|$)/.test(url)) return json(res, 200, { input_tokens: 10 });
      if (req.method === 'POST' && /^\/v1\/messages(\?|$)/.test(url)) return handleMessages(req, res, body);
      append(LOG, { url, method: req.method, answer: 404 });
      return json(res, 404, { type: 'error', error: { type: 'not_found_error', message: `fake-api: no ${req.method} ${url}` } });
    } catch (e) {
      console.error(`fake-api: ${e.stack || e}`);
      if (!res.headersSent) json(res, 500, { type: 'error', error: { type: 'api_error', message: 'fake-api internal error' } });
      else res.destroy();
    }
  });
});

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
