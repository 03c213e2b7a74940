//! Decisions that last, over real sockets and a real store: "always allow" that sticks across a restart,
//! the rules API and its roles, the audit log and its chain, and a store that fails (nothing is sent).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_proto::gateway::{ProjectScope, Role};
use uplink_tests::{RawWs, RealGateway, close_code, http, identify, next_event, sse, within};
use uplink_tokio::gateway::GatewayServerConfig;
use uplink_tokio::gateway::credentials::{AdminPrincipal, Credentials, SledCredential, TokenHash};
use uplink_tokio::store::sqlite::{SqliteStore, StoreOptions};
use uplink_tokio::store::{
    AuditPage, AuditQuery, AuditReader, Change, Head, Kept, Store, StoreError, VerifyError, VerifyReport,
};

const SLED: &str = "token-sled-0123456789abcdef0123456789abcdef";
const ADA: &str = "token-ada-admin-0123456789abcdef0123456789ab";
const BOB: &str = "token-bob-approver-0123456789abcdef01234567";
const VIC: &str = "token-vic-viewer-0123456789abcdef0123456789ab";

fn config() -> GatewayServerConfig {
    let sleds = vec![SledCredential::new("build-farm", TokenHash::of(SLED), ProjectScope::Any)];
    let people = vec![
        AdminPrincipal::new("ada", Role::Admin, TokenHash::of(ADA)),
        AdminPrincipal::new("bob", Role::Approver, TokenHash::of(BOB)),
        AdminPrincipal::new("vic", Role::Viewer, TokenHash::of(VIC)),
    ];
    GatewayServerConfig::with_credentials("127.0.0.1:0".parse().unwrap(), Credentials::new(sleds, people).unwrap())
}

async fn start(dir: &std::path::Path) -> RealGateway {
    let store = SqliteStore::open(dir, StoreOptions::default()).unwrap();
    RealGateway::start_with_store(config(), Some(Box::new(store))).await
}

async fn sled(gw: &RealGateway, project: &str) -> RawWs {
    let mut ws = gw.raw_sled_with(SLED).await;
    identify(&mut ws, project).await;
    ws
}

