//! The program's open-file limit, and the sled connections it leaves room for.
//!
//! A gateway holds a socket per sled, and many systems start services with a soft limit of 1,024 open
//! files under a hard limit far above. So `uplink gateway` raises its soft limit to the hard one at start,
//! as servers that hold many connections do, and by default allows as many sled connections as the limit
//! leaves once its own files are set aside (listeners, the store's files, HTTP clients, webhooks). Beyond
//! the budget a sled gets `503`; beyond the limit itself, accepting fails and the accept loop backs off.
//! How many that is, is the core's ([`HubConfig::max_connections_for_open_files`]).

use uplink_proto::gateway::HubConfig;

/// Raises the soft open-file limit to the hard one; returns the limit now in force (`None`: unknown or
/// unlimited). A failure to raise it leaves the limit as it was.
pub(crate) fn raise() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        // An unlimited hard limit is not accepted for open files by every system: ask for a million then.
        let wanted = limit.maximum.unwrap_or(1 << 20);
        if limit.current.is_some_and(|current| current < wanted) {
            let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(wanted), maximum: limit.maximum });
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The default most sled connections under an open-file `limit`: the core's budget for it
/// ([`HubConfig::max_connections_for_open_files`]); the hub's default when the limit is unknown.
pub(crate) fn connection_budget(limit: Option<u64>) -> usize {
    match limit {
        Some(limit) => HubConfig::max_connections_for_open_files(limit),
        None => HubConfig::default().max_connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_limit_gives_the_hubs_default_budget() {
        assert_eq!(connection_budget(None), 16_384);
        assert_eq!(connection_budget(Some(20_000)), 18_976);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn raising_reaches_the_hard_limit() {
        // The test process's own limit (the program's start is tested under a lowered one in `cli_gateway`).
        let raised = raise().expect("Linux has a limit");
        let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
        let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("the open-file line");
        let words: Vec<&str> = line.split_whitespace().collect();
        let (soft, hard) = (words[3].parse::<u64>().expect("a number"), words[4]);
        assert_eq!(raised, soft);
        if hard != "unlimited" {
            assert_eq!(soft.to_string(), hard, "the soft limit is raised to the hard one");
        }
    }
}
