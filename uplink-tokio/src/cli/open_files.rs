//! The program's open-file limit, and the sled connections it leaves room for.
//!
//! A gateway holds a socket per sled, and many systems start services with a soft limit of 1,024 open
//! files under a hard limit far above. So `uplink gateway` raises its soft limit to the hard one at start,
//! as servers that hold many connections do, and by default allows as many sled connections as the limit
//! leaves once its own files are set aside (listeners, the store's files, HTTP clients, webhooks). Beyond
//! the budget a sled gets `503`; beyond the limit itself, accepting fails and the accept loop backs off.

/// Open files kept back from the sled connections: at most this many, or a quarter of a small limit.
const KEPT_BACK: u64 = 1024;

/// The budget when the limit cannot be read, or there is none.
const UNKNOWN_LIMIT_BUDGET: usize = 16_384;

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

/// The default most sled connections under an open-file `limit`.
pub(crate) fn connection_budget(limit: Option<u64>) -> usize {
    match limit {
        Some(limit) => {
            let budget = limit.saturating_sub((limit / 4).min(KEPT_BACK)).max(1);
            usize::try_from(budget).unwrap_or(usize::MAX)
        }
        None => UNKNOWN_LIMIT_BUDGET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_room_for_the_gateways_own_files() {
        assert_eq!(connection_budget(Some(20_000)), 18_976);
        assert_eq!(connection_budget(Some(1_048_576)), 1_047_552);
        // A small limit keeps a quarter back.
        assert_eq!(connection_budget(Some(1024)), 768);
        assert_eq!(connection_budget(Some(64)), 48);
        assert_eq!(connection_budget(Some(1)), 1);
        assert_eq!(connection_budget(Some(0)), 1);
        assert_eq!(connection_budget(None), UNKNOWN_LIMIT_BUDGET);
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
