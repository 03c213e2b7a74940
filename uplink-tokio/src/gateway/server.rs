//! The gateway server: bound ([`GatewayServer::bind`]), then run until told to stop
//! ([`GatewayServer::run`]): the listener, TLS, each connection's HTTP, and the ordered stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant as TokioInstant;
use tracing::debug;
use uplink_proto::Instant;
use uplink_proto::gateway::{Hub, LeaseConfig, SharedClaimsConfig};

use super::auth_budget::AuthBudget;
use super::checkpoints::CheckpointConfig;
use super::cluster::Node;
use super::config::{GatewayRunError, GatewayServerConfig, GatewayStartError};
use super::console_sessions::Sessions;
use super::console_sessions::unix_ms;
use super::credentials::Credentials;
use super::gateway_metrics::GatewayMetrics;
use super::hub_task::HubTaskConfig;
use super::notify::NotifyConfig;
use super::shared::{AUDIT_QUERIES, CredentialsReloader, Shared};
use super::wall::{Wall, from_stored, from_stored_resumable};
use crate::accept::AcceptBackoff;
use crate::socket_loop::Clock;
use crate::store::Store;
use crate::ws::{CLOSE_GRACE, Target};

/// How long a stopping gateway waits for its store to close.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How far back the core's clock may start, for requests kept from before a restart.
const MAX_LOOK_BACK: Duration = Duration::from_secs(24 * 3600);

/// 2020-01-01 in Unix milliseconds: where a gateway without a store counts its first public ids from.
const IDS_EPOCH_MS: u64 = 1_577_836_800_000;

/// A bound gateway, ready to [`run`](GatewayServer::run).
pub struct GatewayServer {
    listener: TcpListener,
    /// The internal listener, where the cluster's other nodes reach this one.
    internal: Option<TcpListener>,
    shared: Arc<Shared>,
    hub_task: tokio::task::JoinHandle<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The store's error, once a commit failed.
    failed: tokio::sync::watch::Receiver<Option<String>>,
    /// Fires once the store is closed (its lock released), after the hub task ends.
    store_closed: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The cluster this gateway is a node of, if its store is shared.
    node: Option<Node>,
    /// How long a stop drains first.
    drain: Duration,
}

impl std::fmt::Debug for GatewayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServer").field("listener", &self.listener).field("tls", &self.tls.is_some()).finish()
    }
}

impl GatewayServer {
    /// Validates the configuration and binds the listener; no store: rules made at run time and the audit
    /// log last as long as the process.
    pub async fn bind(config: GatewayServerConfig) -> Result<GatewayServer, GatewayStartError> {
        GatewayServer::bind_with_store(config, None).await
    }

