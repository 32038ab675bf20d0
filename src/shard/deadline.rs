//! Shard-local deadlines for long waits, all served by one timer.
//!
//! An idle keep-alive connection waits for its next request for up to its
//! listener's `idle_timeout`. Giving each of them a runtime timer would put
//! a `monoio::time::Sleep` in every idle connection's task: 640 bytes,
//! cache-line padded for a multi-threaded timer, more than the rest of an
//! idle connection together. Here a waiting connection holds a key into the
//! shard's ordered table instead (an entry of about 40 bytes), and one
//! sweeper task per shard sleeps until the earliest deadline and wakes
//! every waiter whose deadline has passed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// The deadlines of one shard's waiters, in order.
#[derive(Default)]
pub struct Deadlines {
    /// (deadline, sequence number) → the waiter's waker.
    table: RefCell<BTreeMap<(Instant, u64), Option<Waker>>>,
    seq: Cell<u64>,
    /// Set when the earliest deadline moved earlier; the sweeper re-arms.
    moved: Cell<bool>,
    sweeper: RefCell<Option<Waker>>,
}

impl Deadlines {
    /// Completes at `when` (or at once if it has passed).
    pub fn at(&self, when: Instant) -> Deadline<'_> {
        Deadline {
            table: self,
            when,
            key: None,
        }
    }

    /// Waiters registered right now.
    pub fn waiting(&self) -> usize {
        self.table.borrow().len()
    }

    /// Wakes every waiter whose deadline has passed, until the shard stops;
    /// spawned once per shard.
    pub async fn sweep(&self) {
        loop {
            let first = self.table.borrow().keys().next().map(|k| k.0);
            match first {
                None => self.moved().await,
                Some(at) => {
                    let now = Instant::now();
                    if at > now {
                        monoio::select! {
                            _ = monoio::time::sleep(at - now) => {}
                            _ = self.moved() => continue,
                        }
                    }
                }
            }
            self.fire_due(Instant::now());
        }
    }

    /// Removes and wakes the waiters due at `now`.
    fn fire_due(&self, now: Instant) {
        loop {
            let due = {
                let mut table = self.table.borrow_mut();
                match table.first_entry() {
                    Some(e) if e.key().0 <= now => e.remove(),
                    _ => break,
                }
            };
            if let Some(w) = due {
                w.wake();
            }
        }
    }

    /// Completes once the earliest deadline has moved earlier (or the
    /// first one arrived in an empty table).
    fn moved(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.moved.replace(false) {
                Poll::Ready(())
            } else {
                *self.sweeper.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    fn register(&self, when: Instant, waker: Waker) -> (Instant, u64) {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let key = (when, seq);
        let earliest = {
            let mut table = self.table.borrow_mut();
            table.insert(key, Some(waker));
            table.keys().next() == Some(&key)
        };
        if earliest {
            self.moved.set(true);
            if let Some(w) = self.sweeper.borrow_mut().take() {
                w.wake();
            }
        }
        key
    }
}

/// Future of [`Deadlines::at`]; dropping it unregisters the wait.
pub struct Deadline<'a> {
    table: &'a Deadlines,
    when: Instant,
    key: Option<(Instant, u64)>,
}

impl Future for Deadline<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.key {
            None => {
                if Instant::now() >= self.when {
                    return Poll::Ready(());
                }
                let key = self.table.register(self.when, cx.waker().clone());
                self.key = Some(key);
                Poll::Pending
            }
            Some(key) => {
                let mut table = self.table.table.borrow_mut();
                match table.get_mut(&key) {
                    // Still waiting: keep the latest waker.
                    Some(slot) => {
                        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            *slot = Some(cx.waker().clone());
                        }
                        Poll::Pending
                    }
                    // The sweeper removed it: due.
                    None => {
                        drop(table);
                        self.key = None;
                        Poll::Ready(())
                    }
                }
            }
        }
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table.table.borrow_mut().remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    /// A table with its sweeper running (inside a runtime).
    fn swept() -> Rc<Deadlines> {
        let d = Rc::new(Deadlines::default());
        let sweeper = d.clone();
        monoio::spawn(async move { sweeper.sweep().await });
        d
    }

    fn run<F: Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(f)
    }

    #[test]
    fn waiters_complete_in_deadline_order_and_leave_the_table() {
        run(async {
            let d = swept();
            let start = Instant::now();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            // Registered latest-first, so every new one is the earliest.
            for ms in [120u64, 80, 40] {
                let (d, order) = (d.clone(), order.clone());
                tasks.push(monoio::spawn(async move {
                    d.at(start + Duration::from_millis(ms)).await;
                    order.borrow_mut().push((ms, start.elapsed()));
                }));
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(d.waiting(), 3);
            for t in tasks {
                t.await;
            }
            let order = order.borrow();
            let fired: Vec<u64> = order.iter().map(|(ms, _)| *ms).collect();
            assert_eq!(fired, [40, 80, 120]);
            for (ms, at) in order.iter() {
                assert!(*at >= Duration::from_millis(*ms), "{ms} ms fired at {at:?}");
            }
            assert_eq!(d.waiting(), 0);
        });
    }

    #[test]
    fn a_dropped_wait_leaves_the_table_and_a_passed_deadline_is_ready_at_once() {
        run(async {
            let d = swept();
            let far = d.at(Instant::now() + Duration::from_secs(60));
            let mut far = Box::pin(far);
            let woke = std::future::poll_fn(|cx| Poll::Ready(far.as_mut().poll(cx))).await;
            assert!(woke.is_pending());
            assert_eq!(d.waiting(), 1);
            drop(far);
            assert_eq!(d.waiting(), 0);
            d.at(Instant::now()).await;
            assert_eq!(d.waiting(), 0);
        });
    }
}
