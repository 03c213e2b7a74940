//! `uplink gateway --store postgres://…` as the program runs it, against a real PostgreSQL server the test
//! starts: what a node keeps is there for the next node (another state directory, as on another machine),
//! `uplink audit` and `uplink gateway token` work on the database, and a database the gateway must not use
//! stops it at start with the reason.
#![allow(clippy::unwrap_used, missing_docs)]

use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::postgres::Postgres;
use uplink_tests::program::{self, Program, Running};
use uplink_tests::{http, perm_response, raw_sled_at, until};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");

async fn uplink(args: &[&str]) -> std::process::Output {
    program::run_within("uplink", UPLINK, args, &[]).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The database's name in a URL of the fixture's.
fn db_of(url: &str) -> String {
    url.split('/').nth(3).unwrap().split('?').next().unwrap().to_owned()
}

#[tokio::test]
async fn what_a_node_keeps_on_postgres_the_next_node_finds_and_the_log_verifies_there() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let (one, two) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
    // A first start on an empty database generates its tokens into the database.
    // Short leases: the second node takes "web" over once the first's lease lapsed (it was killed).
    let mut first = Program::gateway(UPLINK)
        .args(["--store", &url, "--lease", "2s"])
        .state_dir(one.path())
        .banner_until("  store: ")
        .start()
        .await;
    let (base, sled, admin) = (first.base_url(), first.sled_token(), first.admin_token());
    assert!(first.banner.iter().any(|l| l.contains("store: postgres://uplink@")), "{:?}", first.banner);
    assert!(!first.banner.iter().any(|l| l.contains(&url)), "the URL is shown as a place, never as given");
    let mut ws = raw_sled_at(&base, &sled, "web").await;
    let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"git status"}}});
    ws.send(Message::text(ask.to_string())).await.unwrap();
    let id: String = until("the request to be listed", async || {
        let (_, body) = http("GET", &format!("{base}/api/permissions"), Some(&admin), None, &[]).await;
        let listing: Value = serde_json::from_str(&body).unwrap();
        listing["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let always = r#"{"approved":true,"always_allow":true,"scope":"project"}"#;
    let (status, body) = http("POST", &format!("{base}/api/permissions/{id}"), Some(&admin), Some(always), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(perm_response(&mut ws).await["payload"]["approved"], true);
    first.kill().await;
    // One gateway at a time serves a database: the next starts once the killed one's lease lapsed.
    until("the killed node's lease to lapse", async || {
        let live = "SELECT count(*) FROM uplink.nodes WHERE ended IS NULL AND lease_until > clock_timestamp()";
        (pg.sql(&db_of(&url), live).unwrap() == "0").then_some(())
    })
    .await;

    // Another node, another state directory: the same tokens, the rule and the log are the database's.
    let mut second =
        Program::gateway(UPLINK).args(["--store", &url, "--lease", "2s"]).state_dir(two.path()).start().await;
    let base = second.base_url();
    let (status, body) = http("GET", &format!("{base}/api/rules"), Some(&admin), None, &[]).await;
    assert_eq!(status, 200, "{body}");
    let rules: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rules["rules"][0]["pattern"], "Bash(git status *)", "{body}");
    let mut ws = raw_sled_at(&base, &sled, "web").await;
    let again = json!({"type":"perm_request","req_id":"r2","payload":{"tool_name":"Bash","tool_input":{"command":"git status"}}});
    ws.send(Message::text(again.to_string())).await.unwrap();
    assert_eq!(perm_response(&mut ws).await["payload"]["approved"], true, "the kept rule decides");

    // The log, read beside the running node: intact, and a rewritten record is found.
    let verify = uplink(&["audit", "verify", "--store", &url]).await;
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    let said = text(&verify.stdout);
    assert!(said.starts_with("intact: 4 records"), "{said}");
    let export = uplink(&["audit", "export", "--store", &url, "--outcome", "always_allow"]).await;
    assert_eq!(text(&export.stdout).lines().count(), 1, "{}", text(&export.stderr));
    second.kill().await;
    pg.sql(&db_of(&url), "UPDATE uplink.audit SET record = replace(record, 'git status', 'git push') WHERE seq = 1")
        .unwrap();
    let broken = uplink(&["audit", "verify", "--store", &url]).await;
    assert_eq!(broken.status.code(), Some(3), "{}", text(&broken.stdout));
    assert!(text(&broken.stdout).contains("record 1 was changed"), "{}", text(&broken.stdout));
}

#[tokio::test]
async fn a_token_added_on_one_machine_is_in_force_at_a_node_running_on_another() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let (node, elsewhere) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
    let mut gateway =
        Program::gateway(UPLINK).args(["--store", &url]).state_dir(node.path()).banner_lines(4).start().await;
    let base = gateway.base_url();
    let state = elsewhere.path().to_str().unwrap();
    let added = uplink(&[
        "gateway",
        "token",
        "add",
        "--store",
        &url,
        "--state-dir",
        state,
        "--admin",
        "vic",
        "--role",
        "viewer",
    ])
    .await;
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(text(&added.stderr).contains("take it within seconds"), "{}", text(&added.stderr));
    let vic = text(&added.stdout).trim().to_owned();
    until("the node to take the new token", async || {
        let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(&vic), None, &[]).await;
        (status == 200).then_some(())
    })
    .await;
    let listing = text(&uplink(&["gateway", "token", "ls", "--store", &url, "--state-dir", state]).await.stdout);
    assert!(listing.contains("vic") && listing.contains("admin") && !listing.contains(&vic), "{listing}");
    gateway.kill().await;
}

