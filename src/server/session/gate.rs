//! [`Gated`]: a long-lived future that is polled again only after it woke its task.
//!
//! A line session waits on a few things that almost never happen (shutdown, a reload, the
//! writer failing) every time it waits for input. Polling them is not free even once they
//! are registered: the shutdown token checks its flag under a mutex and its `Notify`
//! checks the waiter under another, both shared by every connection, so each poll moves
//! contended cache lines between the cores. [`Gated`] gives the inner future a waker of
//! its own that records the wake-up and then wakes the task; until that waker fires the
//! inner future is not polled at all (the same idea as `FuturesUnordered`'s per-future
//! wakers).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Polls `F` only when its own waker has fired since the last poll (or it is new).
pub(super) struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
    /// The waker handed to `inner`: wakes the gate.
    waker: Waker,
}

/// Shared by a [`Gated`] and the waker it hands to its inner future.
#[derive(Debug)]
struct Gate {
    /// The inner future woke (or was never polled): poll it next time.
    fired: AtomicBool,
    /// The task to wake when the inner future wakes.
    task: Mutex<Option<Waker>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<F: Future> Gated<F> {
    pub(super) fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Gated {
            inner: Box::pin(inner),
            waker: Waker::from(gate.clone()),
            gate,
        }
    }

    /// Replaces the inner future (polled at the next poll).
    pub(super) fn set(&mut self, inner: F) {
        self.inner.set(inner);
        self.gate.fired.store(true, Ordering::Release);
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        {
            // A connection's task keeps its waker: this is one uncontended lock and a
            // comparison, except the first time.
            let mut task = this
                .gate
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        // A wake-up that comes after this swap sets the flag again and wakes the task, so
        // none is lost.
        if !this.gate.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn wakes_and_completes_once_the_inner_future_does() {
        let notify = Arc::new(Notify::new());
        let mut gated = Gated::new({
            let notify = notify.clone();
            async move { notify.notified().await }
        });
        // Not ready: the first poll registers the inner future.
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut gated)
            .await
            .is_err());
        // Skipped while its waker has not fired, still pending.
        assert!(futures_poll_once(&mut gated).await.is_pending());
        notify.notify_one();
        tokio::time::timeout(Duration::from_secs(5), &mut gated)
            .await
            .expect("the gated future completes after its wake-up");
    }

    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }
}
