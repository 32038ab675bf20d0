//! Circuit breakers: per shard, per upstream, kept in step across shards by
//! messages.
//!
//! # Rules
//! - **Closed.** Each shard counts its own calls to the upstream in a rolling
//!   window (`window_s`, ten buckets). A failure is a connect error, a
//!   timeout, a reset, or a status in `failure_statuses` (default: 5xx). The
//!   shard trips the breaker when its window holds at least `min_requests`
//!   calls of which at least `failure_ratio` failed, or after
//!   `consecutive_failures` failures in a row.
//! - **Open.** The tripping shard opens at once and sends `Open` (with the
//!   instant it ends, `now + open_s`) to every other shard; each applies it at
//!   its next control tick (20 ms). While open a shard answers 503 without
//!   touching the upstream, with `Retry-After` = the time left open.
//! - **Half-open.** Once `open_s` has passed, each shard sees the breaker
//!   half-open on its own clock. Only one shard at a time — the *trial
//!   owner* — lets trial requests through, at most `half_open_requests`;
//!   every other shard keeps answering 503 (`Retry-After: 1`). The owner is
//!   the shard that last started a trial if that was less than one *turn*
//!   ago (trial starts are announced to every shard); otherwise the turn
//!   rotates from the tripping shard through the others, one turn each
//!   (turn = the upstream's connect timeout + timeout, at least 1 s, at most
//!   `open_s`), so a shard that gets no traffic does not keep the breaker
//!   half-open. All of the owner's trials succeeding closes the breaker
//!   (`Closed` to every shard); one failing re-opens it for `open_s`.
//! - **Conflicts.** Every transition carries an epoch (one more than the last
//!   one seen). The higher epoch wins; at the same epoch, open beats closed
//!   and the lower shard id wins, so all shards converge on one state.
//!
//! # Worst cases (how many requests reach a failing upstream)
//! - Before it trips: up to `shards × (min_requests − 1)` calls can be in
//!   every shard's window without any of them tripping (each shard counts
//!   its own), all failing.
//! - After it trips: the other shards open within one control tick (20 ms)
//!   of the tripping shard; until then they keep forwarding, so at most
//!   `(shards − 1) × (request rate per shard × 20 ms)` more calls, plus the
//!   calls already in flight when it tripped.
//! - While open: none.
//! - While half-open: `half_open_requests` per turn of the trial owner; a
//!   trial still running when the turn passes to another shard can overlap
//!   that shard's trials: at most `2 × half_open_requests` at once.
//!
//! Nothing here reads a clock: `now` is nanoseconds on a clock all shards
//! share ([`crate::ratelimit::limiter::now_ns`]).

use crossbeam_channel::{Receiver, Sender};

/// Buckets of the rolling window.
const BUCKETS: usize = 10;
/// Retry-After given by a shard that is not the trial owner.
const NOT_OWNER_RETRY_NS: u64 = 1_000_000_000;

/// Response statuses (0..=639) as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    /// No status.
    pub const EMPTY: StatusSet = StatusSet([0; 10]);

    /// Every 5xx status.
    pub fn server_errors() -> StatusSet {
        StatusSet::of(500..600)
    }

    /// The given statuses (those above 639 are left out).
    pub fn of(statuses: impl IntoIterator<Item = u16>) -> StatusSet {
        let mut s = StatusSet::EMPTY;
        for st in statuses {
            if let Some(w) = s.0.get_mut(usize::from(st / 64)) {
                *w |= 1 << (st % 64);
            }
        }
        s
    }

    /// Both sets together.
    pub fn union(self, other: StatusSet) -> StatusSet {
        let mut s = self;
        for (a, b) in s.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        s
    }

    /// True when `status` is in the set.
    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        self.0
            .get(usize::from(status / 64))
            .is_some_and(|w| w & (1 << (status % 64)) != 0)
    }
}

/// A breaker's compiled settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSpec {
    /// Calls in a shard's window before the ratio can trip it (at least 1).
    pub min_requests: u32,
    /// Failed share of the window that trips it.
    pub failure_ratio: f64,
    /// Window length in ns.
    pub window_ns: u64,
    /// Time open in ns.
    pub open_ns: u64,
    /// Trials while half-open (at least 1).
    pub half_open_requests: u32,
    /// Failures in a row that trip it.
    pub consecutive_failures: Option<u32>,
    /// Statuses counted as failures.
    pub failure_statuses: StatusSet,
    /// How long a shard keeps the trial turn, in ns.
    pub turn_ns: u64,
}

