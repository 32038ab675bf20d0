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
/// A reload that shares the shards' cores goes on waiting at `SCHED_IDLE`
/// past [`STARVED_AFTER`] while the gateway's own threads keep at least this
/// share of those cores busy: then the wait is for the gateway's requests,
/// which come first (raising the reload would take its CPU from them).
const OWN_LOAD: f64 = 0.75;
/// The longest a reload waits for the gateway's own load before it goes on
/// at normal priority all the same: a config may be what the busy gateway
/// needs (a limit, a route away from a failing upstream).
const BUSY_WAIT_MAX: Duration = Duration::from_secs(30);

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
    /// result); asked for at the given instant, when the process had used
    /// the given CPU time.
    Run(Box<dyn FnOnce() + Send>, Instant, Duration),
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
        let free_cores = leave_cores(shard_cores);
        let placed_on_shard_cores = !matches!(free_cores, Ok(Some(_)));
        let placed = match free_cores {
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
                let idle = (priority == Some(Priority::Idle)).then_some(Idle {
                    shares_cores: placed_on_shard_cores,
                    cores: allowed_cores(),
                });
                work_loop(&rx, idle)
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
            cpu_clock(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID),
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

/// CPU time used so far: by the whole process, and by the calling thread.
#[derive(Clone, Copy)]
struct Cpu {
    process: Duration,
    thread: Duration,
}

/// A CPU-time clock's reading (zero where it cannot be read).
fn cpu_clock(clock: nix::time::ClockId) -> Duration {
    nix::time::clock_gettime(clock).map_or(Duration::ZERO, Duration::from)
}

impl Cpu {
    fn now() -> Cpu {
        Cpu {
            process: cpu_clock(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID),
            thread: cpu_clock(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID),
        }
    }

    /// CPU time the process's other threads used between `self` and `later`.
    fn others_until(self, later: Cpu) -> Duration {
        let process = later.process.saturating_sub(self.process);
        process.saturating_sub(later.thread.saturating_sub(self.thread))
    }
}

/// How the reload thread runs at `SCHED_IDLE`.
#[derive(Clone, Copy)]
struct Idle {
    /// On the shards' cores (no core is free of shards).
    shares_cores: bool,
    /// How many cores the thread may run on.
    cores: usize,
}

/// The cores the calling thread may run on (at least 1).
fn allowed_cores() -> usize {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    sched_getaffinity(Pid::from_raw(0)).map_or(1, |set| {
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .count()
            .max(1)
    })
}

/// The reload waiting for CPU at `SCHED_IDLE`: when it was asked for, and
/// where the last look at who used the cores began.
#[derive(Clone, Copy)]
struct Waiting {
    idle: Idle,
    asked: Instant,
    since: Instant,
    cpu: Cpu,
    said: bool,
}

thread_local! {
    static WAITING: std::cell::Cell<Option<Waiting>> = const { std::cell::Cell::new(None) };
}

/// What a reload that has waited [`STARVED_AFTER`] does.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Goes on at normal priority: something other than the gateway keeps
    /// its cores, or it has waited [`BUSY_WAIT_MAX`].
    Raise,
    /// Waits on at `SCHED_IDLE`: the gateway's own threads keep its cores.
    Wait,
}

/// The share (0 to 1) of the reload thread's `idle.cores` cores that `own`
/// CPU time filled in `window` (0 for an empty window).
fn share(idle: Idle, own: Duration, window: Duration) -> f64 {
    let capacity = window.as_secs_f64() * idle.cores as f64;
    if capacity > 0.0 {
        (own.as_secs_f64() / capacity).min(1.0)
    } else {
        0.0
    }
}

/// `own`: CPU time the gateway's other threads used in the last `window`,
/// on a reload thread that may run on `idle.cores` cores; `waited`: since
/// the reload was asked for.
fn verdict(idle: Idle, own: Duration, window: Duration, waited: Duration) -> Verdict {
    let busy = share(idle, own, window) >= OWN_LOAD;
    if idle.shares_cores && busy && waited < BUSY_WAIT_MAX {
        Verdict::Wait
    } else {
        Verdict::Raise
    }
}

