//! Control-plane work beside the shards: a reload's read, check and compile,
//! and freeing the configs it replaces. That work runs on the cores no shard
//! is pinned to when there are any, and at a priority that yields to the
//! shards (`SCHED_IDLE` by default) where it has to share their cores, so
//! that a reload, however large the config, takes only CPU time the shards
//! leave and never holds a shard off its core.

use crate::compiled::Compiled;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the retire thread looks whether the shards let go of a replaced config.
const RETIRE_POLL: Duration = Duration::from_millis(100);
/// Background threads pause for [`REST`] after each stretch of this much
/// work (see [`crate::pace`]): the longest a shard can wait for one.
const WORK: Duration = Duration::from_micros(200);
/// See [`WORK`].
const REST: Duration = Duration::from_micros(50);
/// How long a reload may wait for CPU at `SCHED_IDLE` before it goes on at
/// normal priority. A `SCHED_IDLE` thread gets next to nothing of a core
/// that something else keeps busy: with one CPU-bound process beside the
/// gateway on its core, a 20,000-route reload took 60 s at `SCHED_IDLE`,
/// 0.33 s at nice 0 (bench/RESULTS.md §46).
const STARVED_AFTER: Duration = Duration::from_secs(5);

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

/// A piece of background work.
enum Job {
    /// Run this (a reload's read, check and compile; it sends its own
    /// result); asked for at the given instant.
    Run(Box<dyn FnOnce() + Send>, Instant),
    /// Free this config once no shard or request holds it.
    Retire(Arc<Compiled>),
}

/// The background thread, owned by the [`ShardSet`](super::ShardSet). One
/// long-lived thread both compiles configs and frees them, so that a
/// config's memory is allocated and returned by the same thread, and no
/// thread is started or ended per reload.
pub(super) struct Background {
    jobs: Sender<Job>,
}

impl Background {
    /// Moves the calling (control) thread, and so the threads it starts
    /// from now on, to the allowed cores no shard is pinned to, starts the
    /// background thread there, and logs where background work runs.
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
        let (jobs, rx) = crossbeam_channel::unbounded();
        let spawned = std::thread::Builder::new()
            .name("shardgate-reload".into())
            .spawn(move || {
                if let Some(p) = priority {
                    if let Err(e) = lower_priority(p) {
                        eprintln!("shardgate: reload thread stays at normal priority: {p}: {e}");
                    }
                }
                crate::pace::enable(WORK, REST);
                work_loop(&rx, priority == Some(Priority::Idle))
            });
        if let Err(e) = spawned {
            eprintln!("shardgate: cannot start the reload thread: {e}");
        }
        Background { jobs }
    }

    /// Runs `work` on the background thread and waits for its result.
    pub(super) fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job = Job::Run(
            Box::new(move || {
                let _ = tx.send(work());
            }),
            Instant::now(),
        );
        self.jobs
            .send(job)
            .map_err(|_| "the reload thread is not running".to_string())?;
        rx.recv()
            .map_err(|_| "the reload thread failed (panicked)".to_string())
    }

    /// Keeps `replaced` until no shard or request holds it, then frees it
    /// on the background thread.
    pub(super) fn retire(&self, replaced: Arc<Compiled>) {
        if let Err(e) = self.jobs.send(Job::Retire(replaced)) {
            // No background thread: the last holder frees it, as anywhere else.
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
fn lower_priority(p: Priority) -> std::io::Result<()> {
    match p {
        Priority::Idle => set_policy(nix::libc::SCHED_IDLE),
        Priority::Nice(0) => Ok(()),
        Priority::Nice(n) => set_nice(n),
    }
}

/// Sets the calling thread's scheduling policy (a non-real-time one:
/// `SCHED_IDLE`, `SCHED_OTHER`).
#[allow(unsafe_code)]
fn set_policy(policy: nix::libc::c_int) -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: a pointer to a local that outlives the call; pid 0 is the
    // calling thread.
    let rc = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, policy, &param)
    };
    os_result(rc)
}

/// Sets the calling thread's nice value.
#[allow(unsafe_code)]
fn set_nice(n: i32) -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: integers only; `who` 0 is the calling thread.
    os_result(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) })
}

fn os_result(rc: nix::libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A reload has waited [`STARVED_AFTER`] at `SCHED_IDLE`: goes on at the
/// normal policy, nice 0, where the system allows it (leaving `SCHED_IDLE`
/// needs `CAP_SYS_NICE` or an `RLIMIT_NICE` of 20), and says which.
fn raise_starved() {
    let waited = STARVED_AFTER.as_secs();
    match set_policy(nix::libc::SCHED_OTHER) {
        Ok(()) => eprintln!("shardgate: a reload waited {waited} s for CPU at SCHED_IDLE; it goes on at normal priority"),
        Err(e) => eprintln!(
            "shardgate: a reload waited {waited} s for CPU at SCHED_IDLE and cannot go on at normal priority ({e}; needs CAP_SYS_NICE or RLIMIT_NICE 20); SHARDGATE_RELOAD_PRIORITY=N runs reloads at nice N"
        ),
    }
}

/// Runs jobs as they come; holds replaced configs until the shards and
/// their requests let go of them, then frees them. Ends (freeing what it
/// holds) once the [`Background`] is dropped.
///
/// At `SCHED_IDLE` (`idle`), a reload that has waited [`STARVED_AFTER`]
/// since it was asked for finishes at normal priority, then the thread goes
/// back to `SCHED_IDLE`.
fn work_loop(rx: &Receiver<Job>, idle: bool) {
    let mut held: Vec<Arc<Compiled>> = Vec::new();
    loop {
        let job = if held.is_empty() {
            match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(RETIRE_POLL) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        match job {
            // A panic ends the job (its caller hears of it), not the thread.
            Some(Job::Run(f, asked)) => {
                if idle {
                    crate::pace::set_deadline(asked + STARVED_AFTER, raise_starved);
                }
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                crate::pace::clear_deadline();
                // Back to SCHED_IDLE in case the deadline raised it (a no-op
                // otherwise).
                if idle {
                    if let Err(e) = lower_priority(Priority::Idle) {
                        eprintln!("shardgate: reload thread stays at normal priority: {e}");
                    }
                }
            }
            Some(Job::Retire(c)) => held.push(c),
            None => {}
        }
        // Only this thread holds a config it keeps, so none can gain a
        // holder between the count and the drop.
        let (free, keep): (Vec<_>, Vec<_>) =
            held.into_iter().partition(|c| Arc::strong_count(c) == 1);
        held = keep;
        for c in free {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.drop_paced();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_returns_the_work_and_survives_a_panic() {
        let b = Background::start(&[None]);
        let text = String::from("moved");
        assert_eq!(b.run(move || text.len()), Ok(5));
        #[allow(clippy::panic)]
        let r: Result<(), String> = b.run(|| panic!("in the reload thread"));
        assert!(r.is_err());
        assert_eq!(b.run(|| 7), Ok(7));
    }
}
