//! Starting shards: core placement, driver choice, listener binding, and the
//! control loop through which a shard hears of reloads and shutdown.

use super::background::Background;
use super::state::Shard;
use crate::compiled::Compiled;
use crate::config::{BalanceConnections, DescriptorTables, DriverChoice, Shards};
use crate::ratelimit::limiter::{now_ns, Gossip, Limiter};
use crate::resilience::breaker::{BreakerMsg, Breakers};
use crate::server::{accept_loop, contain, panic_message};
use crossbeam_channel::{Receiver, Sender};
use monoio::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a shard looks at its control channel.
const CONTROL_TICK: Duration = Duration::from_millis(20);
/// How often a shard closes expired idle upstream connections.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// A message from the control thread to a shard.
pub enum Control {
    /// Serve this config from the next request on.
    Reload(Arc<Compiled>),
    /// Stop accepting, finish in-flight requests, exit within the grace period.
    Shutdown,
    /// Answer with a report on `to` (see [`super::report`]).
    Report {
        /// How much to include.
        detail: super::report::Detail,
        /// Where the answer goes.
        to: Sender<super::report::ShardReport>,
    },
    /// A refreshed JWKS key set for an authenticator of config `generation`.
    Keys {
        /// The config the keys belong to.
        generation: u64,
        /// Authenticator index in that config.
        authenticator: usize,
        /// The keys.
        keys: crate::auth::jwks::KeySet,
    },
    /// The control side's latest view of target health and ejections.
    Health(Arc<crate::resilience::health::HealthView>),
    /// Remove response-cache entries; answered with how many were removed.
    CachePurge {
        /// Which entries.
        purge: crate::cache::Purge,
        /// Where the count goes.
        to: Sender<u64>,
    },
}

/// The I/O driver a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

/// The running shards.
pub struct ShardSet {
    senders: Vec<Sender<Control>>,
    handles: Vec<JoinHandle<()>>,
    /// The driver each shard runs.
    pub drivers: Vec<Driver>,
    /// Where reload compiles run and replaced configs are freed.
    background: Background,
    /// The target keeper (health checks, ejections): hears of reloads.
    keeper: Sender<crate::resilience::health::Report>,
}

impl ShardSet {
    /// Sends a new config to every shard; each swaps it in with one pointer
    /// store between requests. `replaced` is the config it supersedes: it is
    /// kept on the retire thread until no shard (and no request) holds it, and
    /// freed there, so that no shard spends time on its own core freeing a
    /// large route table.
    pub fn reload(&self, compiled: Arc<Compiled>, replaced: Arc<Compiled>) {
        for s in &self.senders {
            let _ = s.send(Control::Reload(compiled.clone()));
        }
        let _ = self
            .keeper
            .send(crate::resilience::health::Report::Config(compiled));
        self.background.retire(replaced);
    }