#[tokio::test]
async fn a_database_the_gateway_must_not_use_stops_it_at_start_with_the_reason() {
    let pg = Postgres::shared();
    let state = uplink_tests::temp_dir();
    let state = state.path().to_str().unwrap();
    let start =
        async |url: &str| uplink(&["gateway", "--listen", "127.0.0.1:0", "--state-dir", state, "--store", url]).await;

    // Nobody there.
    let gone = Postgres::start().unwrap();
    let url = gone.url("postgres");
    gone.stop_server();
    let out = start(&url).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot be reached"), "{}", text(&out.stderr));

    // A newer uplink's schema.
    let url = pg.fresh_database();
    let made =
        uplink(&["gateway", "token", "add", "--store", &url, "--state-dir", state, "--admin", "a", "--role", "admin"])
            .await;
    assert!(made.status.success(), "{}", text(&made.stderr));
    pg.sql(&db_of(&url), "UPDATE uplink.meta SET n = n + 1 WHERE key = 'schema_version'").unwrap();
    let out = start(&url).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("newer than this uplink's"), "{}", text(&out.stderr));

    // Held by another gateway (until gateways share a database as a cluster).
    let url = pg.fresh_database();
    let other = uplink_tests::temp_dir();
    let mut running =
        Program::gateway(UPLINK).args(["--store", &url]).state_dir(other.path()).banner_lines(4).start().await;
    let out = start(&url).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("in use by another gateway"), "{}", text(&out.stderr));
    running.kill().await;

    // Not a database at all, or both --store and --no-store.
    let out = start("uplink.db").await;
    assert!(text(&out.stderr).contains("--store takes a PostgreSQL URL"), "{}", text(&out.stderr));
    let out =
        uplink(&["gateway", "--listen", "127.0.0.1:0", "--state-dir", state, "--store", &url, "--no-store"]).await;
    assert!(text(&out.stderr).contains("not both"), "{}", text(&out.stderr));
}