/// What a breaker looks like from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// Trial calls go through (on the owner).
    HalfOpen,
}

impl Phase {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u8 {
        match self {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        }
    }

    /// The name used in `/upstreams`.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
}

/// The answer to "may this call go to the upstream?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Yes, an ordinary call (closed breaker).
    Pass {
        /// Epoch the call was admitted in.
        epoch: u64,
    },
    /// Yes, as a trial (half-open breaker).
    Trial {
        /// Epoch the trial belongs to.
        epoch: u64,
    },
    /// No: answer 503, the breaker stays open this much longer (ns).
    Refuse {
        /// Time until the caller may try again.
        retry_after_ns: u64,
    },
}

/// A transition sent to the other shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerMsg {
    /// The breaker opened (tripped, or a trial failed).
    Open {
        /// Config generation the upstream index belongs to.
        generation: u64,
        /// Upstream index.
        upstream: usize,
        /// Transition number.
        epoch: u64,
        /// The shard that opened it.
        owner: usize,
        /// When the open period ends (ns on the shared clock).
        until: u64,
    },
    /// The breaker closed (the trials succeeded).
    Closed {
        /// Config generation.
        generation: u64,
        /// Upstream index.
        upstream: usize,
        /// Transition number.
        epoch: u64,
        /// The shard that closed it.
        owner: usize,
    },
    /// A shard started a trial.
    Trial {
        /// Config generation.
        generation: u64,
        /// Upstream index.
        upstream: usize,
        /// Epoch of the half-open period.
        epoch: u64,
        /// The shard running the trial.
        shard: usize,
        /// When it started.
        at: u64,
    },
}

/// Rolling counts of calls and failures.
#[derive(Debug, Clone, Default)]
struct Window {
    calls: [u32; BUCKETS],
    fails: [u32; BUCKETS],
    total_calls: u32,
    total_fails: u32,
    /// Absolute number of the newest bucket.
    head: u64,
}

impl Window {
    #[inline]
    fn record(&mut self, bucket: u64, failed: bool) {
        if bucket != self.head {
            self.advance(bucket);
        }
        let i = (bucket % BUCKETS as u64) as usize;
        if let (Some(c), Some(f)) = (self.calls.get_mut(i), self.fails.get_mut(i)) {
            *c = c.saturating_add(1);
            self.total_calls = self.total_calls.saturating_add(1);
            if failed {
                *f = f.saturating_add(1);
                self.total_fails = self.total_fails.saturating_add(1);
            }
        }
    }

    fn advance(&mut self, bucket: u64) {
        if bucket < self.head {
            // A clock that went back (it does not): count into the newest.
            return;
        }
        if bucket - self.head >= BUCKETS as u64 {
            *self = Window {
                head: bucket,
                ..Window::default()
            };
            return;
        }
        for b in self.head + 1..=bucket {
            let i = (b % BUCKETS as u64) as usize;
            if let (Some(c), Some(f)) = (self.calls.get_mut(i), self.fails.get_mut(i)) {
                self.total_calls = self.total_calls.saturating_sub(*c);
                self.total_fails = self.total_fails.saturating_sub(*f);
                *c = 0;
                *f = 0;
            }
        }
        self.head = bucket;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    /// Open until `until`, then half-open.
    Open,
}

/// One upstream's breaker on one shard.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    epoch: u64,
    /// The shard that made the last transition.
    owner: usize,
    /// End of the open period.
    until: u64,
    window: Window,
    consecutive: u32,
    /// The last trial started anywhere in this epoch: (shard, when).
    last_trial: Option<(usize, u64)>,
    /// Trials this shard started in its current turn, and when the turn began.
    trials_started: u32,
    trials_ok: u32,
    turn_start: u64,
    /// Transitions this shard made: to open, to half-open, to closed.
    pub transitions: [u64; 3],
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed,
            epoch: 0,
            owner: 0,
            until: 0,
            window: Window::default(),
            consecutive: 0,
            last_trial: None,
            trials_started: 0,
            trials_ok: 0,
            turn_start: 0,
            transitions: [0; 3],
        }
    }
}

