//! Control-plane work beside the shards: a reload's read, check and compile,
//! and freeing the configs it replaces. That work runs on the cores no shard
//! is pinned to when there are any, and at a priority that yields to the
//! shards (`SCHED_IDLE` by default) where it has to share their cores, so
//! that a reload, however large the config, takes only CPU time the shards
//! leave and never holds a shard off its core.

use crate::compiled::Compiled;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// How often the retire thread looks whether the shards let go of a replaced config.
const RETIRE_POLL: Duration = Duration::from_millis(100);

/// How background threads are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Priority {
    /// `SCHED_IDLE`: runs when the core has nothing else to run (otherwise
    /// with a tiny share), and a waking shard preempts it at once.
    Idle,
    /// The normal policy at this nice value (0: as the process).
    Nice(i32),
}

impl Priority {
    /// `SHARDGATE_RELOAD_PRIORITY`: `idle` (the default) or a nice value 0..=19.
    fn from_env() -> Result<Priority, String> {
        match std::env::var("SHARDGATE_RELOAD_PRIORITY").ok().as_deref() {
            None | Some("idle") => Ok(Priority::Idle),
            Some(v) => match v.parse() {
                Ok(n) if (0..=19).contains(&n) => Ok(Priority::Nice(n)),
                _ => Err(format!(
                    "SHARDGATE_RELOAD_PRIORITY={v:?}: expected idle or a nice value 0..=19"
                )),
            },
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Priority::Idle => f.write_str("SCHED_IDLE"),
            Priority::Nice(n) => write!(f, "nice {n}"),
        }
    }
}

/// Where and how background work runs; owned by the [`ShardSet`](super::ShardSet).
pub(super) struct Background {
    /// `None` when the setting was refused (then threads keep the normal priority).
    priority: Option<Priority>,
    /// Replaced configs, freed on the retire thread.
    retired: Sender<Arc<Compiled>>,
}

impl Background {
    /// Moves the calling (control) thread, and so the threads it starts
    /// from now on, to the allowed cores no shard is pinned to, starts the
    /// retire thread, and logs where background work runs.
    pub(super) fn start(shard_cores: &[Option<usize>]) -> Background {
        let placed = match leave_cores(shard_cores) {
            Ok(Some(free)) => format!(
                "on cores {}",
                free.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Ok(None) => "on the shards' cores".to_string(),
            Err(e) => format!("where the control thread was ({e})"),
        };
        let (priority, how) = match Priority::from_env() {
            Ok(p) => (Some(p), p.to_string()),
            Err(e) => (None, format!("normal priority ({e})")),
        };
        eprintln!("shardgate: reload compiles run {placed}, {how}");
        let (retired, rx) = crossbeam_channel::unbounded();
        let spawned = std::thread::Builder::new()
            .name("shardgate-retire".into())
            .spawn(move || {
                if let Some(p) = priority {
                    let _ = lower_priority(p);
                }
                retire_loop(&rx)
            });
        if let Err(e) = spawned {
            eprintln!("shardgate: cannot start the retire thread: {e}");
        }
        Background { priority, retired }
    }

    /// Runs `work` on a thread of its own at the background priority and
    /// waits for it.
    pub(super) fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, String> {
        let priority = self.priority;
        std::thread::scope(|s| {
            let spawned = std::thread::Builder::new()
                .name("shardgate-reload".into())
                .spawn_scoped(s, move || {
                    if let Some(p) = priority {
                        if let Err(e) = lower_priority(p) {
                            eprintln!(
                                "shardgate: reload thread stays at normal priority: {p}: {e}"
                            );
                        }
                    }
                    work()
                })
                .map_err(|e| format!("cannot start the reload thread: {e}"))?;
            spawned
                .join()
                .map_err(|_| "the reload thread panicked".to_string())
        })
    }

    /// Keeps `replaced` until no shard or request holds it, then frees it
    /// on the retire thread.
    pub(super) fn retire(&self, replaced: Arc<Compiled>) {
        if let Err(e) = self.retired.send(replaced) {
            // No retire thread: the last holder frees it, as anywhere else.
            drop(e.into_inner());
        }
    }
}

/// Moves the calling thread (and the threads it starts later) onto the
/// allowed cores no shard is pinned to. Returns those cores, or `None` when
/// there are none (every core has a shard, or a shard is unpinned).
fn leave_cores(shard_cores: &[Option<usize>]) -> Result<Option<Vec<usize>>, String> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    if shard_cores.iter().any(Option::is_none) {
        return Ok(None);
    }
    let me = Pid::from_raw(0);
    let allowed = sched_getaffinity(me).map_err(|e| format!("sched_getaffinity: {e}"))?;
    let mut set = CpuSet::new();
    let mut free = Vec::new();
    for c in 0..CpuSet::count() {
        if allowed.is_set(c).unwrap_or(false) && !shard_cores.contains(&Some(c)) {
            set.set(c).map_err(|e| format!("cpu {c}: {e}"))?;
            free.push(c);
        }
    }
    if free.is_empty() {
        return Ok(None);
    }
    sched_setaffinity(me, &set).map_err(|e| format!("sched_setaffinity: {e}"))?;
    Ok(Some(free))
}

/// Lowers the calling thread's scheduling priority (on Linux, policy and
/// nice value are per thread).
#[allow(unsafe_code)]
fn lower_priority(p: Priority) -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: both calls take integers and a pointer to a local that
    // outlives the call; with pid/who 0 they apply to the calling thread.
    let rc = unsafe {
        match p {
            Priority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
            }
            Priority::Nice(0) => 0,
            Priority::Nice(n) => libc::setpriority(libc::PRIO_PROCESS, 0, n),
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Holds replaced configs until the shards and their requests let go of
/// them, then frees them here. Ends (freeing what it holds) once the
/// [`Background`] is dropped.
fn retire_loop(rx: &Receiver<Arc<Compiled>>) {
    let mut held: Vec<Arc<Compiled>> = Vec::new();
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(c) => held.push(c),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(RETIRE_POLL) {
                Ok(c) => held.push(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // Only this thread holds a config it keeps, so none can gain a
        // holder between the count and the drop.
        held.retain(|c| Arc::strong_count(c) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_returns_the_work_and_reports_a_panic() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let b = Background {
            priority: Some(Priority::Nice(1)),
            retired: tx,
        };
        let text = String::from("borrowed");
        assert_eq!(b.run(|| text.len()), Ok(8));
        #[allow(clippy::panic)]
        let r: Result<(), String> = b.run(|| panic!("in the reload thread"));
        assert!(r.is_err());
    }
}