    /// Runs `work` (a reload's read, check and compile) on the background
    /// thread, off the shards' cores when there are other cores and at a
    /// priority that yields to the shards, and waits for it.
    pub fn in_background<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        self.background.run(work)
    }

    /// A handle for asking the shards for reports (the admin side's).
    pub fn asker(&self) -> Asker {
        Asker {
            senders: self.senders.clone(),
        }
    }

    /// Sends refreshed keys to every shard.
    pub fn publisher(&self) -> impl Fn(u64, usize, crate::auth::jwks::KeySet) + Send + 'static {
        let senders = self.senders.clone();
        move |generation, authenticator, keys| {
            for s in &senders {
                let _ = s.send(Control::Keys {
                    generation,
                    authenticator,
                    keys: keys.clone(),
                });
            }
        }
    }

    /// Asks every shard to drain, then waits up to `grace` (plus a margin) for them to exit.
    /// Returns true when every shard finished in time.
    pub fn shutdown(self, grace: Duration) -> bool {
        for s in &self.senders {
            let _ = s.send(Control::Shutdown);
        }
        let deadline = Instant::now() + grace + Duration::from_millis(500);
        while Instant::now() < deadline {
            if self.handles.iter().all(|h| h.is_finished()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Asks shards for reports from another thread.
#[derive(Clone)]
pub struct Asker {
    senders: Vec<Sender<Control>>,
}

impl Asker {
    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Asks every shard for a report and waits up to `wait` for the
    /// answers; a shard that does not answer in time (busy draining, or
    /// gone) is missing from the result, which is in shard order.
    pub fn ask(
        &self,
        detail: super::report::Detail,
        wait: Duration,
    ) -> Vec<super::report::ShardReport> {
        self.ask_each(|_| detail, wait)
    }

    /// Sends a response-cache purge to every shard and waits up to `wait`
    /// for their answers: (shards that answered, entries removed).
    pub fn purge_cache(&self, purge: &crate::cache::Purge, wait: Duration) -> (usize, u64) {
        let (tx, rx) = crossbeam_channel::bounded(self.senders.len());
        let mut asked = 0;
        for s in &self.senders {
            let msg = Control::CachePurge {
                purge: purge.clone(),
                to: tx.clone(),
            };
            if s.send(msg).is_ok() {
                asked += 1;
            }
        }
        drop(tx);
        let deadline = Instant::now() + wait;
        let (mut answered, mut removed) = (0, 0);
        while answered < asked {
            match rx.recv_deadline(deadline) {
                Ok(n) => {
                    answered += 1;
                    removed += n;
                }
                Err(_) => break,
            }
        }
        (answered, removed)
    }

    /// As [`Asker::ask`], with what to ask of each shard (by shard id).
    pub fn ask_each(
        &self,
        detail: impl Fn(usize) -> super::report::Detail,
        wait: Duration,
    ) -> Vec<super::report::ShardReport> {
        let (tx, rx) = crossbeam_channel::bounded(self.senders.len());
        let mut asked = 0;
        for (id, s) in self.senders.iter().enumerate() {
            let msg = Control::Report {
                detail: detail(id),
                to: tx.clone(),
            };
            if s.send(msg).is_ok() {
                asked += 1;
            }
        }
        drop(tx);
        let deadline = Instant::now() + wait;
        let mut out = Vec::with_capacity(asked);
        while out.len() < asked {
            match rx.recv_deadline(deadline) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        out.sort_by_key(|r| r.id);
        out
    }
}

/// The core each shard is pinned to (`None`: not pinned).
pub fn plan_cores(shards: &Shards) -> Result<Vec<Option<usize>>, String> {
    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let pick = |n: usize| -> Vec<Option<usize>> {
        if available.is_empty() {
            return vec![None; n];
        }
        available.iter().cycle().take(n).map(|&c| Some(c)).collect()
    };
    match shards {
        Shards::Auto => Ok(pick(available.len().max(1))),
        Shards::Count(n) => Ok(pick(*n)),
        Shards::Cores(list) => Ok(list.iter().map(|&c| Some(c)).collect()),
        Shards::NumaNode(k) => {
            let path = format!("/sys/devices/system/node/node{k}/cpulist");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("NumaNode({k}): cannot read {path}: {e}"))?;
            let cores = parse_cpulist(&text)
                .ok_or_else(|| format!("NumaNode({k}): cannot parse {path}: {text:?}"))?;
            if cores.is_empty() {
                return Err(format!("NumaNode({k}) has no cores"));
            }
            Ok(cores.into_iter().map(Some).collect())
        }
    }
}

/// Parses a Linux cpulist such as `0-3,8,10-11`.
pub fn parse_cpulist(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

fn choose_driver(choice: DriverChoice) -> Result<Driver, String> {
    let choice = match std::env::var("SHARDGATE_DRIVER").ok().as_deref() {
        Some("epoll") | Some("legacy") => DriverChoice::Epoll,
        Some("io_uring") | Some("iouring") | Some("uring") => DriverChoice::IoUring,
        Some("auto") | Some("") | None => choice,
        Some(other) => {
            return Err(format!(
                "SHARDGATE_DRIVER={other:?}: expected epoll, io_uring or auto"
            ))
        }
    };
    Ok(match choice {
        DriverChoice::Epoll => Driver::Epoll,
        DriverChoice::IoUring => Driver::IoUring,
        DriverChoice::Auto if monoio::utils::detect_uring() => Driver::IoUring,
        DriverChoice::Auto => Driver::Epoll,
    })
}

/// Starts every shard and returns once all of them listen (or one failed).
pub fn start(compiled: Arc<Compiled>) -> Result<ShardSet, String> {
    let cores = plan_cores(&compiled.shards)?;
    let wanted = choose_driver(compiled.driver)?;
    let bound = bind_all(&compiled, &cores, wanted)?;
    let per_shard_tables = compiled.descriptor_tables == DescriptorTables::PerShard;
    let handed_over: Vec<RawFd> = bound.iter().flatten().map(AsRawFd::as_raw_fd).collect();
    let mut sockets = bound.into_iter();
    let fallback_allowed = compiled.driver == DriverChoice::Auto;
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<(usize, Result<Driver, String>)>();
    let mut handles = Vec::new();
    // Rate-limit gossip: every shard can reach every other shard.
    let (gossip_tx, mut gossip_rx): (Vec<_>, Vec<_>) =
        cores.iter().map(|_| crossbeam_channel::unbounded()).unzip();
    // Circuit-breaker transitions: likewise, every shard to every shard.
    let (breaker_tx, mut breaker_rx): (Vec<_>, Vec<_>) =
        cores.iter().map(|_| crossbeam_channel::unbounded()).unzip();
    let (senders, mut receivers): (Vec<Sender<Control>>, Vec<_>) =
        cores.iter().map(|_| crossbeam_channel::unbounded()).unzip();
    // Host-wide target health: one keeper and one prober, views to every shard.
    let keeper = {
        let to = senders.clone();
        crate::resilience::health::start(compiled.clone(), move |view| {
            for s in &to {
                let _ = s.send(Control::Health(view.clone()));
            }
        })?
    };
    for (id, core) in cores.iter().copied().enumerate() {
        let rx = receivers.remove(0);
        let keeper = keeper.clone();
        let peers = gossip_tx.clone();
        let inbox = gossip_rx.remove(0);
        let breakers = (breaker_tx.clone(), breaker_rx.remove(0));
        let compiled = compiled.clone();
        let ready = ready_tx.clone();
        let shard_sockets = sockets.next().unwrap_or_default();
        let shards = cores.len();
        let handle = std::thread::Builder::new()
            .name(format!("shardgate-shard-{id}"))
            .spawn(move || {
                if let Some(c) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                        eprintln!(
                            "shardgate: shard {id}: could not pin to core {c}; running unpinned"
                        );
                    }
                }
                if per_shard_tables {
                    let keep: Vec<RawFd> = shard_sockets.iter().map(AsRawFd::as_raw_fd).collect();
                    if let Err(e) = super::fdtable::separate(&keep) {
                        let _ = ready.send((id, Err(format!("descriptor_tables: PerShard: {e}"))));
                        return;
                    }
                }
                let args = ShardArgs {
                    sockets: Rc::new(shard_sockets),
                    id,
                    shards,
                    core,
                    compiled,
                    rx,
                    ready,
                    peers,
                    inbox,
                    breakers,
                    keeper,
                };
                run_shard(args, wanted, fallback_allowed);
            })
            .map_err(|e| format!("cannot spawn shard thread: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut drivers = vec![Driver::Epoll; cores.len()];
    for _ in 0..cores.len() {
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok((id, Ok(d))) => {
                if let Some(slot) = drivers.get_mut(id) {
                    *slot = d;
                }
            }
            Ok((id, Err(e))) => return Err(format!("shard {id}: {e}")),
            Err(_) => return Err("shards did not start within 10 s".into()),
        }
    }
    if per_shard_tables {
        // Every shard has its own copies by now (it separates before it
        // reports ready); the process's table lets go of its listeners.
        super::fdtable::release(&handed_over);
    }
    let background = Background::start(&cores);
    Ok(ShardSet {
        senders,
        handles,
        drivers,
        background,
        keeper,
    })
}

/// Backlog asked of `listen`; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds every listener for every shard, on the calling thread before any
/// shard starts: `result[shard][listener]`. Sockets of one SO_REUSEPORT
/// group are bound and listen in shard order, so a listener's group holds
/// shard 0's socket first, then shard 1's, and so on (the kernel's socket
/// index is the order of `listen`); `IncomingCpu`'s walk over the group then
/// alternates between the shards that share a core. `RoundRobin` binds one
/// socket and gives every shard its own descriptor of it; it needs io_uring,
/// whose accepts wait as exclusive waiters woken in turn (the epoll driver
/// registers without EPOLLEXCLUSIVE, so every shard would wake for every
/// connection and the quickest would take it, which measured less even than
/// the kernel's hash), so with epoll it falls back to `Kernel`.
fn bind_all(
    compiled: &Compiled,
    cores: &[Option<usize>],
    driver: Driver,
) -> Result<Vec<Vec<std::net::TcpListener>>, String> {
    let mut out: Vec<Vec<std::net::TcpListener>> = cores.iter().map(|_| Vec::new()).collect();
    let pinned = cores.iter().all(Option::is_some);
    for l in &compiled.listeners {
        let fail = |e: std::io::Error| format!("cannot bind {} ({}): {e}", l.addr, l.name);
        let balance = match l.balance {
            BalanceConnections::IncomingCpu if !pinned => {
                eprintln!(
                    "shardgate: listener {}: IncomingCpu needs pinned shards; balancing by the kernel's hash instead",
                    l.name
                );
                BalanceConnections::Kernel
            }
            BalanceConnections::IncomingCpu if !kernel_honours_incoming_cpu() => {
                eprintln!(
                    "shardgate: listener {}: IncomingCpu needs Linux 6.1 or later (older kernels ignore SO_INCOMING_CPU within a SO_REUSEPORT group); balancing by the kernel's hash",
                    l.name
                );
                BalanceConnections::Kernel
            }
            BalanceConnections::RoundRobin if driver == Driver::Epoll => {
                eprintln!(
                    "shardgate: listener {}: RoundRobin needs the io_uring driver; balancing by the kernel's hash instead",
                    l.name
                );
                BalanceConnections::Kernel
            }
            b => b,
        };
        if let Some(max) = l.max_connections.filter(|&m| m < cores.len()) {
            eprintln!(
                "shardgate: listener {}: max_connections {max} is fewer than the {} shards; shards {max} and up refuse every connection",
                l.name,
                cores.len()
            );
        }
        match balance {
            BalanceConnections::RoundRobin => {
                let socket = bind_listener(l.addr, false, None).map_err(fail)?;
                for sockets in out.iter_mut() {
                    sockets.push(socket.try_clone().map_err(fail)?);
                }
            }
            BalanceConnections::Kernel | BalanceConnections::IncomingCpu => {
                for (sockets, core) in out.iter_mut().zip(cores) {
                    let cpu = core.filter(|_| balance == BalanceConnections::IncomingCpu);
                    sockets.push(bind_listener(l.addr, true, cpu).map_err(fail)?);
                }
            }
        }
    }
    Ok(out)
}

/// Whether the running kernel picks a SO_REUSEPORT group's socket by
/// SO_INCOMING_CPU (Linux 6.1, "soreuseport: Fix socket selection for
/// SO_INCOMING_CPU"); unknown versions count as yes.
fn kernel_honours_incoming_cpu() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or(true, |r| release_at_least(&r, (6, 1)))
}

/// Whether a kernel release string (`6.18.44-fc`) is at least `major.minor`;
/// an unparsable one counts as yes.
fn release_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => true,
    }
}

/// A listening socket: with `reuse_port`, one of a SO_REUSEPORT group (one
/// per shard); with `incoming_cpu`, SO_INCOMING_CPU set to that core.
fn bind_listener(
    addr: std::net::SocketAddr,
    reuse_port: bool,
    incoming_cpu: Option<usize>,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_reuse_address(true)?;
    if let Some(cpu) = incoming_cpu {
        socket.set_cpu_affinity(cpu)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// What a shard thread starts from.
#[derive(Clone)]
struct ShardArgs {
    /// The shard's listening sockets, one per configured listener.
    sockets: Rc<Vec<std::net::TcpListener>>,
    id: usize,
    /// How many shards the process runs.
    shards: usize,
    core: Option<usize>,
    compiled: Arc<Compiled>,
    rx: Receiver<Control>,
    ready: Sender<(usize, Result<Driver, String>)>,
    peers: Vec<Sender<Gossip>>,
    inbox: Receiver<Gossip>,
    /// Circuit-breaker channels: to every shard, and this shard's inbox.
    breakers: (Vec<Sender<BreakerMsg>>, Receiver<BreakerMsg>),
    keeper: Sender<crate::resilience::health::Report>,
}

thread_local! {
    /// The newest config this shard thread was sent, for a restart.
    static LATEST: std::cell::RefCell<Option<Arc<Compiled>>> = const { std::cell::RefCell::new(None) };
    /// The newest target-health view this shard thread was sent, for a restart.
    static LATEST_HEALTH: std::cell::RefCell<Option<Arc<crate::resilience::health::HealthView>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs a shard, restarting it when a panic escapes its runtime (connection
/// tasks contain their own panics; this catches the rest: accept loops,
/// timers, gossip). A restart accepts on the same sockets (bound once, before
/// the shards started, with whatever is queued on them) and starts from the
/// newest config the shard was sent; the connections it had are lost.
fn run_shard(mut args: ShardArgs, wanted: Driver, fallback_allowed: bool) {
    let id = args.id;
    for restart in 0u64.. {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_runtime(args.clone(), wanted, fallback_allowed)
        }));
        let Err(payload) = run else {
            return;
        };
        let what = panic_message(payload.as_ref());
        eprintln!(
            "shardgate: shard {id} died: {what}; restarting it (restart {})",
            restart + 1
        );
        if let Some(latest) = LATEST.with(|l| l.borrow().clone()) {
            args.compiled = latest;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_runtime(args: ShardArgs, wanted: Driver, fallback_allowed: bool) {
    let id = args.id;
    let ready = args.ready.clone();
    let body = |driver: Driver| shard_main(args.clone(), driver);
    let result = match wanted {
        Driver::IoUring => match build_uring() {
            Ok(mut rt) => {
                rt.block_on(body(Driver::IoUring));
                Ok(())
            }
            Err(e) if fallback_allowed => {
                eprintln!(
                    "shardgate: shard {id}: io_uring unavailable ({e}); falling back to epoll"
                );
                build_epoll().map(|mut rt| {
                    rt.block_on(body(Driver::Epoll));
                })
            }
            Err(e) => Err(e),
        },
        Driver::Epoll => build_epoll().map(|mut rt| {
            rt.block_on(body(Driver::Epoll));
        }),
    };
    if let Err(e) = result {
        let _ = ready.send((id, Err(format!("cannot build runtime: {e}"))));
    }
}

/// io_uring setup flags. The default, `coop` (COOP_TASKRUN + TASKRUN_FLAG),
/// runs the kernel's completion work at the shard's next system call
/// without interrupting it. `defer` (SINGLE_ISSUER + DEFER_TASKRUN, Linux
/// 6.1+) runs it only when the shard enters the kernel to wait: about 3%
/// less CPU per request at 32 connections, but a shard that always has
/// tasks to run (as with 1,000 busy connections) submits without waiting,
/// and a read that had to wait for its bytes completes only when the shard
/// next waits, so some connections are served far later than others (p99
/// 2–18× `coop`'s at 1,000 connections, bench/RESULTS.md §34).
/// `SHARDGATE_URING_SETUP=plain|coop|defer` picks one for comparison. If the
/// kernel refuses the flags, a plain ring is used.
fn uring_setup(kind: &str) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    match kind {
        "coop" => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        "defer" => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
        _ => {}
    }
    b
}

fn build_uring() -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>>
{
    let wanted = std::env::var("SHARDGATE_URING_SETUP").unwrap_or_else(|_| "coop".into());
    let build = |kind: &str| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(1024)
            .uring_builder(uring_setup(kind))
            .build()
    };
    build(&wanted).or_else(|_| build("plain"))
}

fn build_epoll() -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>>
{
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
}

async fn shard_main(args: ShardArgs, driver: Driver) {
    let ShardArgs {
        sockets,
        id,
        shards,
        core,
        compiled,
        rx,
        ready,
        peers,
        inbox,
        breakers,
        keeper,
    } = args;
    let mut listeners = Vec::new();
    for (l, socket) in compiled.listeners.iter().zip(sockets.iter()) {
        match socket.try_clone().and_then(TcpListener::from_std) {
            Ok(tl) => listeners.push(tl),
            Err(e) => {
                let _ = ready.send((
                    id,
                    Err(format!("cannot listen on {} ({}): {e}", l.addr, l.name)),
                ));
                return;
            }
        }
    }
    let limiter = Limiter::new(id, peers, inbox);
    let breakers = Breakers::new(id, breakers.0, breakers.1);
    let shard = Rc::new(Shard::new(id, shards, compiled, limiter, breakers));
    {
        let mut targets = shard.targets.borrow_mut();
        targets.set_keeper(keeper);
        if let Some(view) = LATEST_HEALTH.with(|l| l.borrow().clone()) {
            targets.update(view);
        }
    }
    let gossip = shard.clone();
    monoio::spawn(async move {
        while let Err(why) = contain(gossip_loop(gossip.clone())).await {
            eprintln!("shardgate: shard {id}: gossip loop panicked: {why}; restarted");
        }
    });
    for (i, tl) in listeners.into_iter().enumerate() {
        monoio::spawn(accept_loop(shard.clone(), i, tl));
    }
    let core_text = core.map_or("unpinned".to_string(), |c| format!("core {c}"));
    eprintln!("shardgate: shard {id} on {core_text}: driver {driver}");
    let _ = ready.send((id, Ok(driver)));
    control_loop(&shard, &rx, core, driver).await;
}

/// Rate-limit gossip: answers other shards' requests for quota, takes in
/// what they gave, and wakes requests waiting for quota, every interval.
async fn gossip_loop(shard: Rc<Shard>) {
    loop {
        // Without `Local` limits there is no quota to trade: tick only for sweeps.
        let plan = &shard.config().compiled.rate_limiting;
        let local = plan
            .limits
            .iter()
            .any(|l| matches!(l.policy, crate::ratelimit::plan::PolicyPlan::Local));
        let interval = if local {
            plan.gossip_interval
        } else {
            Duration::from_millis(100)
        };
        monoio::time::sleep(interval).await;
        if shard.shutdown.is_fired() {
            return;
        }
        if shard.panic_next_tick.take() {
            #[allow(clippy::panic)]
            {
                panic!("test panic in the gossip loop");
            }
        }
        let cfg = shard.config();
        shard
            .limiter
            .borrow_mut()
            .tick(&cfg.compiled.rate_limiting, now_ns());
    }
}

async fn control_loop(
    shard: &Rc<Shard>,
    rx: &Receiver<Control>,
    core: Option<usize>,
    driver: Driver,
) {
    let mut last_reap = Instant::now();
    loop {
        monoio::time::sleep(CONTROL_TICK).await;
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Control::Reload(c) => {
                    LATEST.with(|l| *l.borrow_mut() = Some(c.clone()));
                    shard.cache.borrow_mut().keep_routes_of(&c);
                    shard.swap_config(c)
                }
                Control::Keys {
                    generation,
                    authenticator,
                    keys,
                } => shard.update_keys(generation, authenticator, keys),
                Control::Health(view) => {
                    LATEST_HEALTH.with(|l| *l.borrow_mut() = Some(view.clone()));
                    shard.targets.borrow_mut().update(view)
                }
                Control::CachePurge { purge, to } => {
                    let _ = to.send(shard.cache.borrow_mut().purge(&purge));
                }
                Control::Report { detail, to } => {
                    let _ = to.send(super::report::report(shard, core, driver, detail));
                }
                Control::Shutdown => {
                    let grace = shard.config().compiled.shutdown_grace;
                    shard.shutdown.fire();
                    shard.drain_h2();
                    let deadline = Instant::now() + grace;
                    while shard.connections.get() > 0 && Instant::now() < deadline {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                    for line in shard.accept_summary() {
                        eprintln!("shardgate: shard {}: {line}", shard.id);
                    }
                    return;
                }
            }
        }
        // Breaker transitions from other shards: applied within one tick.
        shard.breakers.borrow_mut().receive();
        let now = Instant::now();
        if now.duration_since(last_reap) >= REAP_EVERY {
            shard.reap_pools(now);
            crate::memory::give_back();
            last_reap = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release() {
        assert!(release_at_least("6.18.44-fc-v669", (6, 1)));
        assert!(release_at_least("6.1.0", (6, 1)));
        assert!(!release_at_least("6.0.19-generic", (6, 1)));
        assert!(!release_at_least("5.15.0-91-generic", (6, 1)));
        assert!(release_at_least("garbage", (6, 1)));
    }

    #[test]
    fn cpulist() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpulist("5"), Some(vec![5]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("x"), None);
    }
}