    /// Like [`bind`](GatewayServer::bind), with `store` keeping the rules made at run time and the audit
    /// log: its rules join the configuration's, and every decision is written to it before it is sent.
    pub async fn bind_with_store(
        config: GatewayServerConfig,
        mut store: Option<Box<dyn Store>>,
    ) -> Result<GatewayServer, GatewayStartError> {
        let credentials = match config.credentials {
            Some(credentials) => credentials,
            None => {
                if config.sled_tokens.iter().all(|t| t.is_empty()) {
                    return Err(GatewayStartError::Tokens("at least one sled token is required"));
                }
                if config.admin_token.is_empty() {
                    return Err(GatewayStartError::Tokens("an admin token is required"));
                }
                if config.sled_tokens.contains(&config.admin_token) {
                    return Err(GatewayStartError::Tokens("the admin token must differ from every sled token"));
                }
                Credentials::from_tokens(&config.sled_tokens, &config.admin_token)?
            }
        };
        let mut hub_config = config.hub;
        // The core's instant 0 is now on both clocks; or, with requests kept from before a restart, the first
        // of their arrivals (up to a day back), so that their ages and deadlines read true.
        let (now, wall_now) = (TokioInstant::now(), SystemTime::now());
        // A store several gateways share: this one joins as a node first (alone, for now: while another
        // node's lease holds, it is refused), a new incarnation with a lease counted from before the join
        // was sent, so that what it reads next is what the last node left; its claims are settled in the
        // shared table.
        // With an internal listener, beside the other nodes (which reach it there); without, alone.
        let internal = match (config.cluster_listen, store.as_ref().and_then(|s| s.cluster())) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(GatewayStartError::Cluster("needs a store the nodes share (--store postgres://…)"));
            }
            (Some(addr), Some(_)) => {
                let listener =
                    TcpListener::bind(addr).await.map_err(|error| GatewayStartError::Bind { addr, error })?;
                let bound = listener.local_addr().map_err(|error| GatewayStartError::Bind { addr, error })?;
                let advertised = match config.cluster_advertise.clone() {
                    Some(advertised) => advertised,
                    None if bound.ip().is_unspecified() => {
                        return Err(GatewayStartError::Cluster(
                            "listens on a wildcard address: name the one its peers use with --cluster-advertise",
                        ));
                    }
                    None => bound.to_string(),
                };
                Some((listener, advertised))
            }
        };
        let keeps_held = hub_config.resume.is_some();
        let joined = match store.as_ref().and_then(|s| s.cluster()) {
            Some(_) if config.lease < Duration::from_secs(1) => return Err(GatewayStartError::ShortLease),
            Some(cluster) => {
                let sent = TokioInstant::now();
                let (addr, lease, joining) = (config.listen.to_string(), config.lease, cluster.clone());
                let advertised = internal.as_ref().map(|(_, a)| a.clone());
                let id = tokio::task::spawn_blocking(move || match advertised {
                    Some(internal) => joining.join(&addr, Some(&internal), lease),
                    None => joining.join_alone(&addr, lease),
                })
                .await
                .map_err(|e| GatewayStartError::Spawn(std::io::Error::other(e)))??;
                tracing::info!(
                    node = id,
                    lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                    internal = internal.as_ref().map(|(_, a)| a.as_str()),
                    "joined the cluster"
                );
                Some((Node { store: cluster, id, lease, keeps_held, peers: None }, sent))
            }
            None => None,
        };
        let kept = store.as_mut().map(|s| s.load()).transpose()?;
        // What was waiting at nodes that died ends in the log now, as lost with its connection (their sleds
        // denied it as their links dropped), but for what is kept to come back.
        if let (Some((node, _)), Some(store)) = (&joined, store.as_mut()) {
            let (cluster, at_ms, me) = (node.store.clone(), unix_ms(SystemTime::now()), node.id);
            let orphans = tokio::task::spawn_blocking(move || cluster.take_orphans(me))
                .await
                .map_err(|e| GatewayStartError::Spawn(std::io::Error::other(e)))??;
            if !orphans.is_empty() {
                tracing::info!(
                    requests = orphans.len(),
                    "requests left waiting at nodes that died end as connection_lost"
                );
                let ends: Vec<_> = orphans
                    .iter()
                    .map(|o| crate::store::Change::Record(super::recorder::lost_with_its_node(o, at_ms)))
                    .collect();
                store.commit(&ends)?;
            }
        }
        let back = kept
            .iter()
            .flat_map(|k| &k.resumables)
            .map(|r| r.since_ms)
            .min()
            .map(|first| Duration::from_millis(unix_ms(wall_now).saturating_sub(first)).min(MAX_LOOK_BACK))
            .unwrap_or_default();
        let (epoch, wall) = match (now.checked_sub(back), wall_now.checked_sub(back)) {
            (Some(epoch), Some(wall_then)) => (epoch, Wall::new(Instant::ZERO, wall_then)),
            _ => (now, Wall::new(Instant::ZERO, wall_now)),
        };
        if let Some(kept) = &kept {
            for rule in &kept.rules {
                hub_config.rules.push(from_stored(rule, &wall)?);
            }
        }
        let sessions = Sessions::new(Clock::new(epoch));
        if let Some(kept) = &kept {
            sessions.restore(&kept.sessions, SystemTime::now());
        }
        let audit = store.as_ref().map(|s| s.reader());
        let node = joined.map(|(node, sent)| {
            // The lease counts from when the join was sent, on the core's clock (`sent` is after `epoch`).
            let at = Instant::from_micros(u64::try_from(sent.duration_since(epoch).as_micros()).unwrap_or(u64::MAX));
            hub_config.shared_claims = Some(SharedClaimsConfig::for_node(node.id));
            hub_config.lease = Some(LeaseConfig::new(node.lease, at));
            node
        });
        let mut hub = Hub::new(hub_config, Instant::ZERO)?;
        // A node's rule ids come from blocks the database hands out, never another node's.
        if let Some(node) = &node {
            let store = node.store.clone();
            let ids = tokio::task::spawn_blocking(move || store.rule_ids())
                .await
                .map_err(|e| GatewayStartError::Spawn(std::io::Error::other(e)))??;
            hub.use_rule_ids(ids);
        }
        // Public ids never repeat across restarts: after those the last gateway reserved, or, with nothing
        // kept, after a number that grows with the time of day (seconds since 2020, times 4,096). A cluster
        // node's come from a range of its own incarnation (its id times 2^32), never another node's.
        let own_range = node.as_ref().map_or(0, |n| n.id.saturating_mul(1 << 32));
        match &kept {
            Some(kept) => hub.start_ids_after(kept.ids_until.max(own_range)),
            None => hub.start_ids_after(unix_ms(wall_now).saturating_sub(IDS_EPOCH_MS) / 1000 * 4096),
        }
        if let Some(kept) = &kept {
            let restored: Vec<_> = kept
                .resumables
                .iter()
                .filter_map(|r| {
                    let held = from_stored_resumable(r, &wall);
                    if held.is_none() {
                        tracing::warn!(id = %r.id.escape_debug(), "a kept request does not read; it is not held again");
                    }
                    held
                })
                .collect();
            hub.restore_held(Instant::ZERO + back, restored);
        }
        if config.handshake_timeout.is_zero() {
            return Err(GatewayStartError::ZeroHandshakeTimeout);
        }
        let (access_tokens, sign_ins) = super::access_tokens::AccessTokens::new(
            config.oidc.clone(),
            config.public_url.as_deref(),
            Clock::new(epoch),
        )?;
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| GatewayStartError::Bind { addr: config.listen, error })?;
        let (failed_tx, failed) = tokio::sync::watch::channel(None);
        let metrics = Arc::new(GatewayMetrics::new());
        let public_host = config
            .public_url
            .as_deref()
            .and_then(|u| u.parse::<hyper::Uri>().ok())
            .and_then(|u| u.host().map(str::to_owned));
        // This node among its peers: calls to them signed, theirs checked, with a key from the store's secret.
        let peers = match (&node, &internal, &kept) {
            (Some(node), Some(_), Some(kept)) => {
                Some(Arc::new(super::peers::Peers::new(node.id, node.store.clone(), &kept.input_key)))
            }
            _ => None,
        };
        let node = node.map(|node| Node { peers: peers.clone(), ..node });
        let task = HubTaskConfig {
            notify: NotifyConfig {
                webhooks: config.notify,
                decisions: config.notify_decisions,
                checkpoints: config.notify_checkpoints,
                public_url: config.public_url,
            },
            metrics: metrics.clone(),
            epoch,
            wall,
            event_client_bytes: config.max_event_client_bytes,
            event_clients: config.max_event_clients,
            store,
            redact_inputs: kept.as_ref().map(|k| k.input_key).filter(|_| config.audit_redact_inputs),
            checkpoints: CheckpointConfig {
                every: config.audit_checkpoint_every,
                file: config.audit_checkpoint_file.clone(),
            },
            failed: failed_tx,
            node: node.clone(),
        };
        let (hub, hub_task, store_closed) = super::hub_task::spawn(hub, task).map_err(GatewayStartError::Spawn)?;
        // The gateway's own names, for the MCP endpoint's check of web pages.
        let mut names = config.allowed_hosts.clone();
        if let Some(host) = public_host.as_deref() {
            names.push(host.to_owned());
        }
        if !config.listen.ip().is_unspecified() {
            names.push(match config.listen.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            });
        }

        let shared = Arc::new(Shared {
            hub,
            peers,
            closing: tokio::sync::watch::Sender::new(false),
            draining: false.into(),
            credentials: RwLock::new(Arc::new(credentials)),
            accept_query_token: config.accept_query_token,
            ws_config: Target::ws_config(config.max_message_size),
            handshake_timeout: config.handshake_timeout,
            sled_tasks: Mutex::new(tokio::task::JoinSet::new()),
            audit,
            audit_queries: Arc::new(tokio::sync::Semaphore::new(AUDIT_QUERIES)),
            sessions,
            tls: tls.is_some(),
            metrics,
            metrics_public: config.metrics_public,
            store_failed: failed.clone(),
            mcp_names: names,
            auth: AuthBudget::new(Clock::new(epoch), config.auth_limit),
            access_tokens: access_tokens.clone(),
            sign_ins,
        });
        if let Some(tokens) = access_tokens {
            tokio::spawn(async move { tokens.warm().await });
        }
        if let Some(node) = &node {
            tokio::spawn(super::cluster::watch_sessions(node.store.clone(), shared.clone()));
            tokio::spawn(super::cluster::end_orphans(node.clone(), shared.clone()));
        }
        let internal = internal.map(|(listener, _)| listener);
        Ok(GatewayServer { listener, internal, shared, hub_task, tls, failed, store_closed, node, drain: config.drain })
    }

    /// A handle that replaces this gateway's credentials while it runs.
    pub fn reloader(&self) -> CredentialsReloader {
        CredentialsReloader { shared: self.shared.clone() }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The internal listener's address, with `--cluster-listen`.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.internal.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `stop` completes, or the store fails; then closes every sled connection.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> Result<(), GatewayRunError> {
        let router = super::router::router(self.shared.clone());
        // The internal listener serves the other nodes until the server closes (through a drain too: people
        // at other nodes still decide what waits here).
        let internal =
            self.internal.map(|listener| tokio::spawn(super::internal::serve(listener, self.shared.clone())));
        let mut connections = tokio::task::JoinSet::new();
        let mut backoff = AcceptBackoff::default();
        let mut failed = self.failed.clone();
        let mut hub_task = self.hub_task;
        // Set when the hub task ended on its own, which only a defect can make it do: the gateway stops then,
        // rather than serve on without its hub.
        let mut hub_ended: Option<String> = None;
        let (hub, ended) = (&mut hub_task, &mut hub_ended);
        // Boxed, so that dropping it after the loop ends its borrows.
        let (shared, drain, mut failed_meanwhile) = (self.shared.clone(), self.drain, self.failed.clone());
        let mut stop = Box::pin(async move {
            let asked = tokio::select! {
                () = stop => true,
                _ = failed.wait_for(Option::is_some) => false,
                end = hub => {
                    let why = match end {
                        Err(e) if e.is_panic() => "it panicked",
                        _ => "it returned",
                    };
                    tracing::error!("the hub task ended ({why}): stopping");
                    *ended = Some(why.to_owned());
                    false
                }
            };
            // Asked to stop: first drain, still serving people, so that nothing they could decide is denied
            // for the restart (a failing store cuts it short).
            if asked && !drain.is_zero() {
                tracing::info!(
                    within_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
                    "draining: new sleds are refused, each leaves once nothing of it is in flight"
                );
                shared.draining.store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    () = shared.hub.drain(drain) => {}
                    _ = failed_meanwhile.wait_for(Option::is_some) => {}
                }
            }
        });
        while let Some(tcp) = crate::accept::next(&self.listener, &mut backoff, &mut stop).await {
            let router = router.clone();
            let timeout = self.shared.handshake_timeout;
            let tls = self.tls.clone();
            let Ok(peer) = tcp.peer_addr() else { continue };
            connections.spawn(async move {
                match tls {
                    Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => crate::http::serve_http(TokioIo::new(stream), timeout, router, peer).await,
                        _ => debug!("TLS handshake failed or timed out"),
                    },
                    None => crate::http::serve_http(TokioIo::new(tcp), timeout, router, peer).await,
                }
            });
            while connections.try_join_next().is_some() {}
        }
        drop(stop);
        // End event streams; the hub closes every sled connection, identified or not (1001, going away) and
        // refuses new ones; give them all a moment to finish their close handshakes, then stop what is left.
        self.shared.closing.send_replace(true);
        self.shared.hub.shutdown().await;
        let mut sleds = std::mem::take(&mut *self.shared.sled_tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while connections.join_next().await.is_some() {}
            while sleds.join_next().await.is_some() {}
        })
        .await;
        connections.abort_all();
        sleds.abort_all();
        hub_task.abort();
        if let Some(internal) = internal {
            internal.abort();
        }
        // A node that stops of its own accord leaves: its claims go at once, not when its lease lapses. A
        // fenced one has nothing to give back.
        if let Some(node) = self.node
            && self.failed.borrow().is_none()
        {
            let left = tokio::task::spawn_blocking(move || node.store.leave(node.id)).await;
            if let Ok(Err(e)) = left {
                tracing::warn!(error = %e, "could not leave the cluster; its lease will lapse");
            }
        }
        // The store closes once the task is gone (a commit under way finishes first): only then is its
        // directory free for another gateway.
        if let Some(closed) = self.store_closed
            && tokio::time::timeout(STORE_CLOSE_WAIT, closed).await.is_err()
        {
            tracing::warn!("the store did not close within {STORE_CLOSE_WAIT:?}");
        }
        if let Some(why) = hub_ended {
            return Err(GatewayRunError::Hub(why));
        }
        match self.failed.borrow().clone() {
            Some(why) => Err(GatewayRunError::Store(why)),
            None => Ok(()),
        }
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<tokio_rustls::TlsAcceptor, GatewayStartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    fn bad<E: std::error::Error + Send + Sync + 'static>(
        what: impl std::fmt::Display,
    ) -> impl FnOnce(E) -> GatewayStartError {
        move |e| GatewayStartError::Tls { what: what.to_string(), source: Box::new(e) }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(bad(cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(bad(cert.display()))?;
    if certs.is_empty() {
        return Err(GatewayStartError::NoCertificate(cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(bad(key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(bad("protocol versions"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(bad("certificate and key"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
