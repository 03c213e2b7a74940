//! The gateway's store, as the program runs it: `kill -9` during a burst of decisions loses none that was
//! acknowledged to a person or sent to a sled; `uplink rules` and `uplink audit` against it.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::program::{self, Program, Running};
use uplink_tests::{close_code, http, http_with_headers, perm_response, raw_sled_at, try_http, until, within};
use uplink_tests::{console_session as session, console_sign_in as sign_in};
use uplink_tokio::store::sqlite::SqliteReader;
use uplink_tokio::store::{AuditQuery, AuditReader as _};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");

/// `uplink gateway` on `dir` with shared tokens `s` and `a`, and its base URL.
async fn gateway(dir: &std::path::Path) -> (Running, String) {
    let gateway =
        Program::gateway(UPLINK).args(["--sled-token", "s", "--admin-token", "a"]).state_dir(dir).start().await;
    let base = gateway.base_url();
    (gateway, base)
}

/// `uplink gateway` on `dir` as it starts the first time: its banner runs to the tokens it generates.
async fn first_gateway(dir: &std::path::Path) -> Running {
    Program::gateway(UPLINK).state_dir(dir).banner_lines(4).start().await
}

/// Every record of the log in `dir`, parsed.
fn records(dir: &std::path::Path) -> Vec<Value> {
    let reader = SqliteReader::at(dir).unwrap();
    let mut out = Vec::new();
    let mut query = AuditQuery { limit: Some(1000), ..AuditQuery::default() };
    loop {
        let page = reader.query(&query).unwrap();
        out.extend(page.records.iter().map(|r| serde_json::from_str::<Value>(&r.text).unwrap()));
        match page.next {
            Some(n) => query.after = Some(n),
            None => return out,
        }
    }
}

