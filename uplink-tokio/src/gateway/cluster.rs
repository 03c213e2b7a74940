//! A cluster node's errands at the shared database, for the hub task: renewing the node's lease, asking the
//! claims table, asking another node to let a project go, and handing over what other nodes asked of this
//! one. Each errand runs on a blocking thread (the store's calls wait for the database) and its answer goes
//! back to the hub task as a message; the hub decides what each answer means. A renewal reads the clock just
//! before it is sent: the lease is counted from then.
//!
//! Nothing here waits on the hub task's loop: errands queue in a bounded channel, and one that finds it full
//! goes unanswered (a renewal counts as unanswered at once; a claim waits and is refused with 1013 in the
//! end), which the hub is built to survive; at most [`AT_ONCE`] claims and releases are at the database at
//! once (beyond, unanswered too), while a renewal always goes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tracing::warn;
use uplink_proto::gateway::{ClaimAnswer, ConnHandle, CredentialId, HeldRequest, HubEvent};
use uplink_proto::rules::RuleId;

use super::hub_handle::{FromCluster, HubHandle};
use super::shared::Shared;
use super::wall::{Wall, from_stored, from_stored_resumable};
use crate::socket_loop::Clock;
use crate::store::{Change, ClusterStore, RuleChanges, SessionChanges};

/// Errands waiting for a thread before the next finds the queue full.
const ERRANDS: usize = 4096;

/// Claims and releases at the database at once, at most.
const AT_ONCE: usize = 64;

/// A node of a cluster: the shared database's part, its id there, and its lease's length.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) store: Arc<dyn ClusterStore>,
    pub(crate) id: u64,
    pub(crate) lease: Duration,
    /// The hub holds requests for sleds that come back (`resume`): a claim granted takes over those that
    /// other nodes held for the project.
    pub(crate) keeps_held: bool,
    /// This node among its peers, when it serves beside them: a claim granted asks the live nodes that hold
    /// requests for the project's sleds to give them up.
    pub(crate) peers: Option<Arc<super::peers::Peers>>,
}

/// What the hub task asks of the database.
pub(crate) enum Errand {
    Renew,
    Claim { conn: ConnHandle, project: String, credential: CredentialId },
    Release { holder: u64, project: String, credential: CredentialId },
    RuleIds,
}

/// Why a fenced node stops.
pub(crate) const FENCED: &str = "this node's lease at the database lapsed, so it fenced itself and acts no more";

impl Errand {
    /// The errand `event` asks of the database, if it is one of the cluster's.
    pub(crate) fn of(event: &HubEvent) -> Option<Errand> {
        Some(match event {
            HubEvent::LeaseRenewalDue => Errand::Renew,
            HubEvent::RuleIdsWanted => Errand::RuleIds,
            HubEvent::ClaimWanted { conn, project, credential } => {
                Errand::Claim { conn: *conn, project: project.clone(), credential: *credential }
            }
            HubEvent::ReleaseWanted { project, node, credential } => {
                Errand::Release { holder: *node, project: project.clone(), credential: *credential }
            }
            _ => return None,
        })
    }
}

/// The hub task's end: errands in, answers back through the hub's handle.
pub(crate) struct Errands {
    tx: mpsc::Sender<Errand>,
}

impl Errands {
    /// Starts the errands of `node`, answering to `hub`, and its reading of the rules other nodes change
    /// (`wall`: where the hub's clock is on the wall clock, to place their expiries).
    pub(crate) fn start(node: Node, hub: HubHandle, clock: Clock, wall: Wall) -> Errands {
        let (tx, rx) = mpsc::channel(ERRANDS);
        tokio::spawn(watch_rules(node.store.clone(), hub.clone(), wall));
        tokio::spawn(run(node, hub, clock, wall, rx));
        Errands { tx }
    }

    /// Queues `errand`; `false` when the queue is full (or gone).
    pub(crate) fn send(&self, errand: Errand) -> bool {
        self.tx.try_send(errand).is_ok()
    }
}

