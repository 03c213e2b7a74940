//! The store's group commit: a batch's records and rule changes written in one transaction, in place on the
//! hub task or on the store's own thread ([`StoreLink`]), and the replies held until it is written
//! ([`Ack`]).

use tokio::sync::{mpsc, oneshot};
use uplink_proto::gateway::{Decided, HubDecideError, RuleRefused};

use super::hub_handle::DecideFailure;
use crate::store::{Change, Head, Store, StoreError, StoredRule};

/// A reply held until the batch that made it is committed.
pub(super) enum Ack {
    Decide(oneshot::Sender<Result<Decided, DecideFailure>>, Result<Decided, HubDecideError>),
    AddRule(oneshot::Sender<Result<StoredRule, RuleRefused>>, Result<StoredRule, RuleRefused>),
    RemoveRule(oneshot::Sender<bool>, bool),
    /// Changes kept beside the hub's own (console sign-ins, ends of requests a dead node left).
    Kept(oneshot::Sender<()>),
}

impl From<oneshot::Sender<()>> for Ack {
    fn from(reply: oneshot::Sender<()>) -> Ack {
        Ack::Kept(reply)
    }
}

impl Ack {
    /// Gives the reply; after a failed commit, a decision's is the store's failure.
    pub(super) fn send(self, store_failed: bool) {
        match self {
            Ack::Decide(reply, _) if store_failed => {
                let _ = reply.send(Err(DecideFailure::Store));
            }
            Ack::Decide(reply, result) => {
                let _ = reply.send(result.map_err(DecideFailure::Hub));
            }
            Ack::AddRule(reply, result) => {
                let _ = reply.send(result);
            }
            Ack::RemoveRule(reply, result) => {
                let _ = reply.send(result);
            }
            // Not written: the waiter hears nothing (its channel closes), never that it was kept.
            Ack::Kept(reply) if store_failed => drop(reply),
            Ack::Kept(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

type Commit = (Vec<Change>, oneshot::Sender<Result<Head, StoreError>>);

/// Where batches are committed, one at a time, in order: in place on the hub task when a commit only hands
/// its pages to the operating system (`Store::waits_for_disk` false: microseconds, fewer than the two
/// thread wake-ups a hand-off costs; the hub waits for each commit either way), or on the store's own
/// thread when a commit waits for the disk, away from the runtime's workers.
pub(super) enum StoreLink {
    /// Committed by the hub task. The store is dropped before `closed` tells so (fields drop in order).
    InPlace { store: Box<dyn Store>, _closed: Closed },
    /// Committed on the store's thread.
    Thread(mpsc::Sender<Commit>),
}

/// Commits `changes`; a store that panics has failed like one that returns an error, so that the gateway
/// stops with the reason rather than lose its hub task or the store's thread.
fn commit_or_panic(store: &mut Box<dyn Store>, changes: &[Change]) -> Result<Head, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.commit(changes)))
        .unwrap_or_else(|_| Err(StoreError::Database("it panicked in a commit".to_owned())))
}

/// Tells, when dropped, that the store is closed.
pub(super) struct Closed(Option<oneshot::Sender<()>>);

impl Drop for Closed {
    fn drop(&mut self) {
        if let Some(closed) = self.0.take() {
            let _ = closed.send(());
        }
    }
}

impl StoreLink {
    /// The link, and what tells when the store is closed (once the hub task is done with it).
    pub(super) fn start(mut store: Box<dyn Store>) -> std::io::Result<(StoreLink, oneshot::Receiver<()>)> {
        let (closed_tx, closed) = oneshot::channel();
        if !store.waits_for_disk() {
            return Ok((StoreLink::InPlace { store, _closed: Closed(Some(closed_tx)) }, closed));
        }
        let (tx, mut rx) = mpsc::channel::<Commit>(1);
        std::thread::Builder::new().name("uplink-store".into()).spawn(move || {
            while let Some((changes, reply)) = rx.blocking_recv() {
                let _ = reply.send(commit_or_panic(&mut store, &changes));
            }
            drop(store);
            let _ = closed_tx.send(());
        })?;
        Ok((StoreLink::Thread(tx), closed))
    }

    /// Commits `changes`; the audit log's head after them, or why it failed.
    pub(super) async fn commit(&mut self, changes: Vec<Change>) -> Result<Head, String> {
        let tx = match self {
            StoreLink::InPlace { store, .. } => return commit_or_panic(store, &changes).map_err(|e| e.to_string()),
            StoreLink::Thread(tx) => tx,
        };
        let (reply, answer) = oneshot::channel();
        tx.send((changes, reply)).await.map_err(|_| "the store's thread ended".to_owned())?;
        match answer.await {
            Ok(Ok(head)) => Ok(head),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the store's thread ended".to_owned()),
        }
    }
}
