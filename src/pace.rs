//! Pacing for long control-plane work: loading, checking and compiling a
//! large config on reload, and freeing the config it replaced.
//!
//! A thread that opts in with [`enable`] sleeps for a moment after every
//! stretch of work, at the [`point`]s that this work passes (one per route,
//! about). Background threads run at `SCHED_IDLE`, so a shard that wakes up
//! preempts them at once; but a shard that was preempted by some other task
//! and is waiting to run again can find the background thread picked
//! instead, and then waits until it gives the core back: up to a scheduler
//! tick (4 ms at HZ=250) without pacing, one stretch with it. Threads that
//! did not opt in (`shardgate check`, the first load) pass the points at the
//! cost of a thread-local read. A resting point also acts on a deadline set
//! with [`set_deadline`] (the reload thread's way out of `SCHED_IDLE` when
//! it has waited too long for CPU).

use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
struct Pace {
    work: Duration,
    rest: Duration,
    since: Instant,
}

/// When, and what to call then (see [`set_deadline`]).
type Deadline = Option<(Instant, fn())>;

thread_local! {
    static PACE: Cell<Option<Pace>> = const { Cell::new(None) };
    static DEADLINE: Cell<Deadline> = const { Cell::new(None) };
}

/// Until [`clear_deadline`], the first [`point`] that rests after `at`
/// calls `then` (once): for work that has waited too long at a low priority.
pub fn set_deadline(at: Instant, then: fn()) {
    DEADLINE.with(|d| d.set(Some((at, then))));
}

/// Cancels [`set_deadline`].
pub fn clear_deadline() {
    DEADLINE.with(|d| d.set(None));
}

/// Calls the deadline's action if it is due.
fn check_deadline() {
    DEADLINE.with(|d| {
        if let Some((at, then)) = d.get() {
            if Instant::now() >= at {
                d.set(None);
                then();
            }
        }
    });
}

/// From now on, the calling thread sleeps `rest` at the first [`point`]
/// after each `work` of running.
pub fn enable(work: Duration, rest: Duration) {
    PACE.with(|p| {
        p.set(Some(Pace {
            work,
            rest,
            since: Instant::now(),
        }))
    });
}

/// A place where long work may pause (see the module documentation).
#[inline]
pub fn point() {
    PACE.with(|p| {
        if let Some(mut pace) = p.get() {
            if pace.since.elapsed() >= pace.work {
                check_deadline();
                std::thread::sleep(pace.rest);
                pace.since = Instant::now();
                p.set(Some(pace));
            }
        }
    });
}

/// Drops the items of `items` one at a time, passing a [`point`] after each.
pub fn drop_each<T>(items: Vec<T>) {
    for item in items {
        drop(item);
        point();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_deadline_acts_once_at_a_resting_point_and_a_cleared_one_never() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        fn count() {
            CALLS.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::spawn(|| {
            enable(Duration::ZERO, Duration::from_micros(1));
            set_deadline(Instant::now() + Duration::from_secs(3600), count);
            point();
            assert_eq!(CALLS.load(Ordering::SeqCst), 0, "not due yet");
            set_deadline(Instant::now(), count);
            point();
            point();
            assert_eq!(CALLS.load(Ordering::SeqCst), 1, "due: once");
            set_deadline(Instant::now(), count);
            clear_deadline();
            point();
            assert_eq!(CALLS.load(Ordering::SeqCst), 1, "cleared");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_enabled_thread_rests_at_points() {
        std::thread::spawn(|| {
            enable(Duration::ZERO, Duration::from_millis(2));
            let t = Instant::now();
            for _ in 0..5 {
                point();
            }
            assert!(t.elapsed() >= Duration::from_millis(10));
        })
        .join()
        .unwrap();
    }
}