async fn run(node: Node, hub: HubHandle, clock: Clock, wall: Wall, mut rx: mpsc::Receiver<Errand>) {
    let clock = Arc::new(clock);
    let at_once = Arc::new(Semaphore::new(AT_ONCE));
    while let Some(errand) = rx.recv().await {
        // A renewal always goes (one at a time, by the hub's rule), as does a block of rule ids (asked once
        // until it comes); a claim or a release beyond the budget goes unanswered (the claim waits, then
        // 1013), so that a slow database holds no pile of them.
        let permit = match errand {
            Errand::Renew | Errand::RuleIds => None,
            _ => match at_once.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    warn!("too many of the cluster's errands in flight; one goes unanswered");
                    continue;
                }
            },
        };
        let (node, hub, clock) = (node.clone(), hub.clone(), clock.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match errand {
                Errand::Renew => {
                    let sent = clock.now();
                    let (store, id, lease) = (node.store.clone(), node.id, node.lease);
                    let renewal = tokio::task::spawn_blocking(move || store.renew(id, lease)).await;
                    let renewal = match renewal {
                        Ok(Ok(renewal)) => Some(renewal),
                        Ok(Err(e)) => {
                            warn!(error = %e, "the lease's renewal went unanswered");
                            None
                        }
                        Err(_) => None,
                    };
                    let answer = renewal.as_ref().map(|r| r.held);
                    hub.cluster_said(FromCluster::LeaseRenewal { sent, answer }).await;
                    for (project, credential) in renewal.map(|r| r.releases).unwrap_or_default() {
                        let credential = CredentialId(credential);
                        hub.cluster_said(FromCluster::Release { project, credential }).await;
                    }
                }
                Errand::Claim { conn, project, credential } => {
                    let (store, id) = (node.store.clone(), node.id);
                    let asked = project.clone();
                    let answer =
                        tokio::task::spawn_blocking(move || store.claim(id, conn.0, &asked, credential.0)).await;
                    match answer {
                        Ok(Ok(Some(answer))) => {
                            let held = match answer {
                                ClaimAnswer::Granted { .. } if node.keeps_held => {
                                    held_elsewhere(&node, &project, credential, &wall).await
                                }
                                _ => Vec::new(),
                            };
                            hub.cluster_said(FromCluster::ClaimAnswer { conn, project, answer, held }).await;
                        }
                        // This node's lease lapsed, or the database did not answer: the claim waits, and
                        // is refused with 1013 in the end (or the hub fences first).
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => warn!(error = %e, project = %project.escape_debug(), "a claim went unanswered"),
                        Err(_) => {}
                    }
                }
                Errand::RuleIds => {
                    // Asked once until it comes: asked again until the database answers.
                    loop {
                        let store = node.store.clone();
                        match tokio::task::spawn_blocking(move || store.rule_ids()).await {
                            Ok(Ok(ids)) => break hub.cluster_said(FromCluster::RuleIds(ids)).await,
                            Ok(Err(e)) => warn!(error = %e, "drawing rule ids failed; tried again in a second"),
                            Err(_) => return,
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Errand::Release { holder, project, credential } => {
                    let store = node.store.clone();
                    let asked = project.clone();
                    let done =
                        tokio::task::spawn_blocking(move || store.ask_release(holder, &asked, credential.0)).await;
                    if let Ok(Err(e)) = done {
                        warn!(error = %e, project = %project.escape_debug(), holder, "asking a node to let a project go failed");
                    }
                }
            }
        });
    }
}

