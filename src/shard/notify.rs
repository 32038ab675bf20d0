//! A shard-local, one-shot broadcast: every waiter wakes once it is fired.
//! Waiters live in a slab and deregister when dropped, so the table stays as
//! small as the number of futures waiting, and a wait costs no hashing
//! (every idle keep-alive connection waits on it between requests).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Slab {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// Fired once (e.g. on shutdown); waiting after that returns at once.
#[derive(Default)]
pub struct Notify {
    fired: Cell<bool>,
    waiters: RefCell<Slab>,
}

impl Notify {
    /// Fires, waking every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        let slots = std::mem::take(&mut self.waiters.borrow_mut().slots);
        for w in slots.into_iter().flatten() {
            w.wake();
        }
    }

    /// True once fired.
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Completes when fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait { n: self, key: None }
    }
}

/// Future returned by [`Notify::wait`].
pub struct Wait<'a> {
    n: &'a Notify,
    key: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.n.fired.get() {
            return Poll::Ready(());
        }
        let mut slab = self.n.waiters.borrow_mut();
        match self.key {
            Some(k) => {
                if let Some(slot) = slab.slots.get_mut(k) {
                    *slot = Some(cx.waker().clone());
                }
            }
            None => {
                let waker = Some(cx.waker().clone());
                let free = slab.free.pop();
                let k = match free.and_then(|k| slab.slots.get_mut(k).map(|slot| (k, slot))) {
                    Some((k, slot)) => {
                        *slot = waker;
                        k
                    }
                    None => {
                        slab.slots.push(waker);
                        slab.slots.len() - 1
                    }
                };
                drop(slab);
                self.key = Some(k);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            let mut slab = self.n.waiters.borrow_mut();
            if let Some(slot) = slab.slots.get_mut(k) {
                *slot = None;
                slab.free.push(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_waiters_and_reuses_slots() {
        let n = Notify::default();
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            let mut w = Box::pin(n.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            n.waiters.borrow().slots.len(),
            1,
            "dropped waiters free their slot"
        );
        let mut w = Box::pin(n.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        n.fire();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }
}
