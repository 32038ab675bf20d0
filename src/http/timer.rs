//! Timeouts of reads and writes, on one timer wheel per thread.
//!
//! Every read and write the gateway makes has a timeout, and nearly all of
//! them complete in microseconds, long before it. A runtime `Sleep` per
//! operation costs a clock read to arm it, an insertion into and a removal
//! from the runtime's wheel, and 640 bytes moved into the operation's
//! future; four of them per proxied request were about a sixth of its
//! user-space instructions. Here an operation's timeout is an entry in a
//! per-thread slab, linked into one bucket of a wheel of [`TICK`]-long
//! ticks: arming and disarming are a few stores, and the current tick comes
//! from the wheel, not the clock. One sweeper task per thread advances the
//! wheel every tick while it holds entries and sleeps while it is empty.
//! The idle timeouts of keep-alive connections are entries too ([`sleep`]):
//! about 40 bytes each, where a runtime `Sleep` would be more than the rest
//! of an idle connection.
//!
//! A timeout of `d` fires after at least `d` and usually by `d` plus three
//! ticks. The wheel's tick lags the clock by up to a tick between two runs
//! of the sweeper, and arming adds two ticks for that and for rounding; a
//! shard too busy to run its sweeper on time can move both bounds by that
//! delay.
//! The wheel is per thread because a shard is one thread: no entry is ever
//! touched by two threads.
//!
//! A thread is expected to run one monoio runtime at a time. When a runtime
//! ends, monoio leaks (does not drop) the tasks still waiting, this wheel's
//! sweeper among them, so a thread that starts another runtime afterwards
//! calls [`reset_thread`] first: the waits of the old runtime are forgotten
//! and the new runtime gets its own sweeper.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The wheel's resolution.
pub const TICK: Duration = Duration::from_millis(10);
const TICK_NS: u64 = 10_000_000;
const TICKS_PER_S: u64 = 1_000_000_000 / TICK_NS;
/// Buckets in one turn of the wheel (2.56 s); a later deadline waits in its
/// bucket for as many turns as it needs.
const SLOTS: usize = 256;
/// No entry (end of a list, or not armed).
const NIL: u32 = u32::MAX;

struct Entry {
    /// The tick at (or after) which it fires.
    due: u64,
    prev: u32,
    /// Next in its bucket; for a free entry, next on the free list.
    next: u32,
    waker: Option<Waker>,
    /// Linked in a bucket, waiting.
    linked: bool,
    /// Unlinked by the sweeper: the timeout passed.
    fired: bool,
}

struct Wheel {
    entries: Vec<Entry>,
    free: u32,
    /// First entry of each bucket (allocated on first use).
    heads: Vec<u32>,
    /// Entries linked in buckets.
    linked: usize,
    /// The instant of tick 0 (set on first use).
    origin: Option<Instant>,
    /// The current tick, as last advanced.
    now: u64,
    /// The sweeper's waker while it waits for a first entry.
    sweeper: Option<Waker>,
    /// A sweeper task is alive on this thread.
    sweeping: bool,
    /// Bumped by [`reset_thread`]: entries and sweepers of an older
    /// generation are ignored.
    generation: u64,
    /// Wakers of fired entries, woken once the wheel is released.
    due: Vec<Waker>,
}

thread_local! {
    static WHEEL: RefCell<Wheel> = const { RefCell::new(Wheel::new()) };
}

impl Wheel {
    const fn new() -> Wheel {
        Wheel {
            entries: Vec::new(),
            free: NIL,
            heads: Vec::new(),
            linked: 0,
            origin: None,
            now: 0,
            sweeper: None,
            sweeping: false,
            generation: 0,
            due: Vec::new(),
        }
    }

    fn tick_of(&mut self, at: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(at);
        let since = at.saturating_duration_since(origin);
        since
            .as_secs()
            .saturating_mul(TICKS_PER_S)
            .saturating_add(u64::from(since.subsec_nanos()) / TICK_NS)
    }

