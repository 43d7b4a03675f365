//! [`Gated`]: a long-lived future that is polled again only after it woke its task.
//!
//! A line session waits on a few things that almost never happen (shutdown, a reload, the
//! writer failing) every time it waits for input; a proxied stream races its byte pump
//! against its timers and the shutdown signal on every read and write. Polling those is
//! not free even once they are registered: the shutdown token checks its flag under a
//! mutex and its `Notify` checks the waiter under another, both shared by every connection,
//! so each poll moves contended cache lines between the cores. [`Gated`] gives the inner
//! future a waker of its own that records the wake-up and then wakes the task; until that
//! waker fires the inner future is not polled at all (the same idea as
//! `FuturesUnordered`'s per-future wakers).
//!
//! Only `std`: it sits in `core` so that both the backend (proxied streams) and the server
//! (line sessions) can use it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Polls `F` only when its own waker has fired since the last poll (or it is new).
pub struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
    /// The waker handed to `inner`: wakes the gate.
    waker: Waker,
    /// The task waker last stored in `gate.task`, kept here to compare without the lock.
    known: Option<Waker>,
}

impl<F> std::fmt::Debug for Gated<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gated")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
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
    /// Wraps `inner`; its first poll polls `inner`.
    pub fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Gated {
            inner: Box::pin(inner),
            waker: Waker::from(gate.clone()),
            gate,
            known: None,
        }
    }

    /// Replaces the inner future (polled at the next poll).
    pub fn set(&mut self, inner: F) {
        self.inner.set(inner);
        self.gate.fired.store(true, Ordering::Release);
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // A connection's task keeps its waker: usually one comparison, no lock.
        if !this.known.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            *this
                .gate
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
            this.known = Some(waker);
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

    /// A future that counts its polls and never completes.
    struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_neighbour_does_not_poll_it_again() {
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let feeder = tokio::spawn(async move {
            for i in 0..100 {
                tx.send(i).unwrap();
                tokio::task::yield_now().await;
            }
        });
        let busy = async {
            let mut sum = 0;
            while let Some(i) = rx.recv().await {
                sum += i;
            }
            sum
        };
        let mut gated = Gated::new(Counted(&polls));
        let sum = tokio::select! {
            biased;
            sum = busy => sum,
            _ = &mut gated => unreachable!("never completes"),
        };
        assert_eq!(sum, 4950);
        feeder.await.unwrap();
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, to register");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_timer_wins_over_a_busy_neighbour() {
        let busy = async {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let mut gated = Gated::new(tokio::time::sleep(Duration::from_millis(50)));
        let started = tokio::time::Instant::now();
        tokio::select! {
            biased;
            _ = busy => unreachable!(),
            _ = &mut gated => {}
        }
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_wake_from_another_thread_completes_it() {
        let token = tokio_util::sync::CancellationToken::new();
        let cancel = token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            cancel.cancel();
        });
        Gated::new(token.cancelled()).await;
    }

    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }
}
