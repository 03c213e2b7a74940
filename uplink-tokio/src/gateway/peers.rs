//! This node's calls to the other nodes of its cluster, and its checks of theirs ([`Peers`]): each call is
//! signed with a key every node derives from the database's secret, for one node, at one time; the core's
//! [`PeerCalls`] decides which are let in, and its [`route`](uplink_proto::gateway::peers::route) where a
//! decision goes. The calls themselves are the internal listener's routes (`internal.rs`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::{HeaderMap, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use ring::hmac;
use uplink_proto::gateway::peers::PEER_CALL_WITHIN;
use uplink_proto::gateway::{PeerCalls, PeerRefusal};

use super::credentials::TokenHash;
use crate::store::{ClusterStore, HeldAt, Peer, StoreError};

/// The largest answer read from another node (a listing of everything waiting there).
const MAX_PEER_ANSWER: usize = 64 << 20;

/// The headers a call between nodes carries: the caller, the node it is for, the caller's time (Unix
/// milliseconds) and the tag over them and the call.
const FROM: &str = "uplink-node";
const TO: &str = "uplink-to";
const AT: &str = "uplink-at";
const TAG: &str = "uplink-tag";

/// This node among its peers.
pub(crate) struct Peers {
    /// This node's id.
    pub(crate) me: u64,
    store: Arc<dyn ClusterStore>,
    key: hmac::Key,
    calls: Mutex<PeerCalls>,
    /// Connections to the other nodes, kept open between calls (a call's connection is dropped with an
    /// answer not read to its end, which tells the other node its caller went away).
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A call to another node: its method, its path, and the headers it carries (signed with it, in this order;
/// an empty value is not sent, and reads as empty at the other end).
pub(super) struct Call<'a> {
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) carried: &'a [(&'a str, &'a str)],
}

/// The answer of another node.
pub(super) struct PeerAnswer {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
}