    /// Arms an entry firing `dur` from now. The current tick may be up to a
    /// tick behind the clock, and the clock up to a tick past the start of
    /// the current tick, hence the two extra ticks.
    fn arm(&mut self, dur: Duration, waker: Waker) -> u32 {
        if self.heads.is_empty() {
            self.heads = vec![NIL; SLOTS];
        }
        if self.linked == 0 {
            // The sweeper has not been advancing the wheel: read the clock.
            self.now = self.tick_of(Instant::now());
            if let Some(w) = self.sweeper.take() {
                w.wake();
            }
        }
        // In 64-bit arithmetic: a 128-bit division costs more than the rest.
        let ticks = dur
            .as_secs()
            .saturating_mul(TICKS_PER_S)
            .saturating_add(u64::from(dur.subsec_nanos()).div_ceil(TICK_NS));
        let entry = Entry {
            due: self.now.saturating_add(ticks).saturating_add(2),
            prev: NIL,
            next: NIL,
            waker: Some(waker),
            linked: false,
            fired: false,
        };
        // A free entry is reused; `free` is NIL (out of range) when there is none.
        let at = match self.entries.get_mut(self.free as usize) {
            Some(slot) => {
                let at = self.free;
                self.free = slot.next;
                *slot = entry;
                at
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.link(at);
        at
    }

    fn link(&mut self, at: u32) {
        let Some(due) = self.entries.get(at as usize).map(|e| e.due) else {
            return;
        };
        let Some(first) = self.heads.get_mut(bucket_of(due)) else {
            return;
        };
        let head = std::mem::replace(first, at);
        if let Some(h) = self.entries.get_mut(head as usize) {
            h.prev = at;
        }
        if let Some(e) = self.entries.get_mut(at as usize) {
            e.next = head;
            e.prev = NIL;
            e.linked = true;
            self.linked += 1;
        }
    }

    fn unlink(&mut self, at: u32) {
        let Some(e) = self.entries.get_mut(at as usize) else {
            return;
        };
        if !e.linked {
            return;
        }
        e.linked = false;
        let (prev, next, due) = (e.prev, e.next, e.due);
        match self.entries.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => {
                if let Some(first) = self.heads.get_mut(bucket_of(due)) {
                    *first = next;
                }
            }
        }
        if let Some(n) = self.entries.get_mut(next as usize) {
            n.prev = prev;
        }
        self.linked -= 1;
    }

    /// Unlinks (if still linked) and frees an entry.
    fn release(&mut self, at: u32) {
        self.unlink(at);
        if let Some(e) = self.entries.get_mut(at as usize) {
            e.waker = None;
            e.next = self.free;
            self.free = at;
        }
    }

    /// Advances to the tick of `now`, firing every entry due by then.
    fn advance(&mut self, now: Instant) {
        let target = self.tick_of(now);
        if target <= self.now {
            return;
        }
        let steps = (target - self.now).min(SLOTS as u64);
        for step in 1..=steps {
            let mut at = self
                .heads
                .get(bucket_of(self.now + step))
                .copied()
                .unwrap_or(NIL);
            while let Some(e) = self.entries.get(at as usize) {
                let (next, due) = (e.next, e.due);
                if due <= target {
                    self.unlink(at);
                    if let Some(e) = self.entries.get_mut(at as usize) {
                        e.fired = true;
                        if let Some(w) = e.waker.take() {
                            self.due.push(w);
                        }
                    }
                }
                at = next;
            }
        }
        self.now = target;
    }
}

fn bucket_of(due: u64) -> usize {
    (due % SLOTS as u64) as usize
}

/// Advances the thread's wheel every tick while it holds entries, until the
/// wheel is reset to another generation.
async fn sweep(generation: u64) {
    struct Alive(u64);
    impl Drop for Alive {
        // The runtime dropped this task: the next wait spawns another.
        fn drop(&mut self) {
            let _ = WHEEL.try_with(|w| {
                if let Ok(mut w) = w.try_borrow_mut() {
                    if w.generation == self.0 {
                        w.sweeping = false;
                        w.sweeper = None;
                    }
                }
            });
        }
    }
    let _alive = Alive(generation);
    let mut woken = Vec::new();
    loop {
        let current = std::future::poll_fn(|cx| {
            WHEEL.with_borrow_mut(|w| {
                if w.generation != generation {
                    Poll::Ready(false)
                } else if w.linked > 0 {
                    Poll::Ready(true)
                } else {
                    w.sweeper = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        if !current {
            return;
        }
        monoio::time::sleep(TICK).await;
        let now = Instant::now();
        WHEEL.with_borrow_mut(|w| {
            if w.generation == generation {
                w.advance(now);
                std::mem::swap(&mut w.due, &mut woken);
            }
        });
        for waker in woken.drain(..) {
            waker.wake();
        }
    }
}

/// A timer entry owned by one wait (its index and the wheel's generation);
/// disarmed when dropped.
struct Armed(u32, u64);

impl Armed {
    fn new(dur: Duration, cx: &Context<'_>) -> Armed {
        let (at, generation, spawn) = WHEEL.with_borrow_mut(|w| {
            let at = w.arm(dur, cx.waker().clone());
            let spawn = !w.sweeping;
            w.sweeping = true;
            (at, w.generation, spawn)
        });
        if spawn {
            monoio::spawn(sweep(generation));
        }
        Armed(at, generation)
    }

    /// Whether the timeout passed; otherwise keeps the wait's latest waker.
    fn fired(&self, cx: &Context<'_>) -> bool {
        WHEEL.with_borrow_mut(|w| {
            if w.generation != self.1 {
                return true;
            }
            let Some(e) = w.entries.get_mut(self.0 as usize) else {
                return true;
            };
            if e.fired {
                return true;
            }
            if !e.waker.as_ref().is_some_and(|k| k.will_wake(cx.waker())) {
                e.waker = Some(cx.waker().clone());
            }
            false
        })
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        let _ = WHEEL.try_with(|w| {
            if let Ok(mut w) = w.try_borrow_mut() {
                if w.generation == self.1 {
                    w.release(self.0);
                }
            }
        });
    }
}

/// How a [`Timed`] wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended<T> {
    /// The operation completed.
    Done(T),
    /// The timeout passed first.
    TimedOut,
    /// The stop signal completed first.
    Stopped,
}

/// Polls `op` until it completes, `dur` passes, or `stop` completes,
/// checked in that order at each wake-up. A zero `dur` gives the operation
/// one poll. Both futures are `Unpin`: pass them pinned (`pin!`).
pub fn timed<F, S>(op: F, dur: Duration, stop: S) -> Timed<F, S>
where
    F: Future + Unpin,
    S: Future<Output = ()> + Unpin,
{
    Timed {
        op,
        stop,
        dur,
        armed: None,
    }
}

/// Future of [`timed`].
pub struct Timed<F, S> {
    op: F,
    stop: S,
    dur: Duration,
    armed: Option<Armed>,
}

impl<F: Future + Unpin, S: Future<Output = ()> + Unpin> Future for Timed<F, S> {
    type Output = Ended<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(v) = Pin::new(&mut this.op).poll(cx) {
            this.armed = None;
            return Poll::Ready(Ended::Done(v));
        }
        if Pin::new(&mut this.stop).poll(cx).is_ready() {
            this.armed = None;
            return Poll::Ready(Ended::Stopped);
        }
        match &this.armed {
            None if this.dur.is_zero() => return Poll::Ready(Ended::TimedOut),
            None => this.armed = Some(Armed::new(this.dur, cx)),
            Some(a) if a.fired(cx) => {
                this.armed = None;
                return Poll::Ready(Ended::TimedOut);
            }
            Some(_) => {}
        }
        Poll::Pending
    }
}

/// Completes after `dur` (on the wheel's resolution).
pub async fn sleep(dur: Duration) {
    let _ = timed(std::future::pending::<()>(), dur, std::future::pending()).await;
}

/// The current time to the wheel's resolution: from the wheel's tick while
/// it holds entries (no clock read), otherwise from the clock. At most
/// about two ticks behind the clock; for deadlines and ages measured in
/// seconds, not for latencies.
pub fn coarse_now() -> Instant {
    WHEEL.with_borrow(|w| match w.origin {
        Some(origin) if w.linked > 0 => {
            origin + Duration::from_nanos(w.now.saturating_mul(TICK_NS))
        }
        _ => Instant::now(),
    })
}

/// Forgets this thread's waits and sweeper, for a new runtime on a thread
/// whose previous runtime ended with waits pending (see the module notes).
/// Waits of the old runtime, should they ever be polled or dropped, are
/// then ignored.
pub fn reset_thread() {
    WHEEL.with_borrow_mut(|w| {
        let generation = w.generation.wrapping_add(1);
        *w = Wheel::new();
        w.generation = generation;
    });
}

/// Entries linked in this thread's wheel (for tests and reports).
pub fn waiting() -> usize {
    WHEEL.with_borrow(|w| w.linked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_timeout_fires_after_its_duration_and_within_a_few_ticks() {
        rt().block_on(async {
            for ms in [1u64, 25, 120] {
                let start = Instant::now();
                let r = timed(
                    std::future::pending::<()>(),
                    Duration::from_millis(ms),
                    std::future::pending(),
                )
                .await;
                let took = start.elapsed();
                assert_eq!(r, Ended::TimedOut);
                assert!(
                    took >= Duration::from_millis(ms),
                    "{ms} ms fired after {took:?}"
                );
                assert!(
                    took < Duration::from_millis(ms + 500),
                    "{ms} ms fired after {took:?}"
                );
            }
            assert_eq!(waiting(), 0);
        });
    }

    #[test]
    fn a_completed_operation_leaves_no_entry_and_frees_its_slot() {
        rt().block_on(async {
            for _ in 0..1000 {
                let r = timed(
                    std::pin::pin!(monoio::time::sleep(Duration::from_micros(1))),
                    Duration::from_secs(30),
                    std::future::pending(),
                )
                .await;
                assert_eq!(r, Ended::Done(()));
            }
            assert_eq!(waiting(), 0);
            let slots = WHEEL.with_borrow(|w| w.entries.len());
            assert!(slots <= 2, "{slots} entries for one wait at a time");
        });
    }

    #[test]
    fn many_waits_fire_in_order_of_their_deadlines_across_turns() {
        rt().block_on(async {
            let start = Instant::now();
            let order = std::rc::Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            // Some deadlines past one turn of the wheel (2.56 s) are left
            // out to keep the test short; the next test covers turns.
            for (i, ms) in [90u64, 30, 60, 10, 150].into_iter().enumerate() {
                let order = order.clone();
                tasks.push(monoio::spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    order.borrow_mut().push(i);
                }));
            }
            for t in tasks {
                t.await;
            }
            assert_eq!(*order.borrow(), vec![3, 1, 2, 0, 4]);
            assert!(start.elapsed() >= Duration::from_millis(150));
        });
    }

    #[test]
    fn a_deadline_beyond_one_turn_waits_for_its_own_turn() {
        let mut w = Wheel::new();
        let origin = Instant::now();
        w.origin = Some(origin);
        let waker = std::task::Waker::noop().clone();
        // Lands in the same bucket as an entry one turn earlier.
        let far = w.arm(TICK * (SLOTS as u32 + 9), waker.clone());
        let near = w.arm(TICK * 9, waker);
        w.advance(origin + TICK * 11);
        assert!(w.entries[near as usize].fired);
        assert!(!w.entries[far as usize].fired);
        assert_eq!(w.linked, 1);
        w.advance(origin + TICK * (SLOTS as u32 + 5));
        assert!(!w.entries[far as usize].fired);
        w.advance(origin + TICK * (SLOTS as u32 + 11));
        assert!(w.entries[far as usize].fired);
        assert_eq!(w.linked, 0);
        // A jump of more than a turn visits every bucket once.
        let a = w.arm(TICK * 3, Waker::noop().clone());
        let b = w.arm(TICK * 700, Waker::noop().clone());
        w.advance(origin + TICK * (SLOTS as u32 * 5));
        assert!(w.entries[a as usize].fired && w.entries[b as usize].fired);
        w.release(a);
        w.release(b);
        w.release(near);
        w.release(far);
        assert_eq!(w.free, far);
    }

    #[test]
    fn no_timeout_fires_early_while_the_tick_lags_the_clock() {
        // The sweeper last advanced at tick 0; it runs again a tick later, so
        // a wait may be armed until almost two ticks past tick 0's start.
        let origin = Instant::now();
        for lag_ms in [0u64, 5, 9, 10, 15, 19] {
            for d_ms in [1u64, 10, 25, 100] {
                let mut w = Wheel::new();
                w.origin = Some(origin);
                w.linked = 1; // not empty: arming trusts the wheel's tick
                w.heads = vec![NIL; SLOTS];
                let at = w.arm(Duration::from_millis(d_ms), Waker::noop().clone());
                let armed_at = origin + Duration::from_millis(lag_ms);
                let just_before = armed_at + Duration::from_millis(d_ms) - Duration::from_micros(1);
                w.advance(just_before);
                assert!(
                    !w.entries[at as usize].fired,
                    "{d_ms} ms armed {lag_ms} ms into a stale tick fired early"
                );
                w.advance(armed_at + Duration::from_millis(d_ms) + 3 * TICK);
                assert!(
                    w.entries[at as usize].fired,
                    "{d_ms} ms armed {lag_ms} ms late"
                );
            }
        }
    }

    #[test]
    fn a_later_runtime_on_the_same_thread_gets_its_own_sweeper() {
        // The first runtime ends with a wait still armed and its sweeper parked.
        rt().block_on(async {
            monoio::spawn(sleep(Duration::from_secs(30)));
            sleep(Duration::from_millis(15)).await;
        });
        reset_thread();
        rt().block_on(async {
            let r = timed(
                std::future::pending::<()>(),
                Duration::from_millis(20),
                std::future::pending(),
            )
            .await;
            assert_eq!(r, Ended::TimedOut);
        });
    }

    #[test]
    fn the_stop_signal_ends_the_wait() {
        rt().block_on(async {
            let r = timed(
                std::future::pending::<()>(),
                Duration::from_secs(30),
                std::pin::pin!(monoio::time::sleep(Duration::from_millis(5))),
            )
            .await;
            assert_eq!(r, Ended::Stopped);
            assert_eq!(waiting(), 0);
        });
    }
}
