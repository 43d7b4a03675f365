//! Racing a busy future against a rarely-ready one without polling the latter every time.
//!
//! A proxied connection races its byte pump (woken on every read and write) against its
//! timers and the shutdown signal (ready once in a connection's life, if ever). `select!`
//! polls every branch on every wake-up: per proxied request that is a timer poll and a lock
//! of the shutdown token's waiter list, a lock shared by every connection. [`race`] polls
//! the side future only when its own waker has fired, as `FuturesUnordered` does for its
//! members: the side future gets a waker of its own that raises a flag and then wakes the
//! task.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Which future finished first.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Either<A, B> {
    Main(A),
    Side(B),
}

/// The side future's waker: raises `woken`, then wakes the task.
#[derive(Debug, Default)]
struct SideWaker {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for SideWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// Runs `main` and `side` until one completes; `main` is polled on every wake-up (and first),
/// `side` only on the first poll and after its own waker fired.
pub(super) async fn race<A, B>(
    main: impl Future<Output = A>,
    side: impl Future<Output = B>,
) -> Either<A, B> {
    let mut main = pin!(main);
    let mut side = pin!(side);
    let shared = Arc::new(SideWaker::default());
    let side_waker = Waker::from(shared.clone());
    // The task waker `shared` holds, kept here too so that it is replaced only on change.
    let mut known: Option<Waker> = None;
    let mut first = true;
    poll_fn(|cx: &mut Context<'_>| {
        if !known.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
            known = Some(waker);
        }
        if let Poll::Ready(a) = main.as_mut().poll(cx) {
            return Poll::Ready(Either::Main(a));
        }
        if std::mem::take(&mut first) || shared.woken.swap(false, Ordering::AcqRel) {
            if let Poll::Ready(b) = side.as_mut().poll(&mut Context::from_waker(&side_waker)) {
                return Poll::Ready(Either::Side(b));
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// A future that counts its polls and never completes.
    struct Counted<'a>(&'a AtomicUsize);

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_side_is_polled_only_when_woken() {
        let side_polls = AtomicUsize::new(0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let feeder = tokio::spawn(async move {
            for i in 0..100 {
                tx.send(i).unwrap();
                tokio::task::yield_now().await;
            }
        });
        let main = async {
            let mut sum = 0;
            while let Some(i) = rx.recv().await {
                sum += i;
            }
            sum
        };
        let side = async {
            Counted(&side_polls).await;
        };
        assert_eq!(race(main, side).await, Either::Main(4950));
        feeder.await.unwrap();
        assert_eq!(side_polls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_timer_wins_over_a_busy_main() {
        let main = async {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let side = tokio::time::sleep(Duration::from_millis(50));
        let started = tokio::time::Instant::now();
        assert_eq!(race(main, side).await, Either::Side(()));
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_side_woken_from_another_thread_completes() {
        let token = tokio_util::sync::CancellationToken::new();
        let cancel = token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            cancel.cancel();
        });
        let main = std::future::pending::<()>();
        assert_eq!(race(main, token.cancelled()).await, Either::Side(()));
    }
}