/// What other nodes held for the sleds of `project` with `credential`, taken over by `node` (whose claim on
/// it was just granted), to be held here before the sled's requests are taken up: the live ones asked to
/// give it up first (each within the call's wait), then what they gave and what gone nodes left is taken. A
/// node that does not answer keeps its own, and a database that does not answer gives nothing: the sled's
/// requests are then new ones here (a person is asked again; nothing is approved without a decision).
async fn held_elsewhere(node: &Node, project: &str, credential: CredentialId, wall: &Wall) -> Vec<HeldRequest> {
    if let Some(peers) = &node.peers {
        let (store, id, asked) = (node.store.clone(), node.id, project.to_owned());
        let live = tokio::task::spawn_blocking(move || store.live_holders(id, &asked, credential.0)).await;
        let live = match live {
            Ok(Ok(live)) => live,
            Ok(Err(e)) => {
                warn!(error = %e, project = %project.escape_debug(), "finding the nodes that hold a project's requests failed");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let body = bytes::Bytes::from(serde_json::json!({"project": project, "credential": credential.0}).to_string());
        let asked = live.iter().map(|p| peers.call(p, "POST", "/internal/held/give", body.clone()));
        for (peer, answer) in live.iter().zip(futures_util::future::join_all(asked).await) {
            match answer {
                Ok(a) if a.status.is_success() => {}
                Ok(a) => warn!(node = peer.node, status = %a.status, "a node did not give up a project's requests"),
                Err(why) => {
                    warn!(node = peer.node, why = %why.escape_debug(), "a node did not give up a project's requests")
                }
            }
        }
    }
    let (store, id, asked) = (node.store.clone(), node.id, project.to_owned());
    match tokio::task::spawn_blocking(move || store.take_held(id, &asked, credential.0)).await {
        Ok(Ok(kept)) => kept
            .iter()
            .filter_map(|r| {
                let held = from_stored_resumable(r, wall);
                if held.is_none() {
                    warn!(id = %r.id.escape_debug(), "a kept request taken over does not read; it is not held again");
                }
                held
            })
            .collect(),
        Ok(Err(e)) => {
            warn!(error = %e, project = %project.escape_debug(), "taking over what gone nodes held for a project failed");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// How often a node reads the rules and console sign-ins other nodes changed: a rule made or removed, or a
/// sign-in or sign-out, anywhere is in force at every node within about this long.
pub(crate) const SHARED_EVERY: Duration = Duration::from_millis(500);

/// Reads the rules changed since the last reading, every [`SHARED_EVERY`], and hands them to the hub (each as
/// it is now, in the order they were committed: the hub keeps what it changed itself). A rule that does not
/// read here (made by a newer node) stops this node: it could not apply it, and a deny rule left out would
/// allow what it denies. Ends with the hub task.
async fn watch_rules(store: Arc<dyn ClusterStore>, hub: HubHandle, wall: Wall) {
    let read = move |version| store.rules_since(version).map(|c| (c.version, c));
    let said = hub.clone();
    every_reading("rules", hub, read, move |changes: RuleChanges| {
        let hub = said.clone();
        async move {
            let added: Result<Vec<_>, _> = changes.in_force.iter().map(|r| from_stored(r, &wall)).collect();
            let added = match added {
                Ok(added) => added,
                Err(e) => {
                    let why = format!("a rule another node made does not read here ({e}); upgrade this node");
                    hub.cluster_said(FromCluster::Unworkable(why)).await;
                    return false;
                }
            };
            let removed: Vec<RuleId> = changes.removed.iter().map(|&id| RuleId(id)).collect();
            if !added.is_empty() || !removed.is_empty() {
                hub.cluster_said(FromCluster::RulesElsewhere { added, removed }).await;
            }
            true
        }
    })
    .await;
}

/// Reads the console sign-ins made or ended on other nodes since the last reading, every [`SHARED_EVERY`],
/// and takes them into this node's sessions (a sign-out is in force here from then on; one this node ended
/// itself is never taken back in). Sign-ins let go for them (beyond the budget) are forgotten by the store
/// too. Ends with the hub task.
pub(crate) async fn watch_sessions(store: Arc<dyn ClusterStore>, shared: Arc<Shared>) {
    let read = move |version| store.sessions_since(version).map(|c| (c.version, c));
    let hub = shared.hub.clone();
    every_reading("sign-ins", hub, read, move |changes: SessionChanges| {
        let gone = shared.sessions.take_in_elsewhere(&changes.open, &changes.closed, std::time::SystemTime::now());
        if !gone.is_empty() {
            shared.hub.forget_sessions(gone.into_iter().map(Change::DeleteSession).collect());
        }
        std::future::ready(true)
    })
    .await;
}

/// Every lease until the hub task ends: takes over what was waiting at nodes that died (their lease lapsed)
/// and ends it in the log as lost with its connection (their sleds denied it as their links dropped), but
/// for what is kept to come back; each such request is taken by one node alone. A failure is tried again at
/// the next turn.
pub(crate) async fn end_orphans(node: Node, shared: Arc<Shared>) {
    let mut every = tokio::time::interval(node.lease);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if shared.hub.is_closed() {
            return;
        }
        let (store, me) = (node.store.clone(), node.id);
        let orphans = match tokio::task::spawn_blocking(move || store.take_orphans(me)).await {
            Ok(Ok(orphans)) => orphans,
            Ok(Err(e)) => {
                warn!(error = %e, "taking over what dead nodes left waiting failed; tried again next lease");
                continue;
            }
            Err(_) => return,
        };
        if orphans.is_empty() {
            continue;
        }
        tracing::info!(requests = orphans.len(), "requests left waiting at nodes that died end as connection_lost");
        let at_ms = super::console_sessions::unix_ms(std::time::SystemTime::now());
        let ends = orphans.iter().map(|o| Change::Record(super::recorder::lost_with_its_node(o, at_ms))).collect();
        shared.hub.keep(ends).await;
    }
}

/// Every [`SHARED_EVERY`] until the hub task ends (or `take` says to stop): reads what other nodes changed
/// since the last version read (`read`, on a blocking thread: the changes and the version they bring the
/// reader to) and hands it to `take`. A reading that fails is tried again at the next turn; the first of a
/// run of failures is logged.
async fn every_reading<T, R, F, Fut>(what: &str, hub: HubHandle, read: R, mut take: F)
where
    T: Send + 'static,
    R: Fn(u64) -> Result<(u64, T), crate::store::StoreError> + Send + Sync + 'static,
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let read = Arc::new(read);
    let (mut version, mut failing) = (0u64, false);
    let mut every = tokio::time::interval(SHARED_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if hub.is_closed() {
            return;
        }
        let reading = read.clone();
        let (next, changes) = match tokio::task::spawn_blocking(move || reading(version)).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %e, "reading the {what} other nodes changed failed; tried again every half second");
                }
                continue;
            }
            Err(_) => return,
        };
        failing = false;
        if !take(changes).await {
            return;
        }
        version = next;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    use super::*;
    use crate::store::{ClaimAnswer, HeldAt, Orphan, Peer, Renewal, StoreError, StoredResumable};

    /// A database whose claims wait until let go, counting what is asked of it.
    #[derive(Default)]
    struct Stuck {
        claims: AtomicUsize,
        projects: Mutex<Vec<String>>,
        renewals: AtomicUsize,
        let_go: (Mutex<bool>, Condvar),
    }

    impl Stuck {
        fn let_go(&self) {
            *self.let_go.0.lock().unwrap() = true;
            self.let_go.1.notify_all();
        }
    }

    impl ClusterStore for Stuck {
        fn join(&self, _: &str, _: Option<&str>, _: Duration) -> Result<u64, StoreError> {
            Ok(1)
        }
        fn join_alone(&self, _: &str, _: Duration) -> Result<u64, StoreError> {
            Ok(1)
        }
        fn renew(&self, _: u64, _: Duration) -> Result<Renewal, StoreError> {
            self.renewals.fetch_add(1, Ordering::SeqCst);
            Ok(Renewal { held: true, releases: Vec::new() })
        }
        fn claim(&self, _: u64, _: u64, project: &str, _: u64) -> Result<Option<ClaimAnswer>, StoreError> {
            self.projects.lock().unwrap().push(project.to_owned());
            self.claims.fetch_add(1, Ordering::SeqCst);
            let mut free = self.let_go.0.lock().unwrap();
            while !*free {
                free = self.let_go.1.wait(free).unwrap();
            }
            Ok(None)
        }
        fn ask_release(&self, _: u64, _: &str, _: u64) -> Result<(), StoreError> {
            Ok(())
        }
        fn leave(&self, _: u64) -> Result<(), StoreError> {
            Ok(())
        }
        fn rule_ids(&self) -> Result<std::ops::Range<u64>, StoreError> {
            Ok(1..257)
        }
        fn rules_since(&self, version: u64) -> Result<RuleChanges, StoreError> {
            Ok(RuleChanges { version, ..RuleChanges::default() })
        }
        fn sessions_since(&self, version: u64) -> Result<SessionChanges, StoreError> {
            Ok(SessionChanges { version, ..SessionChanges::default() })
        }
        fn take_held(&self, _: u64, _: &str, _: u64) -> Result<Vec<StoredResumable>, StoreError> {
            Ok(Vec::new())
        }
        fn live_holders(&self, _: u64, _: &str, _: u64) -> Result<Vec<Peer>, StoreError> {
            Ok(Vec::new())
        }
        fn holder(&self, _: &str) -> Result<Option<HeldAt>, StoreError> {
            Ok(None)
        }
        fn peers(&self) -> Result<Vec<Peer>, StoreError> {
            Ok(Vec::new())
        }
        fn project_holder(&self, _: &str) -> Result<Option<Peer>, StoreError> {
            Ok(None)
        }
        fn take_orphans(&self, _: u64) -> Result<Vec<Orphan>, StoreError> {
            Ok(Vec::new())
        }
    }

    /// Lets the stuck claims go when dropped, so that a failing test ends rather than waits on them.
    struct LetGo(Arc<Stuck>);

    impl Drop for LetGo {
        fn drop(&mut self) {
            self.0.let_go();
        }
    }

    /// Waits (bounded) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_beyond_the_budget_go_unanswered_while_a_renewal_always_goes() {
        let stuck = Arc::new(Stuck::default());
        let _unstick = LetGo(stuck.clone());
        let (tx, _rx) = mpsc::channel(1024);
        let node = Node { store: stuck.clone(), id: 1, lease: Duration::from_secs(10), keeps_held: false, peers: None };
        let epoch = tokio::time::Instant::now();
        let wall = Wall::new(uplink_proto::Instant::ZERO, std::time::SystemTime::now());
        let errands = Errands::start(node, HubHandle::new(tx), Clock::new(epoch), wall);
        for n in 0..AT_ONCE as u64 + 10 {
            let claim = Errand::Claim { conn: ConnHandle(n), project: format!("p{n}"), credential: CredentialId(1) };
            assert!(errands.send(claim));
        }
        until("the budget's claims to be at the database", || stuck.claims.load(Ordering::SeqCst) == AT_ONCE).await;
        // With every claim stuck, a renewal still goes.
        assert!(errands.send(Errand::Renew));
        until("the renewal", || stuck.renewals.load(Ordering::SeqCst) == 1).await;
        // The claims beyond the budget were let go unanswered, not queued behind the stuck ones: errands are
        // taken in order, so a late claim that goes once the budget is free comes right after the first 64.
        stuck.let_go();
        let late = Errand::Claim { conn: ConnHandle(999), project: "late".into(), credential: CredentialId(1) };
        assert!(errands.send(late));
        until("the late claim", || stuck.projects.lock().unwrap().iter().any(|p| p == "late")).await;
        let projects = stuck.projects.lock().unwrap().clone();
        assert_eq!(projects.len(), AT_ONCE + 1, "none of the ten beyond the budget went: {projects:?}");
    }
}
