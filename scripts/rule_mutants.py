#!/usr/bin/env python3
"""Break one protocol rule at a time in uplink-proto, run its tests, and report which tests catch each break.

Usage: python3 scripts/rule_mutants.py [--cases N] [--from K]   (prints a Markdown table; exits 1 if a mutant
survives; --from K starts at the K-th rule, counting from 1)
Every source file is restored afterwards, even on failure.
"""
import os
import re
import signal
import subprocess
import sys

TIMEOUT = 120  # seconds for one run of the tests; a mutant that makes them hang is caught (they never pass)


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # so the `finally` below restores the file


signal.signal(signal.SIGTERM, _interrupted)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLED = "uplink-proto/src/sled.rs"
GATEWAY = "uplink-proto/src/gateway/session.rs"
HUB = "uplink-proto/src/gateway/hub.rs"
PENDING = "uplink-proto/src/pending.rs"
WIRE = "uplink-proto/src/wire.rs"

# (rule broken, file, exact text, replacement)
MUTANTS = [
    ("in-flight requests are not denied when the connection drops (they wait for their deadline)", SLED,
     "if let Some(perm) = self.perms.remove(key) {\n                    self.deny(key, perm.wire, Cause::ConnectionLost);\n                }",
     "let _ = key;"),
    ("frames are accepted from any connection, not only the live one", SLED,
     "Link::Connected { conn: c, last_rx, .. } if *c == conn => *last_rx = now,",
     "Link::Connected { last_rx, .. } => *last_rx = now,"),
    ("the back-off never resets after a stable connection", SLED,
     "                self.backoff.reset();\n", ""),
    ("no ping at heartbeats (a silent gateway is only noticed if it sends frames)", SLED,
     "self.out.push_back(Output::Ping { conn });", ""),
    ("the idle timeout is never enforced", SLED,
     "Link::Connected { conn, last_rx, .. } if last_rx + self.cfg.idle_timeout <= now =>",
     "Link::Connected { conn, last_rx, .. } if false && last_rx + self.cfg.idle_timeout <= now =>"),
    ("pending table: deadlines are never enforced (permissions and MCP calls, sled and gateway)", PENDING,
     "if entry.get().deadline.is_none_or(|d| d > now) {",
     "if true {"),
    ("queued requests are sent before identity", SLED,
     "self.send(conn, self.identity_text.clone());\n        let queued",
     "let queued"),
    ("a timed-out MCP call is cancelled without an answer", SLED,
     "            self.send_mcp_response(&c.req_id, &payload);\n            self.out.push_back(Output::CancelMcp { call });",
     "            let _ = payload;\n            self.out.push_back(Output::CancelMcp { call });"),
    ("the MCP call limit is not enforced", SLED,
     "if self.calls.len() >= self.cfg.max_mcp_calls {", "if false {"),
    ("the pending-permission limit is not enforced", SLED,
     "_ if self.perms.len() >= self.cfg.max_pending_permissions => Some(Cause::QueueFull),", ""),
    ("a duplicate request id replaces the pending one", SLED,
     "_ if self.perms.contains_wire(&id) => Some(Cause::DuplicateId),", ""),
    ("`approved` is true for any value but false (fail-open flags)", WIRE,
     "let is_true = |v: &Option<Lenient<'_>>| matches!(v, Some(Lenient::True));",
     "let is_true = |v: &Option<Lenient<'_>>| v.is_some();"),
    ("payloads and envelopes in array form are accepted", WIRE,
     "if is_object(text) { serde_json::from_str(text).ok() } else { None }",
     "serde_json::from_str(text).ok()"),
    ("shutdown reconnects later", SLED,
     "        self.link = Link::Closed;\n        self.emit_link();\n    }",
     "        self.link = Link::BackingOff { until: self.now, delay: Duration::ZERO, reason: LossReason::Disconnected };\n        self.emit_link();\n    }"),
    ("gateway: a withdrawn permission can still be decided", GATEWAY,
     "match self.perms.take_by_wire_if(&req_id, |_| true) {",
     "match self.perms.take_by_wire_if(&req_id, |_| false) {"),
    ("gateway: identity is not required first", GATEWAY,
     "_ => self.close_with(CloseReason::IdentityNotFirst),",
     "_ => {}"),
    ("gateway: pending work is not failed when the connection ends", GATEWAY,
     "for (id, _) in self.mcp.drain() {",
     "for (id, _) in PendingTable::<McpId, ()>::new(None).drain() {"),
    ("hub (replacement): another credential displaces a live holder", HUB,
     "Some(p) if p.holder.is_some() && p.credential != credential.id => Some(CloseReason::ProjectHeld),",
     "Some(p) if false && p.credential != credential.id => Some(CloseReason::ProjectHeld),"),
    ("hub (replacement): a credential may identify as a project outside its scope", HUB,
     "let refusal = if !credential.scope.covers(&project) {",
     "let refusal = if false {"),
    ("hub (replacement): the replaced connection is left open", HUB,
     "            c.session.close(now, CloseReason::Replaced);\n",
     ""),
    ("hub (routing): an MCP request goes to the oldest connection, not the project's holder", HUB,
     "let conn = p.holder.ok_or(McpRefused::NotConnected)?;",
     "let conn = self.conns.keys().next().copied().ok_or(McpRefused::NotConnected)?;"),
    ("hub (routing): a decision reaches the newest connection with that number, not the named one", HUB,
     "let Some(c) = self.conns.get_mut(&id.conn) else { return Err(refused(self)) };",
     "let Some(c) = self.conns.values_mut().filter(|c| c.session.pending().any(|(p, _)| p == id.perm)).last() else { return Err(refused(self)) };"),
    ("hub (listing): only the first pending permission of each connection is listed", HUB,
     "for (perm, p) in c.session.pending() {",
     "for (perm, p) in c.session.pending().take(1) {"),
    ("hub (listing): a disconnected sled's project stays held", HUB,
     "        p.holder = None;\n        self.next_gone += 1;",
     "        self.next_gone += 1;"),
    ("hub (bounds): disconnected sleds are never forgotten", HUB,
     "while self.gone_count > self.cfg.max_disconnected_sleds {",
     "while false && self.gone_count > self.cfg.max_disconnected_sleds {"),
    ("hub (budget): the fleet's pending input budget is not enforced", HUB,
     "if total > self.cfg.max_pending_input_bytes {", "if false {"),
    ("gateway (budget): a sled's pending input budget is not enforced", GATEWAY,
     "            > self.cfg.max_pending_input_bytes\n", "            > usize::MAX\n"),
    ("hub (connections): the unidentified budget is not enforced", HUB,
     "if self.unidentified >= self.cfg.max_unidentified {", "if false {"),
    ("hub (credentials): an expired credential is accepted", HUB,
     "if credential.is_expired(self.now) {\n            return Err(AcceptError::Expired);",
     "if false {\n            return Err(AcceptError::Expired);"),
    ("hub (credentials): a reload keeps a revoked credential's connections", HUB,
     "                None => false,\n", "                None => true,\n"),
    ("hub (credentials): a reload keeps a connection whose credential no longer covers its project", HUB,
     "!new.is_expired(now) && c.project.as_deref().is_none_or(|p| new.scope.covers(p))",
     "!new.is_expired(now)"),
    ("hub (credentials): a credential that expires keeps its connections open", HUB,
     "            if c.credential.is_expired(now) {\n                c.session.close(now, CloseReason::CredentialRevoked);",
     "            if false {\n                c.session.close(now, CloseReason::CredentialRevoked);"),
    ("gateway (liveness): a silent sled is never closed at the dead threshold", GATEWAY,
     "if self.last_seen + self.cfg.dead_after <= now {", "if false {"),
    ("sled: a request too large for a frame is sent anyway", SLED,
     "_ if wire::frame_len(", "_ if false && wire::frame_len("),
    ("sled: an MCP answer too large for a frame is sent anyway", SLED,
     "if !self.fits(&c.req_id, &payload) {", "if false {"),
    ("sled: a person's message is dropped", SLED,
     "let message = message.map(|m| String::from(wire::clip(&m, wire::MAX_MESSAGE_BYTES)));",
     "let message: Option<String> = message.and(None);"),
]


