//! The process's open-file limit: every client and upstream connection is a
//! descriptor, so at start the soft limit is raised to the hard limit (the
//! most an unprivileged process may ask for) instead of the common default
//! of 1024.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// What raising the limit did, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NofileOutcome {
    /// The soft limit went from `from` to `to`.
    Raised {
        /// Soft limit before.
        from: u64,
        /// Soft limit now.
        to: u64,
    },
    /// The soft limit already was as high as allowed.
    Kept(u64),
    /// The limit could not be read or raised.
    Failed {
        /// Soft limit in force (0 if unknown).
        soft: u64,
        /// What went wrong.
        why: String,
    },
}

impl NofileOutcome {
    /// The soft limit in force afterwards (0 if unknown).
    pub fn limit(&self) -> u64 {
        match self {
            NofileOutcome::Raised { to, .. } => *to,
            NofileOutcome::Kept(n) => *n,
            NofileOutcome::Failed { soft, .. } => *soft,
        }
    }
}

impl std::fmt::Display for NofileOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NofileOutcome::Raised { from, to } => {
                write!(
                    f,
                    "open-file limit (RLIMIT_NOFILE) raised from {from} to {to}"
                )
            }
            NofileOutcome::Kept(n) => write!(
                f,
                "open-file limit (RLIMIT_NOFILE) from {n} to {n}: already the hard limit"
            ),
            NofileOutcome::Failed { soft, why } => write!(
                f,
                "open-file limit (RLIMIT_NOFILE) stays at {soft}: cannot raise it: {why}"
            ),
        }
    }
}

/// The soft limit to ask for: the hard limit, or `nr_open` (the kernel's
/// ceiling, `fs.nr_open`) when the hard limit is unlimited, since Linux
/// refuses a soft limit above `nr_open`. `None` when `soft` is already there.
pub fn nofile_target(soft: u64, hard: u64, nr_open: u64) -> Option<u64> {
    let ceiling = if hard == RLIM_INFINITY { nr_open } else { hard };
    (soft < ceiling).then_some(ceiling)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
pub fn raise_nofile_limit() -> NofileOutcome {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            return NofileOutcome::Failed {
                soft: 0,
                why: e.to_string(),
            }
        }
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1 << 20);
    let Some(to) = nofile_target(soft, hard, nr_open) else {
        return NofileOutcome::Kept(soft);
    };
    match setrlimit(Resource::RLIMIT_NOFILE, to, hard) {
        Ok(()) => NofileOutcome::Raised { from: soft, to },
        Err(e) => NofileOutcome::Failed {
            soft,
            why: format!("setrlimit to {to}: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_the_hard_limit_or_nr_open() {
        assert_eq!(nofile_target(1024, 524_288, 1 << 20), Some(524_288));
        assert_eq!(nofile_target(1024, RLIM_INFINITY, 1 << 20), Some(1 << 20));
        assert_eq!(nofile_target(524_288, 524_288, 1 << 20), None);
        assert_eq!(nofile_target(RLIM_INFINITY, RLIM_INFINITY, 1 << 20), None);
    }

    #[test]
    fn log_lines() {
        let raised = NofileOutcome::Raised {
            from: 512,
            to: 4096,
        };
        assert_eq!(
            raised.to_string(),
            "open-file limit (RLIMIT_NOFILE) raised from 512 to 4096"
        );
        assert!(NofileOutcome::Kept(4096)
            .to_string()
            .contains("from 4096 to 4096"));
    }
}