#[tokio::test]
async fn kill_9_in_a_burst_of_decisions_loses_none_that_a_person_or_a_sled_heard_of() {
    const N: usize = 600;
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path();
    let (mut child, base) = gateway(dir).await;
    let (mut tx, mut rx) = raw_sled_at(&base, "s", "burst").await.split();
    for i in 0..N {
        let frame =
            json!({"type":"perm_request","req_id":format!("r{i}"),"payload":{"tool_name":"Bash","tool_input":{"i":i}}});
        tx.send(Message::text(frame.to_string())).await.unwrap();
    }
    // Every request is pending.
    let ids: Vec<String> = until("every request to be pending", async || {
        let (_, body) = http("GET", &format!("{base}/api/permissions"), Some("a"), None, &[]).await;
        let listing: Value = serde_json::from_str(&body).unwrap();
        let perms = listing["permissions"].as_array().unwrap();
        (perms.len() == N).then(|| perms.iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect())
    })
    .await;
    // What the sled hears, as it hears it.
    let heard = Arc::new(Mutex::new(BTreeSet::new()));
    let listener = {
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                if let Message::Text(text) = msg {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "perm_response" {
                        heard.lock().unwrap().insert(frame["req_id"].as_str().unwrap().to_owned());
                    }
                }
            }
        })
    };
    // Four people decide as fast as they can; each acknowledgement is noted.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut deciders = Vec::new();
    for part in 0..4 {
        let (ids, acked, base) = (ids.clone(), acked.clone(), base.clone());
        deciders.push(tokio::spawn(async move {
            for id in ids.iter().skip(part).step_by(4) {
                let url = format!("{base}/api/permissions/{id}");
                match try_http("POST", &url, Some("a"), Some(r#"{"approved":true}"#), &[]).await {
                    Ok((200, _)) => {
                        acked.lock().unwrap().insert(id.clone());
                    }
                    Ok((status, body)) => panic!("{id}: {status} {body}"),
                    Err(_) => return, // the gateway is gone
                }
            }
        }));
    }
    // Killed mid-burst, once a sixth of the decisions are acknowledged.
    within("a sixth of the decisions", async {
        while acked.lock().unwrap().len() < N / 6 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    child.kill().await;
    for d in deciders {
        within("a decider to stop", d).await.unwrap();
    }
    within("the sled's connection to end", listener).await.unwrap();
    let (acked, heard) = (acked.lock().unwrap().clone(), heard.lock().unwrap().clone());
    assert!(acked.len() < N, "the kill came after every decision: nothing was tested");

    // Every decision acknowledged or heard is in the log, once, and the chain holds.
    let log = records(dir);
    let req_of: BTreeMap<String, String> = log
        .iter()
        .filter(|r| r["kind"] == "request")
        .map(|r| (r["perm"].as_str().unwrap().to_owned(), r["req_id"].as_str().unwrap().to_owned()))
        .collect();
    let mut decided = BTreeMap::new();
    for r in log.iter().filter(|r| r["kind"] == "end" && r["outcome"] == "approve") {
        let perm = r["perm"].as_str().unwrap().to_owned();
        assert!(decided.insert(perm.clone(), ()).is_none(), "{perm} decided twice");
    }
    for id in &acked {
        assert!(decided.contains_key(id), "{id} was acknowledged but is not in the log");
    }
    let decided_reqs: BTreeSet<&String> = decided.keys().filter_map(|p| req_of.get(p)).collect();
    for req in &heard {
        assert!(decided_reqs.contains(req), "the sled heard {req}, which is not in the log");
    }
    let report = SqliteReader::at(dir).unwrap().verify().unwrap().expect("the chain holds after kill -9");
    assert_eq!(report.records as usize, log.len());
    eprintln!("killed after {} acknowledged, {} heard, {} in the log", acked.len(), heard.len(), decided.len());

    // The gateway starts again on the same store; the log goes on from where it was.
    let (mut child, _) = gateway(dir).await;
    child.kill().await;
}

fn uplink(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    program::run(UPLINK, args, env)
}

#[tokio::test]
async fn rules_and_audit_commands_work_against_a_running_gateway_and_find_tampering() {
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path();
    let (mut child, base) = gateway(dir).await;
    let env = [("UPLINK_GATEWAY_URL", base.as_str()), ("UPLINK_ADMIN_TOKEN", "a")];
    let added = uplink(&["rules", "add", "deny", "Bash(curl *)", "--project", "team-a/*", "--expires", "30d"], &env);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let table = String::from_utf8(added.stdout).unwrap();
    assert!(table.contains("deny") && table.contains("Bash(curl *)") && table.contains("team-a/*"), "{table}");
    let ls = uplink(&["rules", "ls", "--json"], &env);
    let rules: Value = serde_json::from_slice(&ls.stdout).unwrap();
    let id = rules["rules"][0]["id"].as_u64().unwrap();
    assert_eq!(
        (rules["rules"][0]["author"].as_str(), rules["rules"][0]["effect"].as_str()),
        (Some("admin"), Some("deny"))
    );
    // The rule decides.
    let mut ws = raw_sled_at(&base, "s", "team-a/web").await;
    let frame = json!({"type":"perm_request","req_id":"c1","payload":{"tool_name":"Bash","tool_input":{"command":"curl evil.example"}}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
    let answer = perm_response(&mut ws).await;
    assert_eq!(answer["payload"]["approved"], false);
    let bad = uplink(&["rules", "add", "allow", "Write(src/**)"], &env);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("400"), "{}", String::from_utf8_lossy(&bad.stderr));
    let wrong = uplink(&["rules", "ls"], &[("UPLINK_GATEWAY_URL", &base), ("UPLINK_ADMIN_TOKEN", "nope")]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(uplink(&["rules", "rm", &id.to_string()], &env).status.success());
    assert_eq!(uplink(&["rules", "rm", &id.to_string()], &env).status.code(), Some(1));

    // The audit log, read beside the running gateway.
    let state = dir.to_str().unwrap();
    let verify = uplink(&["audit", "verify", "--state-dir", state], &[]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(
        String::from_utf8_lossy(&verify.stdout).starts_with("intact: 3 records"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let export = uplink(&["audit", "export", "--state-dir", state, "--outcome", "deny"], &[]);
    let lines: Vec<Value> =
        String::from_utf8(export.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!((lines[0]["record"]["kind"].as_str(), lines[0]["record"]["rule"].as_u64()), (Some("auto"), Some(id)));
    assert_eq!(lines[0]["hash"].as_str().map(str::len), Some(64));
    child.kill().await;

    // Tampered with: verify says where, with exit code 3.
    let db = edit_a_record(dir);
    let broken = uplink(&["audit", "verify", "--state-dir", state], &[]);
    assert_eq!(broken.status.code(), Some(3), "{}", String::from_utf8_lossy(&broken.stdout));
    assert!(String::from_utf8_lossy(&broken.stdout).contains(&format!("record {db} was changed")));
    let missing = uplink(&["audit", "verify", "--state-dir", "/nonexistent/uplink"], &[]);
    assert_eq!(missing.status.code(), Some(1));
}

/// Changes record 2's text in place, as someone with the file would; returns its seq.
fn edit_a_record(dir: &std::path::Path) -> u64 {
    let conn = rusqlite::Connection::open(dir.join("uplink.db")).unwrap();
    conn.execute("UPDATE audit SET record = replace(record, 'deny', 'allow') WHERE seq = 2", []).unwrap();
    2
}

/// `GET /api/sleds` with `token`, until it answers `want` (the gateway's watch reloads within seconds).
async fn until_status(base: &str, token: &str, want: u16) {
    until("the gateway to take the change", async || {
        let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(token), None, &[]).await;
        (status == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn tokens_kept_in_the_store_are_taken_by_a_running_gateway_without_a_signal() {
    let tmp = uplink_tests::temp_dir();
    let (dir, state) = (tmp.path(), tmp.path().to_str().unwrap());
    // The first start generates its tokens into the store; no credentials file is written.
    let mut child = first_gateway(dir).await;
    let (base, admin) = (child.base_url(), child.admin_token());
    assert!(!dir.join("credentials.toml").exists(), "the tokens went to the store");
    until_status(&base, &admin, 200).await;

    // Added beside the running gateway: it works within seconds, without SIGHUP; revoked: refused.
    let added = uplink(&["gateway", "token", "add", "--state-dir", state, "--admin", "vic", "--role", "viewer"], &[]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let vic = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    until_status(&base, &vic, 200).await;
    let listing = uplink(&["gateway", "token", "ls", "--state-dir", state], &[]);
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.contains("vic") && listing.contains("default") && !listing.contains(&vic), "{listing}");
    let revoked = uplink(&["gateway", "token", "revoke", "--state-dir", state, "vic"], &[]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    until_status(&base, &vic, 401).await;
    until_status(&base, &admin, 200).await;
    child.kill().await;
}

/// Whether the gateway at `base` lets a sled upgrade with `token`.
async fn sled_admitted(base: &str, token: &str) -> bool {
    let url = format!("{}/api/sled-uplink?token={token}", base.replace("http://", "ws://"));
    within("the upgrade's answer", tokio_tungstenite::connect_async(url)).await.is_ok()
}

#[tokio::test]
async fn revoking_the_last_credentials_takes_effect_and_is_reported_only_once_in_force() {
    let tmp = uplink_tests::temp_dir();
    let (dir, state) = (tmp.path(), tmp.path().to_str().unwrap());
    // The first start's two credentials are the only ones: the sled `default` and the principal `admin`.
    let mut child = first_gateway(dir).await;
    let (base, sled_token, admin) = (child.base_url(), child.sled_token(), child.admin_token());
    let mut ws = raw_sled_at(&base, &sled_token, "web").await;
    let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    ws.send(Message::text(ask.to_string())).await.unwrap();
    until_status(&base, &admin, 200).await;

    // The last sled credential: the CLI says so only once it is in force, and by then the sled is gone.
    let revoked = uplink(&["gateway", "token", "revoke", "--state-dir", state, "default"], &[]);
    let said = String::from_utf8_lossy(&revoked.stderr).into_owned();
    assert!(revoked.status.success(), "{said}");
    assert!(said.contains("in force at the running gateway"), "{said}");
    assert_eq!(close_code(&mut ws).await, Some(4010), "the revoked sled stays connected");
    assert!(!sled_admitted(&base, &sled_token).await, "the revoked token still connects");
    let (_, body) = http("GET", &format!("{base}/api/permissions"), Some(&admin), None, &[]).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["permissions"], json!([]), "its request stayed");

    // The last principal: nobody reads or decides any more, and the gateway still runs.
    let revoked = uplink(&["gateway", "token", "revoke", "--state-dir", state, "admin"], &[]);
    let said = String::from_utf8_lossy(&revoked.stderr).into_owned();
    assert!(revoked.status.success() && said.contains("in force"), "{said}");
    let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(&admin), None, &[]).await;
    assert_eq!(status, 401, "the revoked principal still reads");

    // A principal added later works at once: that is how a gateway without one is given one.
    let added = uplink(&["gateway", "token", "add", "--state-dir", state, "--admin", "ana", "--role", "admin"], &[]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let ana = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(&ana), None, &[]).await;
    assert_eq!(status, 200, "the CLI said in force before it was");

    // A credentials file that does not load: the gateway keeps what it has, and the CLI does not say done.
    child.kill().await;
    let file = dir.join("extra.toml");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    let mut child = Program::gateway(UPLINK).args(["--credentials", file]).state_dir(dir).banner_lines(4).start().await;
    let lines = &child.banner;
    assert!(
        lines.iter().all(|l| !l.contains("(generated)")),
        "{lines:?}: a store once holding credentials is no first start"
    );
    let base = child.base_url();
    std::fs::write(file, "[[sled]]\nlabel = \"x\"\n").unwrap();
    let refused = uplink(&["gateway", "token", "revoke", "--state-dir", state, "ana"], &[]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success() && said.contains("NOT in force"), "{said}");
    let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(&ana), None, &[]).await;
    assert_eq!(status, 200, "the previous credentials stay in force when the new ones do not load");
    child.kill().await;
}

/// The permission bits of `path`.
#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_state_directory_and_every_file_in_it_are_owner_only_whatever_the_umask() {
    let base = uplink_tests::temp_dir();
    let dir = base.path().join("state");
    // Started as a shell with the common umask starts it.
    let mut child = Program::gateway(UPLINK).after_shell("umask 022").state_dir(&dir).banner_lines(4).start().await;
    let (url, sled_token, admin) = (child.base_url(), child.sled_token(), child.admin_token());
    // A decision, so that the log and its shared memory exist.
    let mut ws = raw_sled_at(&url, &sled_token, "web").await;
    let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    ws.send(Message::text(ask.to_string())).await.unwrap();
    let id = until("the request to be listed", async || {
        let (_, body) = http("GET", &format!("{url}/api/permissions"), Some(&admin), None, &[]).await;
        serde_json::from_str::<Value>(&body).unwrap()["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let (status, _) =
        http("POST", &format!("{url}/api/permissions/{id}"), Some(&admin), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(mode(&dir), 0o700, "the state directory");
    for name in ["uplink.db", "uplink.db-wal", "uplink.db-shm", "uplink.db.lock", "tokens", "credentials.in-force"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    child.kill().await;

    // Files an older uplink left readable by everyone are narrowed at the next start.
    use std::os::unix::fs::PermissionsExt as _;
    for name in ["uplink.db", "uplink.db.lock", "tokens"] {
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut child = Program::gateway(UPLINK).state_dir(&dir).start().await;
    for name in ["uplink.db", "uplink.db.lock", "tokens"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name} after a restart");
    }
    child.kill().await;
}

#[tokio::test]
async fn console_sign_ins_and_sign_outs_survive_a_restart_even_a_kill_9() {
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path();
    let (mut child, base) = gateway(dir).await;
    let (ana, ana_csrf) = sign_in(&base, "a").await;
    let (bob, bob_csrf) = sign_in(&base, "a").await;
    // Killed at once: a cookie handed out was kept before it was.
    child.kill().await;
    let (mut child, base) = gateway(dir).await;
    assert_eq!(session(&base, &ana).await, (200, Some(ana_csrf.clone())), "the sign-in came back");
    assert_eq!(session(&base, &bob).await, (200, Some(bob_csrf.clone())));
    let (status, _) = http("GET", &format!("{base}/api/sleds"), None, None, &[("cookie", &ana)]).await;
    assert_eq!(status, 200, "it works as before");
    // Signed out, then killed at once: the sign-out does not come undone.
    let (status, _, body) = http_with_headers(
        "DELETE",
        &format!("{base}/console/session"),
        None,
        None,
        &[("cookie", &bob), ("x-csrf-token", &bob_csrf)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    child.kill().await;
    let (mut child, base) = gateway(dir).await;
    assert_eq!(session(&base, &bob).await.0, 401, "signed out stays signed out");
    assert_eq!(session(&base, &ana).await, (200, Some(ana_csrf)));
    // A cookie no gateway handed out is no session, before or after.
    assert_eq!(session(&base, "uplink_session=forged").await.0, 401);
    child.stop().await;
    // Only the cookie's hash is kept.
    let db = std::fs::read(dir.join("uplink.db")).unwrap();
    let secret = ana.trim_start_matches("uplink_session=");
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()), "the cookie itself is not kept");
}

/// Rewrites record `seq`'s text with `edit`, and reseals it and every record after it, and the head: the
/// whole chain made anew, as someone who can write the database could.
fn rewrite_from(dir: &std::path::Path, seq: u64, edit: impl Fn(&str) -> String) {
    let conn = rusqlite::Connection::open(dir.join("uplink.db")).unwrap();
    let mut rows: Vec<(u64, Vec<u8>, String)> = conn
        .prepare("SELECT seq, prev, record FROM audit WHERE seq >= ?1 ORDER BY seq")
        .unwrap()
        .query_map([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut prev: [u8; 32] = rows[0].1.as_slice().try_into().unwrap();
    for (i, (s, _, text)) in rows.iter_mut().enumerate() {
        if i == 0 {
            let edited = edit(text);
            assert_ne!(&edited, text, "the edit changes the record");
            *text = edited;
        }
        let hash = uplink_tokio::store::audit::chain_hash(&prev, text);
        conn.execute(
            "UPDATE audit SET prev = ?1, hash = ?2, record = ?3 WHERE seq = ?4",
            rusqlite::params![&prev[..], &hash[..], &*text, *s],
        )
        .unwrap();
        prev = hash;
    }
    let last = rows.last().unwrap().0;
    let mut head = last.to_be_bytes().to_vec();
    head.extend_from_slice(&prev);
    conn.execute("UPDATE meta SET value = ?1 WHERE key = 'head'", [head]).unwrap();
}

#[tokio::test]
async fn checkpoints_handed_out_find_a_log_rewritten_whole_and_redacted_inputs_keep_a_keyed_hash() {
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path().join("state");
    let elsewhere = tmp.path().join("checkpoints.jsonl");
    let state = dir.to_str().unwrap();
    let mut child = Program::gateway(UPLINK)
        .args(["--sled-token", "s", "--admin-token", "a", "--audit-redact-inputs", "--audit-checkpoint-every", "1s"])
        .arg("--audit-checkpoint-file")
        .arg(&elsewhere)
        .state_dir(&dir)
        .env("RUST_LOG", "warn,uplink_tokio::gateway::checkpoints=info")
        .log()
        .start()
        .await;
    let base = child.base_url();
    let env = [("UPLINK_GATEWAY_URL", base.as_str()), ("UPLINK_ADMIN_TOKEN", "a")];
    assert!(uplink(&["rules", "add", "deny", "Bash(curl *)"], &env).status.success());
    let mut ws = raw_sled_at(&base, "s", "web").await;
    let frame = json!({"type":"perm_request","req_id":"c1","payload":{"tool_name":"Bash","tool_input":{"command":"curl evil.example","timeout":5}}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
    assert_eq!(perm_response(&mut ws).await["payload"]["approved"], false);
    // The head is handed out: logged, and appended to the file.
    child.log_until("audit checkpoint").await;
    let last = records(&dir).len() as u64;
    let lines = until("a checkpoint of the last record in the file", async || {
        let text = std::fs::read_to_string(&elsewhere).ok()?;
        text.lines().any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["seq"] == last)).then_some(text)
    })
    .await;
    assert_eq!(mode(&elsewhere) & 0o777, 0o600, "the checkpoints file is owner-only");
    child.stop().await;

    // The redacted input: its keyed hash, never its plain one; a guess is confirmed only with the store.
    let auto = records(&dir).into_iter().find(|r| r["kind"] == "auto").unwrap();
    assert_eq!(auto["input"], "redacted");
    assert!(auto.get("input_sha256").is_none(), "no plain hash: {auto}");
    assert_eq!(auto["input_hmac_sha256"].as_str().map(str::len), Some(64));
    let seq = auto["seq"].as_u64().unwrap().to_string();
    let guess = tmp.path().join("guess.json");
    std::fs::write(&guess, r#"{ "timeout": 5, "command": "curl evil.example" }"#).unwrap();
    let same =
        uplink(&["audit", "check-input", &seq, "--input-file", guess.to_str().unwrap(), "--state-dir", state], &[]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stdout));
    std::fs::write(&guess, r#"{"command": "curl good.example", "timeout": 5}"#).unwrap();
    let other =
        uplink(&["audit", "check-input", &seq, "--input-file", guess.to_str().unwrap(), "--state-dir", state], &[]);
    assert_eq!(other.status.code(), Some(3), "{}", String::from_utf8_lossy(&other.stdout));

    // The log holds each checkpoint, given as a file or as SEQ:HASH.
    let file = elsewhere.to_str().unwrap();
    let held = uplink(&["audit", "verify", "--state-dir", state, "--checkpoints", file], &[]);
    assert!(held.status.success(), "{}", String::from_utf8_lossy(&held.stdout));
    assert!(String::from_utf8_lossy(&held.stdout).contains("checkpoints hold"));
    let newest: Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    let pinned = format!("{}:{}", newest["seq"], newest["head"].as_str().unwrap());
    assert!(uplink(&["audit", "verify", "--state-dir", state, "--expect-head", &pinned], &[]).status.success());

    // Rewritten whole from the first record on, head and all: the chain alone still holds, the checkpoints
    // do not.
    rewrite_from(&dir, 1, |text| text.replace("curl *", "rm *"));
    let alone = uplink(&["audit", "verify", "--state-dir", state], &[]);
    assert!(alone.status.success(), "a whole rewrite holds together: {}", String::from_utf8_lossy(&alone.stdout));
    for pins in [["--checkpoints", file], ["--expect-head", &pinned]] {
        let caught = uplink(&["audit", "verify", "--state-dir", state, pins[0], pins[1]], &[]);
        assert_eq!(caught.status.code(), Some(3), "{}", String::from_utf8_lossy(&caught.stdout));
        assert!(String::from_utf8_lossy(&caught.stdout).contains("a checkpoint pinned record"));
    }
    let bad = uplink(&["audit", "verify", "--state-dir", state, "--expect-head", "3:xyz"], &[]);
    assert_eq!(bad.status.code(), Some(2), "a malformed head is a usage error");
}