def run_tests(cases):
    env = dict(os.environ, PROPTEST_CASES=str(cases), CARGO_TERM_COLOR="never")
    # Build first (not timed), then run the tests with a time limit.
    subprocess.run(["cargo", "test", "-q", "-p", "uplink-proto", "--no-run"], cwd=ROOT, env=env, capture_output=True)
    try:
        r = subprocess.run(["cargo", "test", "-q", "-p", "uplink-proto", "--no-fail-fast"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return 124, ["(the tests hang: a test waits for a decision that never comes)"], True
    out = r.stdout + r.stderr
    failed = sorted(set(re.findall(r"^    ([\w:]+)$", out, re.M)))
    compiled = "error[" not in out and "could not compile" not in out
    return r.returncode, failed, compiled


def main():
    cases = 256
    if "--cases" in sys.argv:
        cases = int(sys.argv[sys.argv.index("--cases") + 1])
    start = int(sys.argv[sys.argv.index("--from") + 1]) - 1 if "--from" in sys.argv else 0
    rc, failed, _ = run_tests(cases)
    if rc != 0:
        sys.exit(f"the unmutated tests fail: {failed}")
    rows, survivors = [], 0
    for rule, path, old, new in MUTANTS[start:]:
        full = os.path.join(ROOT, path)
        original = open(full).read()
        if original.count(old) != 1:
            sys.exit(f"mutant for {rule!r} does not apply cleanly to {path}")
        try:
            open(full, "w").write(original.replace(old, new))
            rc, failed, compiled = run_tests(cases)
        finally:
            open(full, "w").write(original)
        if not compiled:
            verdict = "does not compile (rewrite the mutant)"
            survivors += 1
        elif rc == 0:
            verdict = "**SURVIVED**"
            survivors += 1
        else:
            verdict = ", ".join(t if t.startswith("(") else f"`{t}`" for t in failed[:6]) + (f" (+{len(failed) - 6} more)" if len(failed) > 6 else "")
        rows.append(f"| {rule} | `{path.split('/')[-1]}` | {verdict} |")
        print(rows[-1], flush=True)
    print()
    print("| rule broken | file | caught by |")
    print("|---|---|---|")
    print("\n".join(rows))
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