impl Peers {
    /// Node `me` of the cluster `store` describes, whose database's secret is `secret`.
    pub(crate) fn new(me: u64, store: Arc<dyn ClusterStore>, secret: &[u8; 32]) -> Peers {
        // A key of its own, derived from the secret (which also keys the audit log's hidden inputs).
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), b"uplink cluster calls v1");
        Peers {
            me,
            store,
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            calls: Mutex::new(PeerCalls::new(me)),
            client: {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(PEER_CALL_WITHIN));
                Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
            },
        }
    }

    /// The text a call's tag is over: who calls whom, when, the call itself, and the headers it carries
    /// (each `name:value`, in the call's order).
    fn message(from: u64, to: u64, at_ms: u64, call: &Call<'_>, body: &[u8]) -> Vec<u8> {
        let (method, path) = (call.method, call.path);
        let mut text = format!("uplink-peer-v1\n{from}\n{to}\n{at_ms}\n{method}\n{path}\n").into_bytes();
        for (name, value) in call.carried {
            text.extend_from_slice(format!("{name}:{value}\n").as_bytes());
        }
        text.extend_from_slice(body);
        text
    }

    /// Sends `call` with `body` to `peer`, signed; its answer's head, the body unread; no bound on the time.
    pub(super) async fn send(
        &self,
        peer: &Peer,
        call: &Call<'_>,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let at_ms = unix_ms();
        let message = Self::message(self.me, peer.node, at_ms, call, &body);
        let tag = crate::store::audit::hex(hmac::sign(&self.key, &message).as_ref());
        let (me, to, at) = (self.me.to_string(), peer.node.to_string(), at_ms.to_string());
        let mut headers = vec![(FROM, me.as_str()), (TO, to.as_str()), (AT, at.as_str()), (TAG, tag.as_str())];
        headers.extend(call.carried.iter().filter(|(_, v)| !v.is_empty()).map(|(n, v)| (*n, *v)));
        let uri = format!("http://{}{}", peer.internal, call.path);
        let mut request = hyper::Request::builder().method(call.method).uri(&uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| format!("{uri}: {e}"))?;
        self.client.request(request).await.map_err(|e| format!("node {} at {}: {e}", peer.node, peer.internal))
    }

    /// Calls `method path` with `body` at `peer`: its answer, or why there was none (within
    /// [`PEER_CALL_WITHIN`]).
    pub(super) async fn call(&self, peer: &Peer, method: &str, path: &str, body: Bytes) -> Result<PeerAnswer, String> {
        let exchange = async {
            let response = self.send(peer, &Call { method, path, carried: &[] }, body).await?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_PEER_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("node {}'s answer: {e}", peer.node))?
                .to_bytes();
            Ok(PeerAnswer { status, body })
        };
        tokio::time::timeout(PEER_CALL_WITHIN, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("node {} did not answer within {PEER_CALL_WITHIN:?}", peer.node)))
    }

    /// Asks every other live node `GET path` at once: each node's answer body (`None`: it did not answer,
    /// or not with `200`), or `Err` when the nodes could not be read at all.
    pub(super) async fn ask_all(&self, path: &str) -> Result<Vec<(u64, Option<Bytes>)>, StoreError> {
        let others = self.others().await?;
        let asked = others.iter().map(|p| self.call(p, "GET", path, Bytes::new()));
        let answers = futures_util::future::join_all(asked).await;
        Ok(others
            .iter()
            .zip(answers)
            .map(|(peer, answer)| (peer.node, answer.ok().filter(|a| a.status == StatusCode::OK).map(|a| a.body)))
            .collect())
    }

    /// Whether a call's head names a node, this node as the one it is for, and a time within the window
    /// (before its body is read; its tag is checked with the body, [`Peers::check`]).
    pub(super) fn precheck(&self, headers: &HeaderMap) -> Result<(), String> {
        let (_, to, at_ms) = Self::head(headers)?;
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.check_head(unix_ms(), to, at_ms).map_err(|why| why.to_string())
    }

    /// The caller, the node called and the time a call's head names.
    fn head(headers: &HeaderMap) -> Result<(u64, u64, u64), String> {
        let number = |name: &str| -> Result<u64, String> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {name} header"))
        };
        Ok((number(FROM)?, number(TO)?, number(AT)?))
    }

    /// The node a call that came in on the internal listener is from, when its tag (over the headers named
    /// `carried` too) checks out and the core lets it in; otherwise why not.
    pub(super) fn check(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        carried: &[&str],
        body: &[u8],
    ) -> Result<u64, String> {
        let (from, to, at_ms) = Self::head(headers)?;
        let tag = headers
            .get(TAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<TokenHash>().ok())
            .map(|h| h.0)
            .ok_or_else(|| format!("no {TAG} header"))?;
        let values: Vec<(&str, &str)> = carried
            .iter()
            .map(|name| (*name, headers.get(*name).and_then(|v| v.to_str().ok()).unwrap_or_default()))
            .collect();
        let message = Self::message(from, to, at_ms, &Call { method, path, carried: &values }, body);
        if hmac::verify(&self.key, &message, &tag).is_err() {
            return Err("the call's tag does not check out".to_owned());
        }
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(unix_ms(), to, at_ms, tag)
            .map_err(|why: PeerRefusal| why.to_string())?;
        Ok(from)
    }

    /// Where the request `perm` waits, by the shared table.
    pub(super) async fn holder(&self, perm: String) -> Result<Option<HeldAt>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.holder(&perm))
            .await
            .unwrap_or_else(|e| Err(StoreError::Database(e.to_string())))
    }

    /// The live node, other than this one, whose claim holds `project`, with where it listens.
    pub(super) async fn holding(&self, project: String) -> Result<Option<Peer>, StoreError> {
        let store = self.store.clone();
        let me = self.me;
        tokio::task::spawn_blocking(move || store.project_holder(&project))
            .await
            .unwrap_or_else(|e| Err(StoreError::Database(e.to_string())))
            .map(|holder| holder.filter(|p| p.node != me))
    }

    /// The other live nodes with an internal listener.
    pub(super) async fn others(&self) -> Result<Vec<Peer>, StoreError> {
        let store = self.store.clone();
        let me = self.me;
        tokio::task::spawn_blocking(move || store.peers())
            .await
            .unwrap_or_else(|e| Err(StoreError::Database(e.to_string())))
            .map(|all| all.into_iter().filter(|p| p.node != me).collect())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}
