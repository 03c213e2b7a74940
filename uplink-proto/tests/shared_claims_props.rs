//! Claims settled through a shared table, as a cluster's gateways do (`HubConfig::shared_claims`): three hubs
//! and a reference table (granted when free, held otherwise; a claim given back by its generation), with the
//! messages between them delivered late and in any order. Whatever the sleds do, never do two gateways hold
//! one project, a gateway holds a project only under the table's row for it, and a live holder is never
//! taken over by another credential.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use uplink_proto::gateway::{
    ClaimAnswer, ConnHandle, Credential, CredentialId, Hub, HubConfig, HubEvent, HubOutput, SharedClaimsConfig,
};
use uplink_proto::{Instant, Received};

const NODES: u64 = 3;
const PROJECTS: [&str; 2] = ["web", "api"];

#[derive(Clone, Debug)]
enum Step {
    /// A sled with credential `cred` connects to `node` and identifies as `project`.
    Connect { node: u64, cred: u64, project: usize },
    /// The `n`th open connection (of all nodes) drops.
    Drop(usize),
    /// The `n`th message in flight is delivered.
    Deliver(usize),
    /// Time passes.
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..NODES, 1..3u64, 0..PROJECTS.len()).prop_map(|(node, cred, project)| Step::Connect { node, cred, project }),
        1 => (0..8usize).prop_map(Step::Drop),
        5 => (0..8usize).prop_map(Step::Deliver),
        1 => (1..400u64).prop_map(Step::Wait),
    ]
}

/// A message between a gateway and the table (or another gateway), in flight.
#[derive(Clone, Debug)]
enum Message {
    Ask { node: u64, conn: ConnHandle, project: String, credential: CredentialId },
    Release { to: u64, project: String, credential: CredentialId },
    GiveBack { project: String, generation: u64 },
}

/// The table's row for a project.
#[derive(Clone, Copy, Debug)]
struct Row {
    node: u64,
    conn: ConnHandle,
    credential: CredentialId,
    generation: u64,
}

struct Cluster {
    hubs: Vec<Hub>,
    table: BTreeMap<String, Row>,
    next_generation: u64,
    in_flight: Vec<Message>,
    open: Vec<(u64, ConnHandle)>,
    credentials: BTreeMap<ConnHandle, CredentialId>,
    now: Instant,
}

impl Cluster {
    fn new() -> Cluster {
        let hubs = (0..NODES)
            .map(|node| {
                let mut cfg = HubConfig::default();
                cfg.shared_claims = Some(SharedClaimsConfig::for_node(node));
                let mut hub = Hub::new(cfg, Instant::ZERO).expect("valid");
                // Each gateway's handles in a range of its own, as incarnation-scoped handles are.
                hub.start_ids_after(node << 32);
                hub
            })
            .collect();
        Cluster {
            hubs,
            table: BTreeMap::new(),
            next_generation: 1,
            in_flight: Vec::new(),
            open: Vec::new(),
            credentials: BTreeMap::new(),
            now: Instant::ZERO,
        }
    }