impl Breaker {
    /// The phase at `now`.
    pub fn phase(&self, now: u64) -> Phase {
        match self.state {
            State::Closed => Phase::Closed,
            State::Open if now < self.until => Phase::Open,
            State::Open => Phase::HalfOpen,
        }
    }

    /// Time left open at `now` (0 unless open).
    pub fn open_left_ns(&self, now: u64) -> u64 {
        match self.phase(now) {
            Phase::Open => self.until - now,
            _ => 0,
        }
    }

    /// The shard allowed to run trials at `now` (half-open only).
    fn trial_owner(&self, spec: &BreakerSpec, now: u64, shards: usize) -> usize {
        let turn = spec.turn_ns.max(1);
        if let Some((s, at)) = self.last_trial {
            if now < at.saturating_add(turn) {
                return s;
            }
        }
        let turns = now.saturating_sub(self.until) / turn;
        let shards = shards.max(1) as u64;
        ((self.owner as u64 + turns % shards) % shards) as usize
    }

    /// May a call go to the upstream from shard `me` at `now`? A trial start
    /// is announced to the other shards through `out`.
    #[inline]
    pub fn admit(
        &mut self,
        spec: &BreakerSpec,
        now: u64,
        me: usize,
        shards: usize,
        out: &mut Option<BreakerMsg>,
    ) -> Admit {
        if self.state == State::Closed {
            return Admit::Pass { epoch: self.epoch };
        }
        if now < self.until {
            return Admit::Refuse {
                retry_after_ns: self.until - now,
            };
        }
        self.admit_half_open(spec, now, me, shards, out)
    }

    #[cold]
    fn admit_half_open(
        &mut self,
        spec: &BreakerSpec,
        now: u64,
        me: usize,
        shards: usize,
        out: &mut Option<BreakerMsg>,
    ) -> Admit {
        if self.trial_owner(spec, now, shards) != me {
            return Admit::Refuse {
                retry_after_ns: NOT_OWNER_RETRY_NS,
            };
        }
        // A new turn (or trials that never reported back): start counting again.
        if now >= self.turn_start.saturating_add(spec.turn_ns.max(1)) {
            self.turn_start = now;
            self.trials_started = 0;
            self.trials_ok = 0;
        }
        if self.trials_started >= spec.half_open_requests.max(1) {
            return Admit::Refuse {
                retry_after_ns: NOT_OWNER_RETRY_NS,
            };
        }
        self.trials_started += 1;
        if self.last_trial.is_none() {
            // The first trial of this half-open period, host-wide.
            self.transitions[1] += 1;
        }
        self.last_trial = Some((me, now));
        *out = Some(BreakerMsg::Trial {
            generation: 0,
            upstream: 0,
            epoch: self.epoch,
            shard: me,
            at: now,
        });
        Admit::Trial { epoch: self.epoch }
    }

    /// Records how an admitted call ended; a transition this causes is put
    /// in `out` for the other shards.
    #[inline]
    pub fn record(
        &mut self,
        spec: &BreakerSpec,
        admitted: Admit,
        failed: bool,
        now: u64,
        me: usize,
        out: &mut Option<BreakerMsg>,
    ) {
        match admitted {
            Admit::Pass { epoch } if epoch == self.epoch && self.state == State::Closed => {
                self.window
                    .record(now / (spec.window_ns / BUCKETS as u64).max(1), failed);
                if !failed {
                    self.consecutive = 0;
                    return;
                }
                self.consecutive = self.consecutive.saturating_add(1);
                let w = &self.window;
                let by_ratio = w.total_calls >= spec.min_requests.max(1)
                    && f64::from(w.total_fails) >= spec.failure_ratio * f64::from(w.total_calls);
                let by_run = spec
                    .consecutive_failures
                    .is_some_and(|n| self.consecutive >= n.max(1));
                if by_ratio || by_run {
                    *out = Some(self.open(spec, now, me));
                }
            }
            Admit::Trial { epoch } if epoch == self.epoch && self.state == State::Open => {
                if failed {
                    *out = Some(self.open(spec, now, me));
                    return;
                }
                self.trials_ok += 1;
                if self.trials_ok >= spec.half_open_requests.max(1) {
                    self.epoch += 1;
                    self.close(me);
                    self.transitions[2] += 1;
                    *out = Some(BreakerMsg::Closed {
                        generation: 0,
                        upstream: 0,
                        epoch: self.epoch,
                        owner: me,
                    });
                }
            }
            _ => {}
        }
    }