async fn ask(ws: &mut RawWs, req_id: &str, command: &str) {
    let frame =
        json!({"type":"perm_request","req_id":req_id,"payload":{"tool_name":"Bash","tool_input":{"command":command}}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next `perm_response` on `ws`: its req_id and whether it approves.
async fn answer(ws: &mut RawWs) -> (String, bool) {
    loop {
        let msg = within("a perm_response", ws.next()).await.unwrap().unwrap();
        if let Message::Text(text) = msg {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "perm_response" {
                return (frame["req_id"].as_str().unwrap().to_owned(), frame["payload"]["approved"] == true);
            }
        }
    }
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

/// Every record of the audit log, parsed, as `GET /api/audit` pages through them.
async fn audit(gw: &RealGateway, query: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut after = 0u64;
    loop {
        let url = format!("{}/api/audit?limit=2&after={after}{query}", gw.base);
        let (status, body) = http("GET", &url, Some(VIC), None, &[]).await;
        assert_eq!(status, 200, "{body}");
        let page = parse(&body);
        records.extend(page["records"].as_array().unwrap().iter().map(|r| r["record"].clone()));
        match page["next"].as_u64() {
            Some(n) => after = n,
            None => return records,
        }
    }
}

#[tokio::test]
async fn always_allow_sticks_for_its_project_across_a_restart_and_the_log_tells_its_whole_life() {
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path();
    let gw = start(dir).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut web = sled(&gw, "web").await;
    let mut api = sled(&gw, "api").await;
    ask(&mut web, "w1", "git diff HEAD~1").await;
    let requested = next_event(&mut events, "permission_requested").await;
    let id = requested["id"].as_str().unwrap().to_owned();
    // What the rule will be is shown before anyone decides.
    let (_, listing) = http("GET", &format!("{}/api/permissions", gw.base), Some(VIC), None, &[]).await;
    assert_eq!(parse(&listing)["permissions"][0]["suggested_rule"], "Bash(git diff *)");
    // A viewer may not decide; an approver may, and "always allow" makes the rule (scope: this project).
    let url = format!("{}/api/permissions/{id}", gw.base);
    let always = r#"{"approved":true,"always_allow":true,"scope":"project"}"#;
    assert_eq!(http("POST", &url, Some(VIC), Some(always), &[]).await.0, 403);
    let (status, body) = http("POST", &url, Some(BOB), Some(always), &[]).await;
    assert_eq!(status, 200, "{body}");
    let rule = parse(&body)["rule"].as_u64().expect("a rule was made");
    assert_eq!(answer(&mut web).await, ("w1".to_owned(), true));
    let added = next_event(&mut events, "rule_added").await;
    assert_eq!(
        (added["pattern"].clone(), added["project"].clone(), added["author"].clone()),
        (json!("Bash(git diff *)"), json!("web"), json!("bob"))
    );
    // The next such call from the project is approved without anybody; another project's is asked.
    ask(&mut web, "w2", "git diff main").await;
    assert_eq!(answer(&mut web).await, ("w2".to_owned(), true));
    ask(&mut api, "a1", "git diff main").await;
    assert_eq!(next_event(&mut events, "permission_requested").await["project"], "api");
    // An approver may not write rules directly, nor remove them; a viewer may read them.
    let rule_body = r#"{"effect":"deny","pattern":"Bash(git diff --output*)"}"#;
    assert_eq!(http("POST", &format!("{}/api/rules", gw.base), Some(BOB), Some(rule_body), &[]).await.0, 403);
    assert_eq!(http("DELETE", &format!("{}/api/rules/{rule}", gw.base), Some(BOB), None, &[]).await.0, 403);
    let (status, body) = http("GET", &format!("{}/api/rules", gw.base), Some(VIC), None, &[]).await;
    assert_eq!((status, parse(&body)["rules"].as_array().unwrap().len()), (200, 1), "{body}");
    // An admin may: a deny rule wins over the person's allow.
    let (status, body) = http("POST", &format!("{}/api/rules", gw.base), Some(ADA), Some(rule_body), &[]).await;
    assert_eq!(status, 201, "{body}");
    let deny = parse(&body)["rule"]["id"].as_u64().unwrap();
    ask(&mut web, "w3", "git diff --output=/etc/passwd").await;
    assert_eq!(answer(&mut web).await, ("w3".to_owned(), false));
    gw.stop().await;
    assert_eq!(close_code(&mut web).await, Some(1001));

    // Restarted on the same store: both rules are back, and still decide.
    let gw = start(dir).await;
    let mut web = sled(&gw, "web").await;
    ask(&mut web, "w4", "git diff HEAD").await;
    assert_eq!(answer(&mut web).await, ("w4".to_owned(), true));
    ask(&mut web, "w5", "git diff --output=x").await;
    assert_eq!(answer(&mut web).await, ("w5".to_owned(), false));
    // Removed by an admin: asked again.
    let (status, _) = http("DELETE", &format!("{}/api/rules/{rule}", gw.base), Some(ADA), None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(http("DELETE", &format!("{}/api/rules/{rule}", gw.base), Some(ADA), None, &[]).await.0, 404);
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    ask(&mut web, "w6", "git diff HEAD").await;
    assert_eq!(next_event(&mut events, "permission_requested").await["req_id"], "w6");

    // The log: every step, with who and which rule, chained; filters and pages work.
    let all = audit(&gw, "").await;
    let kinds: Vec<&str> = all.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            // Before the restart (api's request, still pending, ends with the connection at the stop).
            "request",
            "rule_added",
            "end",
            "auto",
            "request",
            "rule_added",
            "auto",
            "end",
            // After.
            "auto",
            "auto",
            "rule_removed",
            "request",
        ]
    );
    assert_eq!(
        (all[7]["project"].clone(), all[7]["outcome"].clone(), all[7]["tool"].clone()),
        (json!("api"), json!("connection_lost"), json!("Bash"))
    );
    let end = &all[2];
    assert_eq!(
        (end["perm"].as_str(), end["outcome"].as_str(), end["by"].as_str(), end["rule_created"].as_u64()),
        (Some(id.as_str()), Some("always_allow"), Some("bob"), Some(rule))
    );
    assert_eq!(
        (all[3]["outcome"].clone(), all[3]["rule"].clone(), all[3]["decided_by"].clone()),
        (json!("approve"), json!(rule), json!("rule"))
    );
    assert_eq!((all[6]["outcome"].clone(), all[6]["rule"].clone()), (json!("deny"), json!(deny)));
    let first = &all[0];
    assert_eq!(
        (first["credential"].as_str(), first["input"].clone()),
        (Some("build-farm"), json!({"command": "git diff HEAD~1"}))
    );
    assert_eq!(first["input_sha256"].as_str().map(str::len), Some(64));
    let denied = audit(&gw, "&outcome=deny&project=web").await;
    assert_eq!(denied.len(), 2);
    assert!(audit(&gw, "&project=nowhere").await.is_empty());
    let reader = uplink_tokio::store::sqlite::SqliteReader::at(dir).unwrap();
    let report = reader.verify().unwrap().expect("the chain is intact");
    assert_eq!(report.records, all.len() as u64);
    gw.stop().await;
}

#[tokio::test]
async fn redacted_inputs_leave_their_keyed_hash_in_the_log_and_nothing_else() {
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path();
    let store = SqliteStore::open(dir, StoreOptions::default()).unwrap();
    let mut config = config();
    config.audit_redact_inputs = true;
    let gw = RealGateway::start_with_store(config, Some(Box::new(store))).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut ws = sled(&gw, "web").await;
    ask(&mut ws, "r1", "cat ~/.aws/credentials").await;
    next_event(&mut events, "permission_requested").await;
    let (_, body) = http("GET", &format!("{}/api/audit", gw.base), Some(VIC), None, &[]).await;
    assert!(!body.contains(".aws"), "{body}");
    let record = &parse(&body)["records"][0]["record"];
    assert_eq!(record["input"], "redacted");
    // The hash is of the input's canonical JSON (the same input written another way has the same one), keyed
    // with the store's secret: no plain hash, which a guess at a short input would match.
    let canonical = uplink_tokio::store::audit::canonical(&json!({"command": "cat ~/.aws/credentials"}));
    assert!(record.get("input_sha256").is_none(), "{record}");
    let key = uplink_tokio::store::sqlite::SqliteReader::at(dir).unwrap().input_key().unwrap();
    let keyed = uplink_tokio::store::audit::input_hmac(&key, canonical.as_bytes());
    assert_eq!(record["input_hmac_sha256"].as_str(), Some(keyed.as_str()));
    gw.stop().await;
}

#[tokio::test]
async fn inputs_nested_deeper_than_the_gateway_accepts_are_denied_and_logged_by_hash_and_the_log_verifies() {
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path();
    let gw = start(dir).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut ws = sled(&gw, "web").await;
    // 127 levels: one more, inside a record, than serde_json reads; 10,000: far more.
    let inputs: Vec<String> = [127, 10_000].iter().map(|&n| format!("{}{}", "[".repeat(n), "]".repeat(n))).collect();
    for (i, input) in inputs.iter().enumerate() {
        let frame = format!(
            r#"{{"type":"perm_request","req_id":"d{i}","payload":{{"tool_name":"Bash","tool_input":{input}}}}}"#
        );
        ws.send(Message::text(frame)).await.unwrap();
        assert_eq!(answer(&mut ws).await, (format!("d{i}"), false));
        next_event(&mut events, "permission_auto_decided").await;
    }
    let records = audit(&gw, "").await;
    assert_eq!(records.len(), 2, "{records:?}");
    for (record, input) in records.iter().zip(&inputs) {
        assert_eq!((record["kind"].as_str(), record["outcome"].as_str()), (Some("auto"), Some("deny")));
        assert_eq!(record["message"], uplink_proto::gateway::INPUT_TOO_DEEP);
        assert_eq!(
            (record["input"].clone(), record["input_not_kept"].as_str()),
            (Value::Null, Some("nested more than 64 levels deep"))
        );
        assert_eq!(record["input_sha256"].as_str(), Some(uplink_tokio::store::audit::sha256_hex(input).as_str()));
    }
    let reader = uplink_tokio::store::sqlite::SqliteReader::at(dir).unwrap();
    let report = reader.verify().unwrap().expect("the chain is intact, and its columns agree");
    assert_eq!(report.records, 2);
    gw.stop().await;
}

#[tokio::test]
async fn rules_that_would_never_apply_are_refused_with_the_reason() {
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path();
    let gw = start(dir).await;
    let url = format!("{}/api/rules", gw.base);
    for body in
        [r#"{"effect":"deny","pattern":"Bash","projects":[]}"#, r#"{"effect":"deny","pattern":"Bash","expires":1}"#]
    {
        let (status, text) = http("POST", &url, Some(ADA), Some(body), &[]).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains("never apply"), "{text}");
    }
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut ws = sled(&gw, "web").await;
    ask(&mut ws, "r1", "git diff").await;
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let stale = r#"{"approved":true,"always_allow":true,"until":1}"#;
    let (status, text) = http("POST", &format!("{}/api/permissions/{id}", gw.base), Some(BOB), Some(stale), &[]).await;
    assert_eq!(status, 400, "{text}");
    let (_, listing) = http("GET", &format!("{}/api/permissions", gw.base), Some(VIC), None, &[]).await;
    assert!(listing.contains(&id), "the request still waits: {listing}");
    gw.stop().await;
}

/// A store that works until told to fail; committed in place by the hub task, or on a thread of its own
/// when it `waits_for_disk`.
struct Failing {
    fail: Arc<AtomicBool>,
    waits_for_disk: bool,
    /// Fails by panicking rather than with an error.
    panics: bool,
}

struct NoReader;

impl AuditReader for NoReader {
    fn query(&self, _: &AuditQuery) -> Result<AuditPage, StoreError> {
        Ok(AuditPage::default())
    }
    fn verify_with(&self, _: &[Head]) -> Result<Result<VerifyReport, VerifyError>, StoreError> {
        Err(StoreError::Database("none".into()))
    }
    fn input_key(&self) -> Result<[u8; 32], StoreError> {
        Err(StoreError::Database("none".into()))
    }
}

impl Store for Failing {
    fn load(&mut self) -> Result<Kept, StoreError> {
        Ok(Kept { rules: Vec::new(), sessions: Vec::new(), input_key: [7; 32], resumables: Vec::new(), ids_until: 0 })
    }
    fn commit(&mut self, _: &[Change]) -> Result<Head, StoreError> {
        match self.fail.load(Ordering::SeqCst) {
            true if self.panics => panic!("disk full"),
            true => Err(StoreError::Database("disk full".into())),
            false => Ok(Head { chain: 0, seq: 0, hash: [0; 32] }),
        }
    }
    fn reader(&self) -> Arc<dyn AuditReader> {
        Arc::new(NoReader)
    }
    fn waits_for_disk(&self) -> bool {
        self.waits_for_disk
    }
}

#[tokio::test]
async fn a_decision_the_store_cannot_write_is_never_sent_and_the_gateway_stops() {
    a_failed_commit_stops_the_gateway(false, false).await;
}

#[tokio::test]
async fn the_same_with_a_store_committed_on_its_own_thread() {
    a_failed_commit_stops_the_gateway(true, false).await;
}

#[tokio::test]
async fn the_same_with_a_store_that_panics_in_place_or_on_its_thread() {
    a_failed_commit_stops_the_gateway(false, true).await;
    a_failed_commit_stops_the_gateway(true, true).await;
}

async fn a_failed_commit_stops_the_gateway(waits_for_disk: bool, panics: bool) {
    let fail = Arc::new(AtomicBool::new(false));
    let store = Failing { fail: fail.clone(), waits_for_disk, panics };
    let gw = RealGateway::start_with_store(config(), Some(Box::new(store))).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut ws = sled(&gw, "web").await;
    ask(&mut ws, "r1", "ls").await;
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    fail.store(true, Ordering::SeqCst);
    let (status, body) =
        http("POST", &format!("{}/api/permissions/{id}", gw.base), Some(BOB), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 503, "{body}");
    // The sled never hears the approval: its connection closes (1001), and its request ends denied there.
    loop {
        match within("the connection to end", ws.next()).await {
            Some(Ok(Message::Text(text))) => assert!(!text.contains("perm_response"), "sent: {text}"),
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
                break;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    let stopped = within("the gateway to stop", gw.stopped()).await;
    let why = if panics { "panicked" } else { "disk full" };
    assert!(stopped.as_ref().is_err_and(|e| e.to_string().contains(why)), "{stopped:?}");
}

/// A store whose audit queries wait at a gate, counting those that wait.
struct Gated {
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl AuditReader for Gated {
    fn query(&self, _: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let (open, cv) = &*self.gate;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        Ok(AuditPage::default())
    }
    fn verify_with(&self, _: &[Head]) -> Result<Result<VerifyReport, VerifyError>, StoreError> {
        Err(StoreError::Database("none".into()))
    }
    fn input_key(&self) -> Result<[u8; 32], StoreError> {
        Err(StoreError::Database("none".into()))
    }
}

struct GatedStore(Arc<Gated>);

impl Store for GatedStore {
    fn load(&mut self) -> Result<Kept, StoreError> {
        Ok(Kept { rules: Vec::new(), sessions: Vec::new(), input_key: [7; 32], resumables: Vec::new(), ids_until: 0 })
    }
    fn commit(&mut self, _: &[Change]) -> Result<Head, StoreError> {
        Ok(Head { chain: 0, seq: 0, hash: [0; 32] })
    }
    fn reader(&self) -> Arc<dyn AuditReader> {
        self.0.clone()
    }
}

#[tokio::test]
async fn audit_queries_are_counted_and_one_too_many_gets_503() {
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = Arc::new(Gated { gate: gate.clone(), waiting: waiting.clone() });
    let gw = RealGateway::start_with_store(config(), Some(Box::new(GatedStore(reader)))).await;
    let url = format!("{}/api/audit", gw.base);
    let mut held = Vec::new();
    for _ in 0..uplink_tokio::gateway::AUDIT_QUERIES {
        let url = url.clone();
        held.push(tokio::spawn(async move { http("GET", &url, Some(VIC), None, &[]).await.0 }));
    }
    within("the queries to reach the store", async {
        while waiting.load(Ordering::SeqCst) < uplink_tokio::gateway::AUDIT_QUERIES {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(http("GET", &url, Some(VIC), None, &[]).await.0, 503);
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for h in held {
        assert_eq!(within("a held query", h).await.unwrap(), 200);
    }
    assert_eq!(http("GET", &url, Some(VIC), None, &[]).await.0, 200, "the places are free again");
    gw.stop().await;
}