    /// Takes every hub's outputs: messages go in flight; closes end connections; checks each takeover.
    fn collect(&mut self) -> Result<(), TestCaseError> {
        for node in 0..NODES {
            while let Some(out) = self.hubs[node as usize].poll_output() {
                match out {
                    HubOutput::Event(HubEvent::ClaimWanted { conn, project, credential }) => {
                        self.in_flight.push(Message::Ask { node, conn, project, credential })
                    }
                    HubOutput::Event(HubEvent::ReleaseWanted { project, node: to, credential }) => {
                        prop_assert_ne!(to, node, "a gateway asks itself nothing");
                        self.in_flight.push(Message::Release { to, project, credential })
                    }
                    HubOutput::Event(HubEvent::ClaimEnded { project, generation }) => {
                        self.in_flight.push(Message::GiveBack { project, generation })
                    }
                    HubOutput::Event(HubEvent::SledConnected { conn, replaced: Some(old), .. }) => {
                        prop_assert_eq!(
                            self.credentials.get(&old),
                            self.credentials.get(&conn),
                            "only the same credential takes a live project over"
                        );
                    }
                    // Closed by its gateway: its socket ends.
                    HubOutput::Close { conn, .. } => {
                        self.open.retain(|&(_, c)| c != conn);
                        self.hubs[node as usize].handle_disconnected(self.now, conn);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for project in PROJECTS {
            let holders: Vec<(u64, ConnHandle)> = (0..NODES)
                .filter_map(|node| self.hubs[node as usize].holder(project).map(|conn| (node, conn)))
                .collect();
            prop_assert!(holders.len() <= 1, "two gateways hold {project}: {holders:?}");
            if let Some(&(node, conn)) = holders.first() {
                let row = self.table.get(project);
                prop_assert!(
                    row.is_some_and(|r| r.node == node && r.conn == conn),
                    "{project} held by {conn:?} on {node} without the table's row ({row:?})"
                );
            }
        }
        Ok(())
    }

    fn deliver(&mut self, message: Message) {
        match message {
            Message::Ask { node, conn, project, credential } => {
                let answer = match self.table.get(&project) {
                    Some(row) => ClaimAnswer::Held { credential: row.credential, node: row.node },
                    None => {
                        let generation = self.next_generation;
                        self.next_generation += 1;
                        self.table.insert(project.clone(), Row { node, conn, credential, generation });
                        ClaimAnswer::Granted { generation }
                    }
                };
                self.hubs[node as usize].handle_claim_answer(self.now, conn, &project, answer);
            }
            Message::Release { to, project, credential } => {
                self.hubs[to as usize].release(self.now, &project, credential);
            }
            Message::GiveBack { project, generation } => {
                if self.table.get(&project).is_some_and(|r| r.generation == generation) {
                    self.table.remove(&project);
                }
            }
        }
    }

    fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::Connect { node, cred, project } => {
                let credential = CredentialId(cred);
                let hub = &mut self.hubs[node as usize];
                let Ok(conn) = hub.accept(self.now, Credential::unbound(credential)) else { return Ok(()) };
                let identity = json!({"type":"identity","req_id":"identity","payload":{"project":PROJECTS[project]}});
                hub.handle_received(self.now, conn, Received::Text(&identity.to_string()));
                self.open.push((node, conn));
                self.credentials.insert(conn, credential);
            }
            Step::Drop(n) if !self.open.is_empty() => {
                let (node, conn) = self.open.remove(n % self.open.len());
                self.hubs[node as usize].handle_disconnected(self.now, conn);
            }
            Step::Deliver(n) if !self.in_flight.is_empty() => {
                let message = self.in_flight.remove(n % self.in_flight.len());
                self.deliver(message);
            }
            Step::Wait(ms) => {
                self.now = self.now + Duration::from_millis(ms);
                for hub in &mut self.hubs {
                    hub.handle_timeout(self.now);
                }
            }
            _ => {}
        }
        self.collect()?;
        self.check()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_two_holders_and_only_the_same_credential_takes_over(steps in proptest::collection::vec(step(), 1..80)) {
        let mut cluster = Cluster::new();
        for step in steps {
            cluster.run(step)?;
        }
        // Everything in flight delivered, and time enough for every wait: still one holder at most, and
        // every claim given back is gone from the table.
        for _ in 0..400 {
            if cluster.in_flight.is_empty() {
                cluster.run(Step::Wait(300))?;
                if cluster.in_flight.is_empty() {
                    break;
                }
            }
            cluster.run(Step::Deliver(0))?;
        }
        for (project, row) in &cluster.table {
            let holds = cluster.hubs[row.node as usize].holder(project) == Some(row.conn);
            prop_assert!(holds, "the table names {:?} on {} for {project}, which no longer holds it", row.conn, row.node);
        }
    }
}