    fn open(&mut self, spec: &BreakerSpec, now: u64, me: usize) -> BreakerMsg {
        self.epoch += 1;
        self.state = State::Open;
        self.owner = me;
        self.until = now.saturating_add(spec.open_ns);
        self.reset_trials();
        self.transitions[0] += 1;
        BreakerMsg::Open {
            generation: 0,
            upstream: 0,
            epoch: self.epoch,
            owner: me,
            until: self.until,
        }
    }

    fn close(&mut self, owner: usize) {
        self.state = State::Closed;
        self.owner = owner;
        self.until = 0;
        self.window = Window::default();
        self.consecutive = 0;
        self.reset_trials();
    }

    fn reset_trials(&mut self) {
        self.last_trial = None;
        self.trials_started = 0;
        self.trials_ok = 0;
        self.turn_start = 0;
    }

    /// Applies a transition made by another shard.
    pub fn apply(&mut self, msg: &BreakerMsg) {
        // Order of transitions: epoch, then open over closed, then the lower shard.
        let mine = (
            self.epoch,
            self.state == State::Open,
            usize::MAX - self.owner,
        );
        match *msg {
            BreakerMsg::Open {
                epoch,
                owner,
                until,
                ..
            } => {
                if (epoch, true, usize::MAX - owner) > mine {
                    self.epoch = epoch;
                    self.state = State::Open;
                    self.owner = owner;
                    self.until = until;
                    self.reset_trials();
                }
            }
            BreakerMsg::Closed { epoch, owner, .. } => {
                if (epoch, false, usize::MAX - owner) > mine {
                    self.epoch = epoch;
                    self.close(owner);
                }
            }
            BreakerMsg::Trial {
                epoch, shard, at, ..
            } => {
                if epoch == self.epoch
                    && self.state == State::Open
                    && self.last_trial.is_none_or(|(_, t)| at >= t)
                {
                    self.last_trial = Some((shard, at));
                }
            }
        }
    }
}

impl BreakerMsg {
    /// The message addressed to `upstream` of config `generation`.
    fn stamped(self, generation: u64, upstream: usize) -> BreakerMsg {
        match self {
            BreakerMsg::Open {
                epoch,
                owner,
                until,
                ..
            } => BreakerMsg::Open {
                generation,
                upstream,
                epoch,
                owner,
                until,
            },
            BreakerMsg::Closed { epoch, owner, .. } => BreakerMsg::Closed {
                generation,
                upstream,
                epoch,
                owner,
            },
            BreakerMsg::Trial {
                epoch, shard, at, ..
            } => BreakerMsg::Trial {
                generation,
                upstream,
                epoch,
                shard,
                at,
            },
        }
    }

    fn address(&self) -> (u64, usize) {
        match *self {
            BreakerMsg::Open {
                generation,
                upstream,
                ..
            }
            | BreakerMsg::Closed {
                generation,
                upstream,
                ..
            }
            | BreakerMsg::Trial {
                generation,
                upstream,
                ..
            } => (generation, upstream),
        }
    }
}

/// The breakers of one shard, one per upstream of the running config, and
/// the channels to the other shards' breakers.
pub struct Breakers {
    me: usize,
    peers: Vec<Sender<BreakerMsg>>,
    inbox: Receiver<BreakerMsg>,
    generation: u64,
    /// Per upstream index: its name, spec and breaker (`None`: no breaker).
    list: Vec<Option<(String, BreakerSpec, Breaker)>>,
    /// Transitions sent and received (for reports).
    pub messages: [u64; 2],
}

