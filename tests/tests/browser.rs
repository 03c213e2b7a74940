//! The web console in a real browser: headless Chromium (Debian's, installed by `scripts/test`), driven
//! over the DevTools protocol with the WebSocket client the project already has. A person signs in, sees an
//! agent's request appear, approves it and the waiting agent (a real sled's `ask`, what `/permission`
//! answers from) gets the approval; denies one with words and the agent gets them;
//! a viewer has no buttons; a cross-site form post decides nothing. A screenshot of the console is written to
//! `target/console.png` (the README's picture). One sled's request nested 10,000 levels deep blanks nothing:
//! the gateway denies it at once, and the page, handed one all the same, folds it and shows the rest. A person
//! signs in at the organisation's OpenID provider (the tests' `oidc-provider`), through its own pages, and
//! approves.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_proto::gateway::{INPUT_TOO_DEEP, ProjectScope, Role};
use uplink_tests::oidc::Provider;
use uplink_tests::program::{Program, Running};
use uplink_tests::{RealGateway, free_port, http, identify, perm_response, within};
use uplink_tokio::gateway::credentials::{AdminPrincipal, Credentials, SledCredential, TokenHash};
use uplink_tokio::gateway::{GatewayServerConfig, OidcConfig};
use uplink_tokio::{Cause, Decision, LinkState, Uplink, UplinkConfig};

const SLED: &str = "token-sled-0123456789abcdef0123456789abcdef";
const ANA: &str = "token-ana-approver-0123456789abcdef01234567";
const VIC: &str = "token-vic-viewer-0123456789abcdef0123456789ab";