/// The reload's deadline at `SCHED_IDLE` is due: it waits on while the
/// gateway's own threads keep its cores busy (up to [`BUSY_WAIT_MAX`]), and
/// otherwise goes on at the normal policy, nice 0, where the system allows
/// it (leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or an `RLIMIT_NICE` of 20),
/// and says which.
fn starved() {
    let Some(mut w) = WAITING.with(std::cell::Cell::get) else {
        return;
    };
    let (now, cpu) = (Instant::now(), Cpu::now());
    let waited = now.duration_since(w.asked);
    let own = w.cpu.others_until(cpu);
    let window = now.duration_since(w.since);
    if verdict(w.idle, own, window, waited) == Verdict::Wait {
        if !w.said {
            eprintln!(
                "shardgate: a reload has waited {} s for CPU at SCHED_IDLE while the shards kept {:.0}% of its cores busy; it waits on for them (at most {} s)",
                waited.as_secs(),
                share(w.idle, own, window) * 100.0,
                BUSY_WAIT_MAX.as_secs()
            );
            w.said = true;
        }
        w.since = now;
        w.cpu = cpu;
        WAITING.with(|c| c.set(Some(w)));
        crate::pace::set_deadline(now + STARVED_AFTER, starved);
        return;
    }
    let waited = waited.as_secs();
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
/// since it was asked for finishes at normal priority unless the gateway's
/// own threads kept its cores busy (see [`starved`]), then the thread goes
/// back to `SCHED_IDLE`.
fn work_loop(rx: &Receiver<Job>, idle: Option<Idle>) {
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
            Some(Job::Run(f, asked, process)) => {
                if let Some(idle) = idle {
                    // The process's CPU time since the ask, this thread's
                    // since it took the job (it used next to none between).
                    let cpu = Cpu {
                        process,
                        thread: cpu_clock(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID),
                    };
                    WAITING.with(|w| {
                        w.set(Some(Waiting {
                            idle,
                            asked,
                            since: asked,
                            cpu,
                            said: false,
                        }))
                    });
                    crate::pace::set_deadline(asked + STARVED_AFTER, starved);
                }
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                crate::pace::clear_deadline();
                WAITING.with(|w| w.set(None));
                // Back to SCHED_IDLE in case the deadline raised it (a no-op
                // otherwise).
                if idle.is_some() {
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
    fn a_reload_waits_on_for_the_gateways_own_load_only() {
        let s = Duration::from_secs;
        let shared = Idle {
            shares_cores: true,
            cores: 2,
        };
        // The gateway's threads used 9 of the 10 core-seconds: wait on.
        assert_eq!(verdict(shared, s(9), s(5), s(5)), Verdict::Wait);
        // Something else had the cores (the gateway used 1 of 10): go on.
        assert_eq!(verdict(shared, s(1), s(5), s(5)), Verdict::Raise);
        // Busy all along, but waited the longest it may.
        assert_eq!(verdict(shared, s(10), s(5), BUSY_WAIT_MAX), Verdict::Raise);
        // On cores of its own, the shards' CPU is not what it waits for.
        let apart = Idle {
            shares_cores: false,
            cores: 1,
        };
        assert_eq!(verdict(apart, s(5), s(5), s(5)), Verdict::Raise);
        // No window to judge by.
        assert_eq!(verdict(shared, s(0), s(0), s(5)), Verdict::Raise);
    }

    #[test]
    fn others_cpu_leaves_out_the_reload_threads_own() {
        let before = Cpu {
            process: Duration::from_millis(1_000),
            thread: Duration::from_millis(100),
        };
        let after = Cpu {
            process: Duration::from_millis(4_000),
            thread: Duration::from_millis(600),
        };
        assert_eq!(before.others_until(after), Duration::from_millis(2_500));
        assert_eq!(after.others_until(before), Duration::ZERO);
    }

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