impl Breakers {
    /// Shard `me`'s breakers; `peers[i]` reaches shard i.
    pub fn new(me: usize, peers: Vec<Sender<BreakerMsg>>, inbox: Receiver<BreakerMsg>) -> Self {
        Breakers {
            me,
            peers,
            inbox,
            generation: 0,
            list: Vec::new(),
            messages: [0; 2],
        }
    }

    /// Shards reached (this one included).
    fn shards(&self) -> usize {
        self.peers.len().max(1)
    }

    /// Takes the breakers of a new config: an upstream with the same name
    /// and the same settings keeps its state; the others start closed.
    pub fn configure<'a>(
        &mut self,
        generation: u64,
        upstreams: impl Iterator<Item = (&'a str, Option<&'a BreakerSpec>)>,
    ) {
        let mut old = std::mem::take(&mut self.list);
        self.generation = generation;
        self.list = upstreams
            .map(|(name, spec)| {
                let spec = spec?;
                let kept = old
                    .iter_mut()
                    .find(|o| o.as_ref().is_some_and(|(n, s, _)| n == name && s == spec))
                    .and_then(Option::take)
                    .map_or_else(Breaker::default, |(_, _, b)| b);
                Some((name.to_string(), spec.clone(), kept))
            })
            .collect();
    }

    /// May a call go to upstream `up`? (Always, without a breaker.)
    #[inline]
    pub fn admit(&mut self, up: usize, now: u64) -> Option<Admit> {
        let shards = self.shards();
        let (_, spec, b) = self.list.get_mut(up)?.as_mut()?;
        let mut out = None;
        let a = b.admit(spec, now, self.me, shards, &mut out);
        if let Some(m) = out {
            self.send(m.stamped(self.generation, up));
        }
        Some(a)
    }

    /// Records how a call admitted by [`Breakers::admit`] ended.
    #[inline]
    pub fn record(&mut self, up: usize, admitted: Admit, outcome: Outcome, now: u64) {
        let Some(Some((_, spec, b))) = self.list.get_mut(up) else {
            return;
        };
        let failed = match outcome {
            Outcome::Failed => true,
            Outcome::Status(s) => spec.failure_statuses.contains(s),
        };
        let mut out = None;
        b.record(spec, admitted, failed, now, self.me, &mut out);
        if let Some(m) = out {
            self.send(m.stamped(self.generation, up));
        }
    }

    #[cold]
    fn send(&mut self, msg: BreakerMsg) {
        for (i, p) in self.peers.iter().enumerate() {
            if i != self.me {
                let _ = p.send(msg);
                self.messages[0] += 1;
            }
        }
    }

    /// Applies the transitions other shards sent (at each control tick).
    pub fn receive(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            self.messages[1] += 1;
            let (generation, up) = msg.address();
            if generation != self.generation {
                continue;
            }
            if let Some(Some((_, _, b))) = self.list.get_mut(up) {
                b.apply(&msg);
            }
        }
    }

    /// Each breaker's upstream name, phase at `now`, time left open and
    /// transitions made by this shard.
    pub fn report(&self, now: u64) -> Vec<BreakerReport> {
        self.list
            .iter()
            .flatten()
            .map(|(name, _, b)| BreakerReport {
                upstream: name.clone(),
                phase: b.phase(now),
                open_left_ns: b.open_left_ns(now),
                transitions: b.transitions,
            })
            .collect()
    }
}

/// How a call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connect error, timeout or reset.
    Failed,
    /// A response with this status.
    Status(u16),
}

/// One breaker as a shard reports it.
#[derive(Debug, Clone)]
pub struct BreakerReport {
    /// Upstream name.
    pub upstream: String,
    /// Phase now.
    pub phase: Phase,
    /// Time left open, ns.
    pub open_left_ns: u64,
    /// Transitions this shard made: to open, to half-open, to closed.
    pub transitions: [u64; 3],
}

