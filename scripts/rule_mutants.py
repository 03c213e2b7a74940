#!/usr/bin/env python3
"""Break one protocol rule at a time in uplink-proto, run its tests, and report which tests catch each break.

Usage: python3 scripts/rule_mutants.py [--cases N] [--from K]   (prints a Markdown table; exits 1 if a mutant
survives; --from K starts at the K-th rule, counting from 1)
       python3 scripts/rule_mutants.py --check   (runs nothing: prints each mutant whose text does not occur
exactly once in its file, and exits 1 if there is one; run it after the sources change)
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
SLED = "uplink-proto/src/sled/machine.rs"
SLED_MCP = "uplink-proto/src/sled/mcp_relay.rs"
GATEWAY = "uplink-proto/src/gateway/sled_session.rs"
HUB = "uplink-proto/src/gateway/hub.rs"
LEASE = "uplink-proto/src/gateway/lease.rs"
PENDING = "uplink-proto/src/pending.rs"
WIRE = "uplink-proto/src/wire.rs"

# (rule broken, file, exact text, replacement)
MUTANTS = [
    ("in-flight requests are not denied when the connection drops (they wait for their deadline)", SLED,
     "                if let Some(perm) = self.perms.remove(key) {\n"
     "                    self.release(&perm);\n"
     "                    self.deny(key, perm.wire, Cause::ConnectionLost);\n"
     "                }",
     "                let _ = key;"),
    ("frames are accepted from any connection, not only the live one", SLED,
     "Link::Connected { conn: c, last_rx, .. } if *c == conn => *last_rx = now,",
     "Link::Connected { last_rx, .. } => *last_rx = now,"),
    ("the back-off never resets after a stable connection", SLED,
     "            if self.now.saturating_duration_since(since) >= self.cfg.stability_window {\n"
     "                self.backoff.reset();\n",
     "            if self.now.saturating_duration_since(since) >= self.cfg.stability_window {\n"),
    ("sled (resume): a gateway restarting (1012) counts as a failure (the back-off goes on growing)", SLED,
     "            Link::Connected { conn: c, .. } if c == conn && code == CLOSE_SERVICE_RESTART => {\n"
     "                self.backoff.reset();\n",
     "            Link::Connected { conn: c, .. } if c == conn && code == CLOSE_SERVICE_RESTART => {\n"),
    ("no ping at heartbeats (a silent gateway is only noticed if it sends frames)", SLED,
     "self.out.push_back(Output::Ping { conn });", ""),
    ("the idle timeout is never enforced", SLED,
     "Link::Connected { conn, last_rx, .. } if last_rx + self.cfg.idle_timeout <= now =>",
     "Link::Connected { conn, last_rx, .. } if false && last_rx + self.cfg.idle_timeout <= now =>"),
    ("pending table: deadlines are never enforced (permissions and MCP calls, sled and gateway)", PENDING,
     "if entry.get().deadline.is_none_or(|d| d > now) {",
     "if true {"),
    ("queued requests are sent before identity", SLED,
     "        self.send(conn, self.identity_text.clone());\n"
     "        // New requests go now; kept ones wait for the gateway's `resume_accepted`.\n"
     "        let queued: Vec<PermKey> =\n"
     "            self.perms.iter().filter(|(_, p)| matches!(p.value, Stage::Queued(_))).map(|(k, _)| k).collect();\n"
     "        for key in queued {\n"
     "            self.send_perm_request(key, conn);\n"
     "        }\n",
     "        let queued: Vec<PermKey> =\n"
     "            self.perms.iter().filter(|(_, p)| matches!(p.value, Stage::Queued(_))).map(|(k, _)| k).collect();\n"
     "        for key in queued {\n"
     "            self.send_perm_request(key, conn);\n"
     "        }\n"
     "        self.send(conn, self.identity_text.clone());\n"),
    ("a timed-out MCP call is cancelled without an answer", SLED_MCP,
     "            fx.respond(&c.req_id, &payload);\n            abandon(call, &c, \"timeout\", fx);",
     "            let _ = payload;\n            abandon(call, &c, \"timeout\", fx);"),
    ("the MCP call limit is not enforced", SLED_MCP,
     "let free = self.running < self.limits.calls && self.waiting.is_empty();",
     "let free = self.waiting.is_empty();"),
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
     "let lost: Vec<McpId> = self.mcp.drain().chain(self.mcp_streams.drain()).map(|(id, _)| id).collect();",
     "let lost: Vec<McpId> = Vec::new();"),
    ("hub (replacement): another credential displaces a live holder", HUB,
     "Some(p) if p.holder.is_some() && p.credential != credential.id => Some(CloseReason::ProjectHeld),",
     "Some(p) if false && p.credential != credential.id => Some(CloseReason::ProjectHeld),"),
    ("hub (replacement): a credential may identify as a project outside its scope", HUB,
     "let refusal = if !credential.scope.covers(&project) {",
     "let refusal = if false {"),
    ("hub (shared claims): a project held elsewhere by another credential is taken all the same", HUB,
     "                if !own || now >= waiting.until {\n",
     "                if now >= waiting.until {\n"),
    ("hub (shared claims): a grant after its connection closed is not given back", HUB,
     "                self.event(HubEvent::ClaimEnded { project: project.into(), generation });\n            }\n            return;",
     "            }\n            return;"),
    ("hub (lease): a lapsed lease is not noticed before an input is acted on", HUB,
     "if !lease.is_fenced() && lease.lapsed(now) {",
     "if false && lease.lapsed(now) {"),
    ("hub (lease): a renewal extends the lease from the old deadline, not from when it was sent", LEASE,
     "        let until = sent + self.config.length.saturating_sub(self.config.margin());",
     "        let until = self.deadline.max(sent) + self.config.length.saturating_sub(self.config.margin());"),
    ("hub (lease): no margin before the database's expiry", LEASE,
     "        let until = sent + self.config.length.saturating_sub(self.config.margin());",
     "        let until = sent + self.config.length;"),
    ("hub (drain): a draining connection is closed with requests still pending", HUB,
     "        } else if self.draining.is_some() && self.nothing_in_flight(conn) {",
     "        } else if self.draining.is_some() {"),
    ("hub (replacement): the replaced connection is left open", HUB,
     "            c.session.close(now, CloseReason::Replaced);\n",
     ""),
    ("hub (routing): an MCP request goes to the oldest connection, not the project's holder", HUB,
     "let conn = p.holder.ok_or(McpRefused::NotConnected)?;",
     "let conn = self.conns.keys().next().copied().ok_or(McpRefused::NotConnected)?;"),
    ("hub (routing): a decision reaches the newest connection with that number, not the named one", HUB,
     "let Some(c) = self.conns.get_mut(&conn) else { return Err(refused(self)) };",
     "let Some(c) = self.conns.values_mut().filter(|c| c.session.pending().any(|(p, _)| p == perm)).last() else { return Err(refused(self)) };"),
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
     "let fleet_over = total > self.cfg.max_pending_input_bytes;",
     "let fleet_over = false && total > self.cfg.max_pending_input_bytes;"),
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
    ("sled: an MCP answer too large for a frame is sent anyway", SLED_MCP,
     "if wire::frame_len(wire::kind::MCP_RESPONSE, &c.req_id, payload.get().len()) > self.limits.frame_bytes {",
     "if false {"),
    ("sled: a person's message is dropped", SLED,
     "let message = message.map(|m| String::from(wire::clip(&m, wire::MAX_MESSAGE_BYTES)));",
     "let message: Option<String> = message.and(None);"),
    # The `resume` extension: the hub's side.
    ("hub (resume): a request sent again with another input is taken for the held one (only the tool is compared)",
     HUB,
     "h.tool_name == tool_name && *h.tool_input == **tool_input",
     "h.tool_name == tool_name"),
    ("hub (resume): a claim by another credential or incarnation leaves what is held for the old one (listed and "
     "open to a decision, though no request can find it again)", HUB,
     "        let gone = self.held.ids_where(&project, elsewhere);\n"
     "        self.end_held(gone, Withdrawn::ConnectionLost);\n",
     ""),
    ("hub (resume): a decision made while the sled is away is acknowledged but not kept", HUB,
     "        self.held.record(id, verdict.clone());\n", ""),
    ("hub (resume): a decision sent before a drop is not remembered (nothing to send again)", HUB,
     "        if let Some(answer) = answer {\n            self.remember_answer(answer);\n        }",
     "        let _ = answer;"),
    ("hub (resume): requests that arrive before the sled confirmed it saw the acceptance are announced at once",
     HUB,
     "if c.session.resume_awaited() {", "if false {"),
    ("hub (resume): a reload keeps what is held for a revoked credential", HUB,
     "        let gone: Vec<PublicPermId> = self.held.iter().filter(revoked).map(|h| h.id).collect();\n"
     "        self.end_held(gone, Withdrawn::ConnectionLost);\n",
     ""),
    ("hub (resume): held requests never end with the window (nor their sled's deadline)", HUB,
     "while let Some(h) = self.held.pop_ended(now) {",
     "while let Some(h) = None::<HeldRequest> {"),
    ("hub (resume): a restarted hub reuses public ids (start_ids_after does not raise the next handle)", HUB,
     "        self.next_conn = self.next_conn.max(conn);\n", ""),
    ("hub (resume): the sled's `resumed` does not end the held requests it did not send again", HUB,
     "                let gone = self.held.ids_where(&project, of_this);\n"
     "                self.end_held(gone, Withdrawn::ConnectionLost);\n",
     ""),
    ("gateway (resume): requests are held at a drop though the sled never confirmed it saw the acceptance "
     "(held on the acceptance alone)", GATEWAY,
     "let hold = hold && self.resume_confirmed();",
     "let hold = hold && self.resume_accepted().is_some();"),
    ("gateway (resume): a revoked credential's pending requests are held at its close", GATEWAY,
     "self.end(reason != CloseReason::CredentialRevoked);",
     "self.end(true);"),
    # The `resume` extension: the sled's side.
    ("sled (resume): requests sent on a connection whose gateway never accepted are kept across a drop "
     "(instead of denied)", SLED,
     "if resume == Resume::Accepted\n",
     "if (true || resume == Resume::Accepted)\n"),
    ("sled (resume): kept requests are not denied when the next gateway does not accept resume", SLED,
     "    fn deny_kept(&mut self) {\n        let kept: Vec<PermKey> =\n",
     "    fn deny_kept(&mut self) {\n        let kept: Vec<PermKey> = Vec::new();\n        let _: Vec<PermKey> =\n"),
    ("sled (resume): kept requests are not sent again after an acceptance", SLED,
     "        for key in kept {\n"
     "            self.send_perm_request(key, conn);\n"
     "        }\n"
     "        self.send(conn, SledFrame::Resumed.encode());",
     "        let _ = kept;\n"
     "        self.send(conn, SledFrame::Resumed.encode());"),
]


def check():
    """Prints each mutant that does not apply exactly once to its file; true when all do."""
    ok = True
    for i, (rule, path, old, _) in enumerate(MUTANTS, 1):
        full = os.path.join(ROOT, path)
        try:
            count = open(full).read().count(old)
        except OSError as e:
            count, why = 0, f"cannot read {path}: {e.strerror}"
        else:
            why = f"its text occurs {count} times in {path}"
        if count != 1:
            print(f"{i}. {rule}: {why}")
            ok = False
    return ok


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
    if "--check" in sys.argv:
        ok = check()
        print(f"all {len(MUTANTS)} mutants apply" if ok else "some mutants do not apply (rewrite them)")
        sys.exit(0 if ok else 1)
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