type Cdp = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    // Killed (when not closed) before its profile is removed.
    chromium: Running,
    cdp: Cdp,
    session: String,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Browser {
        let exe = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("Chromium is needed for the console's browser test: run `bash scripts/test` (it installs it)");
        // One profile per browser: the tests of this file run at once, and Chromium locks its profile. Chromium
        // makes it.
        let profile = uplink_tests::temp_dir();
        let mut chromium = Program::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1100,760",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
            .arg("about:blank")
            .log()
            .banner_lines(0)
            .start()
            .await;
        const LISTENING: &str = "DevTools listening on ";
        let line = chromium.log_until(LISTENING).await.pop().unwrap();
        let url = line.split(LISTENING).nth(1).unwrap().trim().to_owned();
        let (cdp, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut browser = Browser { chromium, cdp, session: String::new(), next: 0, _profile: profile };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"})).await["targetId"].clone();
        let attached = browser.call("Target.attachToTarget", json!({"targetId": target, "flatten": true})).await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.call("Page.enable", json!({})).await;
        browser
    }

    /// One DevTools command (on the page, once attached): its result, or the protocol's error.
    async fn send(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = self.session.clone().into();
        }
        self.cdp.send(Message::text(command.to_string())).await.unwrap();
        within(method, async {
            loop {
                let Message::Text(text) = self.cdp.next().await.unwrap().unwrap() else { continue };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return if v["error"].is_null() { Ok(v["result"].clone()) } else { Err(v["error"].clone()) };
                }
            }
        })
        .await
    }

    /// One DevTools command that must succeed; its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.send(method, params).await {
            Ok(result) => result,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// `expression`'s value in the page, or `None` while the page is between documents or it throws.
    async fn try_eval(&mut self, expression: &str) -> Option<Value> {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let r = self.send("Runtime.evaluate", params).await.ok()?;
        r["exceptionDetails"].is_null().then(|| r["result"]["value"].clone())
    }

    /// `expression`'s value in the page, which must evaluate.
    async fn eval(&mut self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Some(v) => v,
            None => panic!("{expression} did not evaluate"),
        }
    }

    /// Until `expression` is true in the page (bounded); a page between documents counts as not yet.
    async fn until(&mut self, what: &str, expression: &str) {
        within(what, async {
            while self.try_eval(expression).await != Some(Value::Bool(true)) {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
    }

    async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.until("the page to load", "document.readyState === 'complete'").await;
    }

    /// Closes Chromium as its user would, and waits until it has exited: then nothing of it writes in its profile
    /// any more, and the profile is removed with it. (Killed, its helper processes can outlive it and leave the
    /// profile behind.)
    async fn close(mut self) {
        let command = json!({"id": self.next + 1, "method": "Browser.close"});
        self.cdp.send(Message::text(command.to_string())).await.unwrap();
        assert!(self.chromium.wait().await.success());
    }

    async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// An agent asking through the sled: the answer, once someone decides.
fn ask(sled: &Uplink, input: Value) -> tokio::task::JoinHandle<uplink_tokio::Answer> {
    let sled = sled.clone();
    tokio::spawn(async move { sled.ask("Bash", &input).await })
}

/// A page on another site that posts a form at `action` as soon as it loads.
async fn hostile_site(action: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = format!(
        r#"<!doctype html><form id="f" method="post" action="{action}" enctype="text/plain"><input name='{{"approved":true,"x":"' value='"}}'></form><script>document.getElementById("f").submit()</script>"#
    );
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let page = page.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let page = page.clone();
                    async move {
                        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(page)));
                        r.headers_mut().insert("content-type", "text/html".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_person_decides_in_the_console_in_a_real_browser() {
    let sleds = vec![SledCredential::new("farm", TokenHash::of(SLED), ProjectScope::Any)];
    let people = vec![
        AdminPrincipal::new("ana", Role::Approver, TokenHash::of(ANA)),
        AdminPrincipal::new("vic", Role::Viewer, TokenHash::of(VIC)),
    ];
    let config =
        GatewayServerConfig::with_credentials("127.0.0.1:0".parse().unwrap(), Credentials::new(sleds, people).unwrap());
    let gw = RealGateway::start_config(config).await;
    let mut browser = Browser::launch().await;
    sign_in(&mut browser, &gw.base, ANA, "ana (approver)").await;

    // A request appears, readably; approved with a click, and the sled hears it.
    let mut config = UplinkConfig::new(&gw.ws, "team-a/web");
    config.token = Some(SLED.into());
    let sled = Uplink::start(config).unwrap();
    uplink_tests::link_state_where(&sled, "the sled to connect", |s| matches!(s, LinkState::Connected { .. })).await;
    let first = ask(&sled, json!({"command": "cargo test --workspace", "description": "run the tests"}));
    browser.until("the request to appear", "document.querySelectorAll('#pending-list .card').length === 1").await;
    let shown = browser.eval("document.querySelector('#pending-list .card').textContent").await;
    assert!(shown.as_str().unwrap().contains("cargo test --workspace"), "{shown}");
    // The agent's own words for the call are shown above it.
    assert_eq!(
        browser.eval("document.querySelector('#pending-list .card .description').textContent").await,
        json!("run the tests")
    );
    assert!(shown.as_str().unwrap().contains("Always allow Bash(cargo test *)"), "{shown}");
    // The time left, from the deadline the sled announced (two minutes by default), counting down.
    browser
        .until(
            "the countdown",
            "document.querySelector('#pending-list .card .deadline').textContent.startsWith('decide within 1 min')",
        )
        .await;
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console.png");
    browser.screenshot(&shot).await;
    browser.eval("document.querySelector('#pending-list .card button.approve').click(); true").await;
    let answer = within("the agent's answer", first).await.unwrap();
    assert_eq!((answer.decision, answer.cause), (Decision::Approve, Cause::Response));
    browser.until("the card to go", "document.querySelectorAll('#pending-list .card').length === 0").await;
    browser.until("who ended it to be said", "document.querySelector('#notice').textContent.includes('by ana')").await;

    // A fetch shows where and what the agent wants from it, not raw JSON.
    let fetching = {
        let sled = sled.clone();
        tokio::spawn(async move {
            sled.request_permission(
                "WebFetch",
                &json!({"url": "https://docs.example/api", "prompt": "find the rate limits"}),
            )
            .await
        })
    };
    let fetch =
        "[...document.querySelectorAll('#pending-list .card')].find(c => c.textContent.includes('docs.example'))";
    browser.until("the fetch", &format!("!!{fetch}")).await;
    assert_eq!(
        browser.eval(&format!("{fetch}.querySelector('.url').textContent")).await,
        json!("https://docs.example/api")
    );
    assert_eq!(
        browser.eval(&format!("{fetch}.querySelector('.prompt').textContent")).await,
        json!("find the rate limits")
    );
    browser.eval(&format!("{fetch}.querySelector('button.deny').click(); true")).await;
    assert_eq!(within("the fetch's answer", fetching).await.unwrap(), Decision::Deny);

    // Denied with words for the agent.
    let denying = ask(&sled, json!({"command": "rm -rf build"}));
    let second =
        "[...document.querySelectorAll('#pending-list .card')].find(c => c.textContent.includes('rm -rf build'))";
    browser.until("the second request", &format!("!!{second}")).await;
    browser
        .eval(&format!("const c = {second}; c.querySelector('input').value = 'use make clean'; c.querySelector('button.deny').click(); true"))
        .await;
    let denied = within("the agent's answer", denying).await.unwrap();
    assert_eq!((denied.decision, denied.message.as_deref()), (Decision::Deny, Some("use make clean")));

    // Words being typed survive the list's redraw as another request comes: the same field, the words and
    // the focus kept (checked to fail with the page that drew every card anew). Then Enter in the field
    // denies with them.
    let typed = ask(&sled, json!({"command": "git push --force"}));
    let pushing =
        "[...document.querySelectorAll('#pending-list .card')].find(c => c.textContent.includes('git push --force'))";
    browser.until("the request to push", &format!("!!{pushing}")).await;
    browser
        .eval(&format!(
            "window.typing = {pushing}.querySelector('input'); typing.focus(); typing.value = 'open a pull request'; true"
        ))
        .await;
    let _meanwhile = ask(&sled, json!({"command": "cargo fmt --check"}));
    browser
        .until(
            "the request that comes meanwhile",
            "[...document.querySelectorAll('#pending-list .card')].some(c => c.textContent.includes('cargo fmt --check'))",
        )
        .await;
    assert_eq!(
        browser
            .eval(&format!(
                "[{pushing}.querySelector('input') === typing, typing.value, document.activeElement === typing]"
            ))
            .await,
        json!([true, "open a pull request", true]),
        "the redraw lost what was being typed"
    );
    browser.eval("typing.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true})); true").await;
    let denied = within("the agent's answer", typed).await.unwrap();
    assert_eq!((denied.decision, denied.message.as_deref()), (Decision::Deny, Some("open a pull request")));

    // A cross-site form post, with the signed-in browser: decides nothing.
    let _third = ask(&sled, json!({"command": "curl evil.example"}));
    let third =
        "[...document.querySelectorAll('#pending-list .card')].find(c => c.textContent.includes('curl evil.example'))";
    browser.until("the third request", &format!("!!{third}")).await;
    let id = browser.eval(&format!("{third}.dataset.id")).await.as_str().unwrap().to_owned();
    let port = gw.addr.port();
    let evil = hostile_site(format!("http://127.0.0.1:{port}/api/permissions/{id}")).await;
    browser.goto(&format!("http://localhost:{}/", evil.port())).await;
    browser.until("the form to be posted", "location.pathname.startsWith('/api/permissions')").await;
    let (_, listing) = http("GET", &format!("{}/api/permissions", gw.base), Some(ANA), None, &[]).await;
    assert!(listing.contains(&id), "a cross-site post decided: {listing}");

    // A viewer sees the request and no buttons.
    browser.goto(&format!("{}/", gw.base)).await;
    browser.until("ana's session to come back", "document.querySelector('#who').textContent.includes('ana')").await;
    browser.eval("document.querySelector('#sign-out').click(); true").await;
    browser.until("the sign-in form again", "!document.querySelector('#sign-in-view').hidden").await;
    browser
        .eval(&format!(
            "document.querySelector('#token').value = '{VIC}'; document.querySelector('#sign-in button').click(); true"
        ))
        .await;
    browser.until("the viewer's list", &format!("!!{third}")).await;
    assert_eq!(browser.eval("document.querySelectorAll('#pending-list .card button').length").await, json!(0));
    browser.close().await;
    sled.shutdown().await;
    gw.stop().await;
}

/// Signs `token` in on the console at `base` (the page is loaded there first), and waits until the page's event
/// stream is open: the page learns of a new request only from it, and one asked before it opened would not be
/// shown until the next event.
async fn sign_in(browser: &mut Browser, base: &str, token: &str, who: &str) {
    browser.goto(&format!("{base}/")).await;
    browser.until("the sign-in form", "!document.querySelector('#sign-in-view').hidden").await;
    browser
        .eval(&format!(
            "document.querySelector('#token').value = '{token}'; document.querySelector('#sign-in button').click(); true"
        ))
        .await;
    browser
        .until("the person to be signed in", &format!("document.querySelector('#who').textContent.includes('{who}')"))
        .await;
    browser.until("the page's event stream", "events !== null && events.readyState === EventSource.OPEN").await;
}

#[tokio::test]
async fn one_request_nested_ten_thousand_deep_blanks_nothing() {
    let sleds = vec![SledCredential::new("farm", TokenHash::of(SLED), ProjectScope::Any)];
    let people = vec![AdminPrincipal::new("ana", Role::Approver, TokenHash::of(ANA))];
    let config =
        GatewayServerConfig::with_credentials("127.0.0.1:0".parse().unwrap(), Credentials::new(sleds, people).unwrap());
    let gw = RealGateway::start_config(config).await;
    let mut browser = Browser::launch().await;
    sign_in(&mut browser, &gw.base, ANA, "ana (approver)").await;

    // A sled sends, as a raw frame, a request whose input nests 10,000 arrays (valid JSON, far within the
    // frame limit); another sled's agent asks for something ordinary.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut evil = gw.raw_sled_with(SLED).await;
    identify(&mut evil, "team-b/evil").await;
    let frame =
        format!(r#"{{"type":"perm_request","req_id":"deep","payload":{{"tool_name":"Deep","tool_input":{deep}}}}}"#);
    evil.send(Message::text(frame)).await.unwrap();
    let mut config = UplinkConfig::new(&gw.ws, "team-a/web");
    config.token = Some(SLED.into());
    let sled = Uplink::start(config).unwrap();
    uplink_tests::link_state_where(&sled, "the sled to connect", |s| matches!(s, LinkState::Connected { .. })).await;
    let ordinary = ask(&sled, json!({"command": "cargo build --release"}));
    let card = "[...document.querySelectorAll('#pending-list .card')].find(c => c.textContent.includes('cargo build --release'))";
    browser.until("the ordinary request to be shown", &format!("!!{card}")).await;
    // And after a reload.
    browser.goto(&format!("{}/", gw.base)).await;
    browser.until("the ordinary request to be shown again", &format!("!!{card}")).await;

    // The gateway denied the deep one at once, saying why, and never held it: nothing else is listed, and
    // the listing parses.
    let denial = perm_response(&mut evil).await;
    assert_eq!((denial["req_id"].as_str(), denial["payload"]["approved"].as_bool()), (Some("deep"), Some(false)));
    assert_eq!(denial["payload"]["message"], INPUT_TOO_DEEP);
    let (_, listing) = http("GET", &format!("{}/api/permissions", gw.base), Some(ANA), None, &[]).await;
    let listing: Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(listing["permissions"].as_array().map(Vec::len), Some(1), "{listing}");

    // The page, handed such a request all the same (as a listing from the gateway would hold it), folds it
    // and still shows and decides the other.
    browser
        .eval(&format!(
            r#"const real = window.fetch;
            window.fetch = async (path, init) => {{
              const r = await real(path, init);
              if (String(path) !== "/api/permissions") return r;
              const text = await r.text();
              const rest = text.slice('{{"permissions":['.length, -2);
              const forged = '{{"id":"999-0","project":"forged","tool_name":"Deep","tool_input":{deep},"age_ms":0,"deadline_in_ms":null,"suggested_rule":null}}';
              return new Response('{{"permissions":[' + forged + (rest ? "," + rest : "") + ']}}', {{ status: r.status, headers: r.headers }});
            }};
            refresh().then(() => true)"#
        ))
        .await;
    let forged = "document.querySelector('#pending-list .card[data-id=\"999-0\"]')";
    browser.until("the deep request to be shown, folded", &format!("!!{forged}")).await;
    let shown = browser.eval(&format!("{forged}.textContent")).await;
    assert!(shown.as_str().unwrap().contains("nested deeper than 64 levels are folded"), "{shown}");
    browser.until("the ordinary request beside it", &format!("!!{card}")).await;
    // One that cannot be drawn at all is shown as such, with only a denial offered; the rest are drawn.
    let unshown = browser
        .eval(
            "const li = cardOrNote({id: '998-0', project: 'p', tool_name: 't', get tool_input() { throw new Error('boom'); }}); \
             [li.className, li.textContent.includes('boom'), [...li.querySelectorAll('button')].map(b => b.textContent)]",
        )
        .await;
    assert_eq!(unshown, json!(["card unshown", true, ["Deny"]]));
    // However long an input, what is drawn of it is bounded, and says so.
    let long = browser
        .eval("const box = renderInput('Write', {blob: 'x'.repeat(1000000)}); [box.textContent.length < 70000, box.textContent.includes('Only the first 65,536 characters')]")
        .await;
    assert_eq!(long, json!([true, true]));

    browser.eval(&format!("{card}.querySelector('button.approve').click(); true")).await;
    let answer = within("the agent's answer", ordinary).await.unwrap();
    assert_eq!((answer.decision, answer.cause), (Decision::Approve, Cause::Response));
    browser.close().await;
    sled.shutdown().await;
    gw.stop().await;
}

/// A gateway on `listen` (a restart takes its predecessor's address) keeping its state in `store`, holding
/// requests across restarts (`resume`): its address, and what stops it.
async fn gateway_at(
    listen: std::net::SocketAddr,
    store: &uplink_tokio::store::MemoryStore,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let sleds = vec![SledCredential::new("farm", TokenHash::of(SLED), ProjectScope::Any)];
    let people = vec![AdminPrincipal::new("ana", Role::Approver, TokenHash::of(ANA))];
    let mut config = GatewayServerConfig::with_credentials(listen, Credentials::new(sleds, people).unwrap());
    config.hub.resume = Some(uplink_proto::gateway::ResumeConfig::default());
    let server =
        uplink_tokio::gateway::GatewayServer::bind_with_store(config, Some(Box::new(store.clone()))).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop, task)
}

/// The console across gateway restarts: while its stream is down it says so (never "Nothing is waiting"),
/// comes back by itself and lists again what waits, under the same ids; and when the gateway no longer
/// knows its session, it asks the person to sign in again.
#[tokio::test]
async fn the_console_says_when_it_is_not_connected_and_lists_again_after_a_restart() {
    let store = uplink_tokio::store::MemoryStore::new().unwrap();
    let (addr, stop, task) = gateway_at("127.0.0.1:0".parse().unwrap(), &store).await;
    let base = format!("http://{addr}");
    let mut browser = Browser::launch().await;
    sign_in(&mut browser, &base, ANA, "ana (approver)").await;
    browser.until("the link said up", "document.querySelector('#link').dataset.state === 'up'").await;
    let mut config = UplinkConfig::new(format!("ws://{addr}/api/sled-uplink"), "team-a/web");
    config.token = Some(SLED.into());
    config.sled.backoff_initial = Duration::from_millis(100);
    config.sled.backoff_max = Duration::from_millis(200);
    let sled = Uplink::start(config).unwrap();
    uplink_tests::link_state_where(&sled, "the sled to connect", |s| matches!(s, LinkState::Connected { .. })).await;
    let waiting = ask(&sled, json!({"command": "cargo build"}));
    browser.until("the request to appear", "document.querySelectorAll('#pending-list .card').length === 1").await;
    let id = browser.eval("document.querySelector('#pending-list .card').dataset.id").await;

    // The gateway stops: the page says it is reconnecting, and never that nothing waits.
    let _ = stop.send(());
    within("the gateway to stop", task).await.unwrap();
    browser.until("the link said down", "document.querySelector('#link').dataset.state === 'down'").await;
    assert_eq!(browser.eval("document.querySelector('#pending-empty').hidden").await, json!(true));

    // A new gateway on the same address and store: the page comes back by itself and lists the request again.
    let (_, stop, task) = gateway_at(addr, &store).await;
    browser.until("the link said up again", "document.querySelector('#link').dataset.state === 'up'").await;
    browser
        .until(
            "the request listed again",
            &format!("[...document.querySelectorAll('#pending-list .card')].some(c => c.dataset.id === {id})"),
        )
        .await;
    browser.eval("document.querySelector('#pending-list .card button.approve').click(); true").await;
    let answer = within("the agent's answer", waiting).await.unwrap();
    assert_eq!((answer.decision, answer.cause), (Decision::Approve, Cause::Response));

    // A gateway that does not know the session (a fresh store): the page asks to sign in again.
    let _ = stop.send(());
    within("the gateway to stop", task).await.unwrap();
    let fresh = uplink_tokio::store::MemoryStore::new().unwrap();
    let (_, stop, task) = gateway_at(addr, &fresh).await;
    browser.until("the sign-in form again", "!document.querySelector('#sign-in-view').hidden").await;
    let said = browser.eval("document.querySelector('#sign-in-error').textContent").await;
    assert!(said.as_str().unwrap().contains("sign in again"), "{said}");
    browser.close().await;
    sled.shutdown().await;
    let _ = stop.send(());
    within("the gateway to stop", task).await.unwrap();
}

/// What the page says as time passes and people decide: the time waited counts on, a request near its
/// deadline is marked urgent, notices name the request's tool and project and say what happened in words,
/// and the record shows a rule that was added as a rule.
#[tokio::test]
async fn the_console_counts_time_marks_urgency_and_says_what_happened_in_words() {
    let store = uplink_tokio::store::MemoryStore::new().unwrap();
    let (addr, stop, task) = gateway_at("127.0.0.1:0".parse().unwrap(), &store).await;
    let base = format!("http://{addr}");
    let mut browser = Browser::launch().await;
    sign_in(&mut browser, &base, ANA, "ana (approver)").await;
    let mut config = UplinkConfig::new(format!("ws://{addr}/api/sled-uplink"), "team-a/web");
    config.token = Some(SLED.into());
    // Just over the page's urgency threshold (30 s): urgent a second or two after it appears.
    config.sled.permission_timeout = Duration::from_secs(32);
    let sled = Uplink::start(config).unwrap();
    uplink_tests::link_state_where(&sled, "the sled to connect", |s| matches!(s, LinkState::Connected { .. })).await;
    let waiting = ask(&sled, json!({"command": "make release"}));
    browser.until("the request to appear", "document.querySelectorAll('#pending-list .card').length === 1").await;
    assert_eq!(
        browser.eval("document.querySelector('#pending-list .card').classList.contains('urgent')").await,
        json!(false)
    );
    browser
        .until(
            "the time waited to count",
            "document.querySelector('#pending-list .card .age').textContent !== 'waiting 0 s'",
        )
        .await;
    browser
        .until(
            "the request to turn urgent",
            "document.querySelector('#pending-list .card').classList.contains('urgent')",
        )
        .await;

    // "Always allow" for a wildcard rule takes a second click, which says first what it will allow.
    let always = "document.querySelector('#pending-list .card button.always')";
    let shown = browser.eval(&format!("{always}.textContent")).await;
    assert!(shown.as_str().unwrap().starts_with("Always allow Bash(make release *)"), "{shown}");
    browser.eval(&format!("{always}.click(); true")).await;
    let armed = browser.eval(&format!("{always}.textContent")).await;
    assert!(armed.as_str().unwrap().contains("approve every Bash(make release *) call in this project"), "{armed}");
    let (_, listing) = http("GET", &format!("{base}/api/permissions"), Some(ANA), None, &[]).await;
    assert!(listing.contains("make release"), "one click decided a broad grant: {listing}");
    assert!(!waiting.is_finished());
    // Confirmed: the notice says so in words, naming the tool and project.
    browser.eval(&format!("{always}.click(); true")).await;
    let answer = within("the agent's answer", waiting).await.unwrap();
    assert_eq!(answer.decision, Decision::AlwaysAllow);
    browser.until("the notice", "document.querySelector('#notice').textContent.includes('Bash in team-a/web')").await;
    let notice = browser.eval("document.querySelector('#notice').textContent").await;
    assert!(notice.as_str().unwrap().contains("always allowed by ana"), "{notice}");
    // The record shows the rule it made as a rule.
    browser.eval("document.querySelector('nav button[data-view=audit]').click(); true").await;
    browser.until("the record", "document.querySelector('#audit-rows').textContent.includes('rule 1: allow')").await;
    assert_eq!(
        browser.eval("document.querySelector('#audit-rows').textContent.includes('[object Object]')").await,
        json!(false)
    );
    browser.close().await;
    sled.shutdown().await;
    let _ = stop.send(());
    within("the gateway to stop", task).await.unwrap();
}

#[tokio::test]
async fn a_person_signs_in_at_the_identity_provider_and_approves_in_a_real_browser() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let provider = Provider::start(Some(&format!("{base}/console/oidc/callback"))).await;
    let sleds = vec![SledCredential::new("farm", TokenHash::of(SLED), ProjectScope::Any)];
    let mut config = GatewayServerConfig::with_credentials(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Credentials::new(sleds, vec![AdminPrincipal::new("ana", Role::Admin, TokenHash::of(ANA))]).unwrap(),
    );
    config.public_url = Some(base.clone());
    config.oidc = Some(OidcConfig {
        people: vec!["group:platform-oncall=approver".parse().unwrap()],
        client_id: Some("uplink-console".into()),
        client_secret: Some("console-secret".into()),
        scopes: vec!["groups".into()],
        ..OidcConfig::new(provider.issuer.clone())
    });
    let store = uplink_tokio::store::MemoryStore::new().unwrap();
    let gw = RealGateway::start_at(config, Some(Box::new(store))).await;
    let mut sled_config = UplinkConfig::new(&gw.ws, "team-a/web");
    sled_config.token = Some(SLED.into());
    let sled = Uplink::start(sled_config).unwrap();
    uplink_tests::link_state_where(&sled, "the sled to connect", |s| matches!(s, LinkState::Connected { .. })).await;

    // The console offers the organisation's sign-in; its link leads to the provider's own form.
    let mut browser = Browser::launch().await;
    browser.goto(&format!("{base}/")).await;
    browser.until("the provider's sign-in offered", "!document.querySelector('#sso').hidden").await;
    browser.eval("document.querySelector('#sso-link').click(); true").await;
    browser.until("the provider's sign-in form", "!!document.querySelector('input[name=login]')").await;
    browser
        .eval(
            "document.querySelector('input[name=login]').value = 'alice'; \
             document.querySelector('input[name=password]').value = 'any'; \
             document.querySelector('form').submit(); true",
        )
        .await;
    // The provider asks alice to let the console know who she is.
    browser.until("the provider's consent", "!!document.querySelector('input[name=prompt][value=consent]')").await;
    browser.eval("document.querySelector('form').submit(); true").await;
    // Back at the console, signed in as herself, with the role her group has.
    browser
        .until(
            "alice to be signed in",
            "location.pathname === '/' && !!document.querySelector('#who') && \
             document.querySelector('#who').textContent === 'alice@example.com (approver)'",
        )
        .await;
    browser.until("the page's event stream", "events !== null && events.readyState === EventSource.OPEN").await;

    // She approves a request, and the sled hears it; the record says who, by issuer and subject.
    let asked = ask(&sled, json!({"command": "cargo test"}));
    browser.until("the request to appear", "document.querySelectorAll('#pending-list .card').length === 1").await;
    browser.eval("document.querySelector('#pending-list .card button.approve').click(); true").await;
    let answer = within("the agent's answer", asked).await.unwrap();
    assert_eq!((answer.decision, answer.cause), (Decision::Approve, Cause::Response));
    let (status, body) = http("GET", &format!("{base}/api/audit?outcome=approve"), Some(ANA), None, &[]).await;
    assert_eq!(status, 200, "{body}");
    // Her stable identity, and her email for reading.
    assert!(body.contains(&format!("\"by\":\"{}#alice (alice@example.com)\"", provider.issuer)), "{body}");

    // Signed out, the provider's sign-in is offered again.
    browser.eval("document.querySelector('#sign-out').click(); true").await;
    browser
        .until(
            "the sign-in again",
            "!document.querySelector('#sign-in-view').hidden && !document.querySelector('#sso').hidden",
        )
        .await;
    browser.close().await;
    sled.shutdown().await;
    gw.stop().await;
}

/// On a phone-sized screen (390 × 844, as an iPhone 14): nothing is wider than the screen, a long command
/// wraps inside its card, the buttons are on screen and work; and Chromium finds the console installable as
/// a home-screen app (its manifest and icons, and no installability error).
#[tokio::test]
async fn the_console_on_a_phone_is_readable_and_installable() {
    let store = uplink_tokio::store::MemoryStore::new().unwrap();
    let (addr, stop, task) = gateway_at("127.0.0.1:0".parse().unwrap(), &store).await;
    let base = format!("http://{addr}");
    let mut browser = Browser::launch().await;
    let phone = json!({"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": true});
    browser.call("Emulation.setDeviceMetricsOverride", phone).await;
    sign_in(&mut browser, &base, ANA, "ana (approver)").await;
    let mut config = UplinkConfig::new(format!("ws://{addr}/api/sled-uplink"), "team-a/web");
    config.token = Some(SLED.into());
    let sled = Uplink::start(config).unwrap();
    uplink_tests::link_state_where(&sled, "the sled to connect", |s| matches!(s, LinkState::Connected { .. })).await;
    let long = format!("cargo test --workspace --all-features -- --test-threads 1 {}", "a/very/long/path".repeat(12));
    let asked = ask(&sled, json!({"command": long, "description": "run every test, one at a time"}));
    browser.until("the request to appear", "document.querySelectorAll('#pending-list .card').length === 1").await;
    assert_eq!(browser.eval("window.innerWidth").await, json!(390));
    let fits = browser
        .eval(
            "const w = window.innerWidth; const within = (e) => { const r = e.getBoundingClientRect(); return r.left >= 0 && r.right <= w; }; \
             [document.documentElement.scrollWidth <= w, within(document.querySelector('#pending-list .card pre')), \
              [...document.querySelectorAll('#pending-list .card button')].every(within)]",
        )
        .await;
    assert_eq!(fits, json!([true, true, true]), "wider than a phone's screen");
    // Nothing but what the request says (a missing note once showed as the word "null": checked to fail so).
    let card = browser.eval("document.querySelector('#pending-list .card .input').textContent").await;
    assert_eq!(card, json!(format!("run every test, one at a time{long}")), "the card says more than the request");
    // The console as a home-screen app.
    let manifest = browser.call("Page.getAppManifest", json!({})).await;
    assert_eq!(manifest["errors"], json!([]), "{manifest}");
    assert!(manifest["url"].as_str().unwrap().ends_with("/console/manifest.webmanifest"), "{manifest}");
    let installable = browser.call("Page.getInstallabilityErrors", json!({})).await;
    assert_eq!(installable["installabilityErrors"], json!([]), "not installable: {installable}");
    for icon in ["/console/icon-192.png", "/console/icon-512.png", "/console/icon.svg"] {
        let (status, _) = uplink_tests::http("GET", &format!("{base}{icon}"), None, None, &[]).await;
        assert_eq!(status, 200, "{icon}");
    }
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-phone.png");
    browser.screenshot(&shot).await;
    browser.eval("document.querySelector('#pending-list .card button.approve').click(); true").await;
    assert_eq!(within("the agent's answer", asked).await.unwrap().decision, Decision::Approve);
    browser.close().await;
    sled.shutdown().await;
    let _ = stop.send(());
    within("the gateway to stop", task).await.unwrap();
}