/// The host-wide view of every breaker from the shards' reports: the most
/// open phase any shard sees (open, then half-open, then closed), the
/// longest time left open, and the transitions of all shards added up.
pub fn merge_reports<'a>(
    shards: impl Iterator<Item = &'a Vec<BreakerReport>>,
) -> Vec<BreakerReport> {
    let rank = |p: Phase| match p {
        Phase::Closed => 0,
        Phase::HalfOpen => 1,
        Phase::Open => 2,
    };
    let mut out: Vec<BreakerReport> = Vec::new();
    for r in shards.flatten() {
        match out.iter_mut().find(|m| m.upstream == r.upstream) {
            Some(m) => {
                if rank(r.phase) > rank(m.phase) {
                    m.phase = r.phase;
                }
                m.open_left_ns = m.open_left_ns.max(r.open_left_ns);
                for (a, b) in m.transitions.iter_mut().zip(r.transitions) {
                    *a += b;
                }
            }
            None => out.push(r.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn spec() -> BreakerSpec {
        BreakerSpec {
            min_requests: 4,
            failure_ratio: 0.5,
            window_ns: 10 * S,
            open_ns: 5 * S,
            half_open_requests: 2,
            consecutive_failures: None,
            failure_statuses: StatusSet::server_errors(),
            turn_ns: S,
        }
    }

    fn call(b: &mut Breaker, sp: &BreakerSpec, now: u64, me: usize, failed: bool) -> Admit {
        let mut out = None;
        let a = b.admit(sp, now, me, 4, &mut out);
        if !matches!(a, Admit::Refuse { .. }) {
            b.record(sp, a, failed, now, me, &mut out);
        }
        a
    }

    #[test]
    fn statuses() {
        let s = StatusSet::server_errors();
        assert!(s.contains(500) && s.contains(599));
        assert!(!s.contains(499) && !s.contains(600) && !s.contains(0));
        let s = StatusSet::of([502, 429, 9999]);
        assert!(s.contains(502) && s.contains(429) && !s.contains(503));
    }

    #[test]
    fn trips_on_ratio_only_after_min_requests() {
        let sp = spec();
        let mut b = Breaker::default();
        for i in 0..3 {
            call(&mut b, &sp, i, 0, true);
            assert_eq!(b.phase(i), Phase::Closed, "after {} failures", i + 1);
        }
        let mut out = None;
        let a = b.admit(&sp, 3, 0, 4, &mut out);
        b.record(&sp, a, true, 3, 0, &mut out);
        assert_eq!(b.phase(4), Phase::Open);
        assert!(
            matches!(out, Some(BreakerMsg::Open { until, owner: 0, epoch: 1, .. }) if until == 3 + 5 * S)
        );
        assert_eq!(
            b.admit(&sp, 4 * S, 0, 4, &mut None),
            Admit::Refuse {
                retry_after_ns: S + 3
            }
        );
    }

    #[test]
    fn successes_keep_it_closed_and_the_window_rolls() {
        let sp = spec();
        let mut b = Breaker::default();
        // 3 failures, 4 successes: 3/7 < 0.5.
        for i in 0..4 {
            call(&mut b, &sp, i, 0, false);
        }
        for i in 0..3 {
            call(&mut b, &sp, 10 + i, 0, true);
        }
        assert_eq!(b.phase(20), Phase::Closed);
        // Eleven seconds later the old calls have left the window: 4 new
        // failures trip it, 3 do not.
        for i in 0..3 {
            call(&mut b, &sp, 11 * S + i, 0, true);
        }
        assert_eq!(b.phase(11 * S + 5), Phase::Closed);
        call(&mut b, &sp, 11 * S + 5, 0, true);
        assert_eq!(b.phase(11 * S + 6), Phase::Open);
    }

    #[test]
    fn consecutive_failures_trip_before_the_ratio() {
        let sp = BreakerSpec {
            min_requests: 100,
            consecutive_failures: Some(3),
            ..spec()
        };
        let mut b = Breaker::default();
        call(&mut b, &sp, 0, 0, true);
        call(&mut b, &sp, 1, 0, true);
        call(&mut b, &sp, 2, 0, false);
        call(&mut b, &sp, 3, 0, true);
        call(&mut b, &sp, 4, 0, true);
        assert_eq!(b.phase(5), Phase::Closed);
        call(&mut b, &sp, 5, 0, true);
        assert_eq!(b.phase(6), Phase::Open);
    }

    fn tripped(sp: &BreakerSpec, me: usize) -> Breaker {
        let mut b = Breaker::default();
        for i in 0..4 {
            call(&mut b, sp, i, me, true);
        }
        assert_eq!(b.phase(10), Phase::Open);
        b
    }

    #[test]
    fn half_open_trials_close_it() {
        let sp = spec();
        let mut b = tripped(&sp, 0);
        let t = 3 + 5 * S;
        let mut out = None;
        let a1 = b.admit(&sp, t, 0, 4, &mut out);
        assert_eq!(a1, Admit::Trial { epoch: 1 });
        assert!(matches!(out, Some(BreakerMsg::Trial { shard: 0, .. })));
        let a2 = b.admit(&sp, t + 1, 0, 4, &mut None);
        assert_eq!(a2, Admit::Trial { epoch: 1 });
        // Only two trials at once.
        assert!(matches!(
            b.admit(&sp, t + 2, 0, 4, &mut None),
            Admit::Refuse { .. }
        ));
        let mut out = None;
        b.record(&sp, a1, false, t + 3, 0, &mut out);
        assert_eq!(out, None);
        assert_eq!(b.phase(t + 3), Phase::HalfOpen);
        b.record(&sp, a2, false, t + 4, 0, &mut out);
        assert!(matches!(out, Some(BreakerMsg::Closed { epoch: 2, .. })));
        assert_eq!(b.phase(t + 5), Phase::Closed);
        assert_eq!(b.transitions, [1, 1, 1]);
    }

    #[test]
    fn failed_trial_reopens() {
        let sp = spec();
        let mut b = tripped(&sp, 0);
        let t = 3 + 5 * S;
        let a = b.admit(&sp, t, 0, 4, &mut None);
        let mut out = None;
        b.record(&sp, a, true, t + 10, 0, &mut out);
        assert!(
            matches!(out, Some(BreakerMsg::Open { epoch: 2, until, .. }) if until == t + 10 + 5 * S)
        );
        assert_eq!(b.phase(t + 11), Phase::Open);
    }

    #[test]
    fn other_shards_follow_and_only_the_owner_runs_trials() {
        let sp = spec();
        let mut out = None;
        let mut b0 = Breaker::default();
        for i in 0..4 {
            let a = b0.admit(&sp, i, 2, 4, &mut None);
            b0.record(&sp, a, true, i, 2, &mut out);
        }
        let open = out.take().unwrap();
        let mut b1 = Breaker::default();
        b1.apply(&open);
        assert_eq!(b1.phase(10), Phase::Open);
        assert_eq!(b1.open_left_ns(3 + S), 4 * S);
        // Half-open: shard 2 (it tripped) has the first turn; shard 1 refuses.
        let t = 3 + 5 * S;
        assert!(matches!(
            b1.admit(&sp, t, 1, 4, &mut None),
            Admit::Refuse { .. }
        ));
        // Shard 2 got no traffic: after one turn it is shard 3's, then shard 0's.
        assert_eq!(b1.trial_owner(&sp, t + S, 4), 3);
        assert_eq!(b1.trial_owner(&sp, t + 2 * S, 4), 0);
        assert_eq!(b1.trial_owner(&sp, t + 3 * S, 4), 1);
        let a = b1.admit(&sp, t + 3 * S, 1, 4, &mut out);
        assert_eq!(a, Admit::Trial { epoch: 1 });
        // Its trial start pins the turn on every shard that hears of it.
        b0.apply(&out.take().unwrap());
        assert!(matches!(
            b0.admit(&sp, t + 3 * S + S / 2, 2, 4, &mut None),
            Admit::Refuse { .. }
        ));
        b1.record(&sp, a, false, t + 3 * S + 1, 1, &mut out);
        let a = b1.admit(&sp, t + 3 * S + 2, 1, 4, &mut out);
        b1.record(&sp, a, false, t + 3 * S + 3, 1, &mut out);
        let closed = out.take().unwrap();
        assert!(matches!(closed, BreakerMsg::Closed { owner: 1, .. }));
        b0.apply(&closed);
        assert_eq!(b0.phase(t + 4 * S), Phase::Closed);
        // A stale open of the old epoch does not reopen it.
        b0.apply(&open);
        assert_eq!(b0.phase(t + 4 * S), Phase::Closed);
    }

    #[test]
    fn concurrent_trips_converge_on_the_lower_shard() {
        let sp = spec();
        let mut a = tripped(&sp, 1);
        let mut b = Breaker::default();
        for i in 0..4 {
            call(&mut b, &sp, 100 + i, 3, true);
        }
        let (ma, mb) = (
            BreakerMsg::Open {
                generation: 0,
                upstream: 0,
                epoch: 1,
                owner: 1,
                until: 3 + 5 * S,
            },
            BreakerMsg::Open {
                generation: 0,
                upstream: 0,
                epoch: 1,
                owner: 3,
                until: 103 + 5 * S,
            },
        );
        a.apply(&mb);
        b.apply(&ma);
        assert_eq!((a.owner, a.until), (1, 3 + 5 * S));
        assert_eq!((b.owner, b.until), (1, 3 + 5 * S));
    }

    #[test]
    fn outcomes_from_before_a_transition_are_ignored() {
        let sp = spec();
        let mut b = Breaker::default();
        let early = b.admit(&sp, 0, 0, 4, &mut None);
        let mut b = tripped(&sp, 0);
        // Closed again by another shard, epoch 2.
        b.apply(&BreakerMsg::Closed {
            generation: 0,
            upstream: 0,
            epoch: 2,
            owner: 1,
        });
        for _ in 0..10 {
            b.record(&sp, early, true, 20, 0, &mut None);
        }
        assert_eq!(b.phase(21), Phase::Closed);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The breaker trips exactly when a naive count of the same
            /// window (the last ten one-second buckets) first meets the rule.
            #[test]
            fn trips_when_the_naive_window_says_so(
                steps in proptest::collection::vec((0u64..2_500_000_000, any::<bool>()), 1..200)
            ) {
                let sp = BreakerSpec { min_requests: 5, window_ns: 10 * S, ..spec() };
                let mut b = Breaker::default();
                let mut seen: Vec<(u64, bool)> = Vec::new();
                let mut now = 0u64;
                for (dt, failed) in steps {
                    now += dt;
                    let mut out = None;
                    let a = b.admit(&sp, now, 0, 1, &mut out);
                    prop_assert_eq!(a, Admit::Pass { epoch: 0 });
                    b.record(&sp, a, failed, now, 0, &mut out);
                    seen.push((now, failed));
                    let bucket = now / S;
                    let live: Vec<&(u64, bool)> =
                        seen.iter().filter(|(t, _)| t / S + 10 > bucket).collect();
                    let calls = live.len() as f64;
                    let fails = live.iter().filter(|(_, f)| *f).count() as f64;
                    let naive = failed && calls >= 5.0 && fails >= 0.5 * calls;
                    prop_assert_eq!(b.phase(now) == Phase::Open, naive);
                    if naive {
                        break;
                    }
                }
            }

            /// Shards that hear the same transitions in any order end in the same state.
            #[test]
            fn transitions_converge_in_any_order(
                msgs in proptest::collection::vec((1u64..6, 0usize..4, any::<bool>()), 1..12),
                seed in any::<u64>(),
            ) {
                let mut list: Vec<BreakerMsg> = Vec::new();
                for (epoch, owner, open) in msgs {
                    // One transition per shard and epoch.
                    if list.iter().any(|m| matches!(*m,
                        BreakerMsg::Open { epoch: e, owner: o, .. } | BreakerMsg::Closed { epoch: e, owner: o, .. }
                        if e == epoch && o == owner)) {
                        continue;
                    }
                    list.push(if open {
                        BreakerMsg::Open { generation: 0, upstream: 0, epoch, owner, until: epoch * 100 + owner as u64 }
                    } else {
                        BreakerMsg::Closed { generation: 0, upstream: 0, epoch, owner }
                    });
                }
                let mut shuffled = list.clone();
                let mut x = seed | 1;
                for i in (1..shuffled.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    shuffled.swap(i, (x % (i as u64 + 1)) as usize);
                }
                let (mut a, mut b) = (Breaker::default(), Breaker::default());
                for m in &list {
                    a.apply(m);
                }
                for m in &shuffled {
                    b.apply(m);
                }
                prop_assert_eq!((a.epoch, a.state, a.owner, a.until), (b.epoch, b.state, b.owner, b.until));
            }
        }
    }
}