/// A node on `url` (a lease of 2 s, state in `dir`, its log kept with `log`), with a sled of "web" whose
/// request `ls` waits for a person: the node, the sled's socket, and the request's public id.
async fn node_with_a_request(url: &str, dir: &std::path::Path, log: bool) -> (Running, uplink_tests::RawWs, String) {
    let node =
        Program::gateway(UPLINK).args(["--store", url, "--lease", "2s"]).state_dir(dir).banner_until("  store: ");
    let node = if log { node.log() } else { node }.start().await;
    let (base, sled, admin) = (node.base_url(), node.sled_token(), node.admin_token());
    let mut ws = raw_sled_at(&base, &sled, "web").await;
    let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    ws.send(Message::text(ask.to_string())).await.unwrap();
    let id = until("the request to be listed", async || {
        let (_, body) = http("GET", &format!("{base}/api/permissions"), Some(&admin), None, &[]).await;
        let listing: Value = serde_json::from_str(&body).unwrap();
        listing["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    (node, ws, id)
}

#[tokio::test]
async fn a_node_paused_past_its_lease_fences_writes_nothing_more_and_its_sled_goes_to_the_next_node() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let (one, two) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
    let (mut a, mut ws, _) = node_with_a_request(&url, one.path(), true).await;
    let (sled, admin) = (a.sled_token(), a.admin_token());
    let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    // The claims table names a's node, and a renews its lease meanwhile.
    let claim = pg.sql(&db, "SELECT node || ' ' || gen FROM uplink.claims WHERE project = 'web'").unwrap();
    let (node_a, gen_a) = claim.split_once(' ').map(|(n, g)| (n.to_owned(), g.parse::<u64>().unwrap())).unwrap();
    // a writes the log's first chain.
    let records = pg.sql(&db, "SELECT count(*) FROM uplink.audit WHERE chain = 0").unwrap();

    // a is stopped until the database says its lease lapsed; the next node starts meanwhile (a paused node
    // holds nothing that keeps it out), then a is woken.
    a.signal("-STOP");
    until("a's lease to lapse at the database", async || {
        (pg.sql(&db, &format!("SELECT uplink.live({node_a})")).unwrap() == "f").then_some(())
    })
    .await;
    let mut b = Program::gateway(UPLINK).args(["--store", &url, "--lease", "2s"]).state_dir(two.path()).start().await;
    a.signal("-CONT");
    // It fences before it acts: the sled is told to go elsewhere, a stops with the reason.
    assert_eq!(uplink_tests::close_code(&mut ws).await, Some(1012));
    let status = a.wait().await;
    assert!(!status.success(), "a fenced node exits with an error");
    let log = a.log_rest().await;
    assert!(log.contains("lease") && log.contains("fenced"), "{log}");
    let after = pg.sql(&db, "SELECT count(*) FROM uplink.audit WHERE chain = 0").unwrap();
    assert_eq!(after, records, "nothing written by a after the fence");
    // b, which started while a was paused, ended a's request in the log (a's sled denied it as a closed).
    let lost = "SELECT count(*) FROM uplink.audit WHERE chain <> 0 AND kind = 'end' AND outcome = 'connection_lost'";
    assert_eq!(pg.sql(&db, lost).unwrap(), "1");

    // The next node takes the project, under a greater generation, and the sled's requests are its.
    let base = b.base_url();
    let mut ws = raw_sled_at(&base, &sled, "web").await;
    ws.send(Message::text(ask.to_string())).await.unwrap();
    let id_b = until("the request to be listed at the next node", async || {
        let (_, body) = http("GET", &format!("{base}/api/permissions"), Some(&admin), None, &[]).await;
        let listing: Value = serde_json::from_str(&body).unwrap();
        listing["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let claim = pg.sql(&db, "SELECT node || ' ' || gen FROM uplink.claims WHERE project = 'web'").unwrap();
    let (node_b, gen_b) = claim.split_once(' ').map(|(n, g)| (n.to_owned(), g.parse::<u64>().unwrap())).unwrap();
    assert_ne!(node_b, node_a);
    assert!(gen_b > gen_a, "{gen_b} after {gen_a}");
    // Its ids are of its own incarnation's range: no other node's can be the same.
    let conn_b: u64 = id_b.split('-').next().unwrap().parse().unwrap();
    let base_b = node_b.parse::<u64>().unwrap() << 32;
    assert!((base_b..base_b + (1 << 32)).contains(&conn_b), "{id_b} of node {node_b}");
    // A node that stops of its own accord leaves (once its drain is over: the sled went away): its claims
    // go at once.
    drop(ws);
    assert!(b.stop().await.success());
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.claims").unwrap(), "0");
    assert_eq!(pg.sql(&db, &format!("SELECT ended IS NOT NULL FROM uplink.nodes WHERE id = {node_b}")).unwrap(), "t");
}

#[tokio::test]
async fn audit_verify_of_a_log_with_several_chains_prints_each_chain_and_one_digest_and_takes_their_heads() {
    use uplink_tokio::store::postgres::{PostgresOptions, PostgresStore};
    use uplink_tokio::store::{Change, Entry, Store};
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let u = url.clone();
    let heads = tokio::task::spawn_blocking(move || {
        let options = PostgresOptions::default();
        let record = |n: u64| Change::Record(Entry::new(1_700_000_000_000 + n, "request").with("n", n));
        let mut a = PostgresStore::open(&u, options.clone()).unwrap();
        let mut b = PostgresStore::open(&u, options).unwrap();
        let one = a.commit(&[record(1), record(2)]).unwrap();
        let two = b.commit(&[record(3)]).unwrap();
        (one, two)
    });
    let (first, second) = heads.await.unwrap();
    assert_eq!((first.chain, second.chain, second.seq), (0, 1, 2), "chain 1 began by citing chain 0");
    let verify = uplink(&["audit", "verify", "--store", &url]).await;
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    let said = text(&verify.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines[0].starts_with("intact: 4 records in 2 chains; 1 citation between them holds; digest "), "{said}");
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(lines[2], format!("chain 1: 2 records, 1 to 2; head {}", hex(&second.hash)), "{said}");
    // A head of chain 1 kept elsewhere is checked against chain 1, not the first.
    let pinned = format!("1:2:{}", hex(&second.hash));
    let verify = uplink(&["audit", "verify", "--store", &url, "--expect-head", &pinned]).await;
    assert!(text(&verify.stdout).contains("1 checkpoints hold"), "{}", text(&verify.stdout));
    let wrong = format!("2:{}", hex(&second.hash));
    let verify = uplink(&["audit", "verify", "--store", &url, "--expect-head", &wrong]).await;
    assert_eq!(verify.status.code(), Some(3), "{}", text(&verify.stdout));
    // A record of chain 1, by its chain and seq.
    let export = uplink(&["audit", "export", "--store", &url]).await;
    let rows: Vec<Value> = text(&export.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4);
    assert_eq!((rows[2]["chain"].as_u64(), rows[2]["seq"].as_u64()), (Some(1), Some(1)));
    assert_eq!(rows[0].get("chain"), None, "the first chain's rows read as a single writer's always did");
}

/// Commits `changes` from another writer on the database at `url` (as another node's would be).
async fn elsewhere(url: &str, changes: Vec<uplink_tokio::store::Change>) {
    use uplink_tokio::store::Store;
    use uplink_tokio::store::postgres::{PostgresOptions, PostgresStore};
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let options = PostgresOptions::default();
        PostgresStore::open(&url, options).unwrap().commit(&changes).unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_rule_another_node_makes_or_removes_is_in_force_here_within_a_reading_and_ids_never_meet() {
    use uplink_tokio::store::postgres::PostgresStore;
    use uplink_tokio::store::{Change, ClusterStore, StoredRule};
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let dir = uplink_tests::temp_dir();
    let mut node =
        Program::gateway(UPLINK).args(["--store", &url]).state_dir(dir.path()).banner_until("  store: ").start().await;
    let (base, sled, admin) = (node.base_url(), node.sled_token(), node.admin_token());
    // A rule made here takes an id of this node's block.
    let deny_rm = r#"{"effect":"deny","pattern":"Bash(rm *)"}"#;
    let (status, body) = http("POST", &format!("{base}/api/rules"), Some(&admin), Some(deny_rm), &[]).await;
    assert_eq!(status, 201, "{body}");
    let here: Value = serde_json::from_str::<Value>(&body).unwrap()["rule"].clone();
    // Another node draws its own block and makes a deny rule.
    let u = url.clone();
    let ids = tokio::task::spawn_blocking(move || PostgresStore::cluster_at(&u, None).unwrap().rule_ids().unwrap())
        .await
        .unwrap();
    assert!(!ids.contains(&here["id"].as_u64().unwrap()), "{ids:?} {here}");
    let rule = StoredRule {
        id: ids.start,
        effect: "deny".into(),
        pattern: "Bash(curl *)".into(),
        projects: None,
        project: None,
        connection: None,
        expires: None,
        author: "bo".into(),
        created: 1_700_000_000,
    };
    elsewhere(&url, vec![Change::PutRule(rule)]).await;
    let listed = async |id: u64| {
        let (_, body) = http("GET", &format!("{base}/api/rules"), Some(&admin), None, &[]).await;
        let rules: Value = serde_json::from_str(&body).unwrap();
        rules["rules"].as_array().unwrap().iter().any(|r| r["id"] == id)
    };
    until("the other node's rule to be in force here", async || listed(ids.start).await.then_some(())).await;
    let mut ws = raw_sled_at(&base, &sled, "web").await;
    let curl =
        json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"curl x"}}});
    ws.send(Message::text(curl.to_string())).await.unwrap();
    assert_eq!(perm_response(&mut ws).await["payload"]["approved"], false, "denied by the other node's rule");
    // Removed there: no longer in force here; the next such request waits for a person.
    elsewhere(&url, vec![Change::DeleteRule(ids.start)]).await;
    until("the other node's removal to be in force here", async || (!listed(ids.start).await).then_some(())).await;
    let again =
        json!({"type":"perm_request","req_id":"r2","payload":{"tool_name":"Bash","tool_input":{"command":"curl y"}}});
    ws.send(Message::text(again.to_string())).await.unwrap();
    until("the request to wait for a person", async || {
        let (_, body) = http("GET", &format!("{base}/api/permissions"), Some(&admin), None, &[]).await;
        let listing: Value = serde_json::from_str(&body).unwrap();
        (listing["permissions"][0]["tool_input"]["command"] == "curl y").then_some(())
    })
    .await;
    assert!(listed(here["id"].as_u64().unwrap()).await, "this node's own rule stays");
    node.kill().await;
}

#[tokio::test]
async fn a_sign_in_or_sign_out_on_another_node_is_in_force_here_within_a_reading() {
    use uplink_tests::{console_session, console_sign_in};
    use uplink_tokio::store::{Change, StoredSession};
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let dir = uplink_tests::temp_dir();
    let mut node =
        Program::gateway(UPLINK).args(["--store", &url]).state_dir(dir.path()).banner_until("  store: ").start().await;
    let base = node.base_url();
    let (here, _) = console_sign_in(&base, &node.admin_token()).await;
    let principal = pg.sql(&db_of(&url), "SELECT principal FROM uplink.console_sessions").unwrap();
    let key = |cookie: &str| {
        let secret = cookie.trim_start_matches("uplink_session=");
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        <[u8; 32]>::try_from(digest.as_ref()).unwrap()
    };
    // Another node signs someone in: the cookie it handed out works here too.
    let there = "uplink_session=handed-out-by-another-node";
    let expires_ms = u64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 3_600_000,
    )
    .unwrap();
    let signed_in =
        StoredSession { key: key(there), principal, csrf: "c5rf".into(), expires_ms, role: None, email: None };
    elsewhere(&url, vec![Change::PutSession(signed_in)]).await;
    until("the other node's sign-in to be in force here", async || {
        (console_session(&base, there).await.0 == 200).then_some(())
    })
    .await;
    let (status, _) = http("GET", &format!("{base}/api/sleds"), None, None, &[("cookie", there)]).await;
    assert_eq!(status, 200);
    // Another node signs this node's session out: it has ended here too.
    assert_eq!(console_session(&base, &here).await.0, 200);
    elsewhere(&url, vec![Change::DeleteSession(key(&here))]).await;
    until("the other node's sign-out to be in force here", async || {
        (console_session(&base, &here).await.0 == 401).then_some(())
    })
    .await;
    // Signed out here: no later reading brings it back.
    let (status, _) =
        http("DELETE", &format!("{base}/console/session"), None, None, &[("cookie", there), ("x-csrf-token", "c5rf")])
            .await;
    assert_eq!(status, 200);
    let gone = pg.sql(&db_of(&url), "SELECT count(*) FROM uplink.console_sessions WHERE removed_at IS NULL").unwrap();
    assert_eq!(gone, "0", "both sign-outs were written");
    assert_eq!(console_session(&base, there).await.0, 401);
    node.kill().await;
}

#[tokio::test]
async fn a_request_left_waiting_at_a_node_that_died_ends_in_the_log_as_lost_when_the_next_node_starts() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let (one, two) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
    let (mut a, _ws, id) = node_with_a_request(&url, one.path(), false).await;
    a.kill().await;
    until("the killed node's lease to lapse", async || {
        let live = "SELECT count(*) FROM uplink.nodes WHERE ended IS NULL AND lease_until > clock_timestamp()";
        (pg.sql(&db, live).unwrap() == "0").then_some(())
    })
    .await;
    let mut b = Program::gateway(UPLINK).args(["--store", &url, "--lease", "2s"]).state_dir(two.path()).start().await;
    let ends = pg
        .sql(&db, &format!("SELECT outcome || ' ' || kind FROM uplink.audit WHERE record LIKE '%\"perm\":\"{id}\"%' AND kind = 'end'"))
        .unwrap();
    assert_eq!(ends, "connection_lost end", "the request ended in the log, once");
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.pending").unwrap(), "0");
    let verify = uplink(&["audit", "verify", "--store", &url]).await;
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    b.kill().await;
}
