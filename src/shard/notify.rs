//! A shard-local, one-shot broadcast: every waiter wakes once it is fired.
//! Waiters deregister when dropped, so the table stays as small as the
//! number of futures currently waiting.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Fired once (e.g. on shutdown); waiting after that returns at once.
#[derive(Default)]
pub struct Notify {
    fired: Cell<bool>,
    next: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl Notify {
    /// Fires, waking every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, w) in waiters {
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
    key: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.n.fired.get() {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(k) => k,
            None => {
                let k = self.n.next.get();
                self.n.next.set(k + 1);
                self.key = Some(k);
                k
            }
        };
        self.n.waiters.borrow_mut().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.n.waiters.borrow_mut().remove(&k);
        }
    }
}
