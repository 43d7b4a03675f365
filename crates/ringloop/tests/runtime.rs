//! The runtime over real sockets on 127.0.0.1: tasks, wake-ups from other threads and from
//! tokio, accept/connect/recv/send, cancellation, and shutdown with operations in flight.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use ringloop::{spawn, Runtime, TcpListener, TcpStream};

fn runtime() -> Option<Runtime> {
    if !ringloop::available() {
        eprintln!("io_uring is not available here; skipped");
        return None;
    }
    Some(Runtime::new(64).expect("runtime"))
}

/// A tokio runtime whose handle, entered, serves tokio timers to a ringloop runtime.
fn tokio_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("tokio")
}

/// Gives the runtime `n` turns (the task wakes itself), so that spawned tasks run and
/// queued operations reach the kernel.
async fn yield_turns(n: usize) {
    let mut turns = 0;
    poll_fn(|cx| {
        if turns >= n {
            Poll::Ready(())
        } else {
            turns += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

fn listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

#[test]
fn block_on_returns_the_output_and_runs_spawned_tasks() {
    let Some(rt) = runtime() else { return };
    let hits = Rc::new(Cell::new(0));
    let out = rt
        .block_on({
            let hits = hits.clone();
            async move {
                for _ in 0..3 {
                    let hits = hits.clone();
                    assert!(spawn(async move { hits.set(hits.get() + 1) }).is_ok());
                }
                // Let the spawned tasks run.
                yield_turns(1).await;
                7
            }
        })
        .expect("block_on");
    assert_eq!(out, 7);
    assert_eq!(hits.get(), 3);
    assert!(spawn(async {}).is_err(), "no runtime outside block_on");
}

#[test]
fn a_wake_up_from_another_thread_reaches_a_waiting_loop() {
    let Some(rt) = runtime() else { return };
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let _ = tx.send(42);
    });
    let started = Instant::now();
    let got = rt
        .block_on(async move { rx.await.expect("sent") })
        .expect("block_on");
    assert_eq!(got, 42);
    assert!(started.elapsed() >= Duration::from_millis(50));
    sender.join().expect("sender");
}

#[test]
fn tokio_timers_fire_with_a_tokio_handle_entered() {
    let Some(rt) = runtime() else { return };
    let tokio_rt = tokio_timers();
    let _entered = tokio_rt.enter();
    let started = Instant::now();
    rt.block_on(tokio::time::sleep(Duration::from_millis(30)))
        .expect("block_on");
    assert!(started.elapsed() >= Duration::from_millis(30));
    let timed_out = rt
        .block_on(tokio::time::timeout(
            Duration::from_millis(20),
            std::future::pending::<()>(),
        ))
        .expect("block_on");
    assert!(timed_out.is_err());
}

#[test]
fn echoes_over_accept_recv_and_send() {
    let Some(rt) = runtime() else { return };
    let (l, addr) = listener();
    let listener = TcpListener::from_std(l).expect("listener");
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"hello ring").expect("write");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        s.read_to_end(&mut back).expect("read");
        back
    });
    rt.block_on(async move {
        let (stream, peer) = listener.accept().await.expect("accept");
        assert!(peer.ip().is_loopback());
        let mut buf = vec![0; 4];
        loop {
            let (n, b) = stream.recv(buf).await;
            let n = n.expect("recv");
            if n == 0 {
                break;
            }
            let (sent, b) = stream.send_all(b, 0, n).await;
            sent.expect("send");
            buf = b;
        }
        stream
            .get_ref()
            .shutdown(Shutdown::Write)
            .expect("shutdown");
    })
    .expect("block_on");
    assert_eq!(client.join().expect("client"), b"hello ring");
}

#[test]
fn connect_reaches_a_listener_and_reports_a_refusal() {
    let Some(rt) = runtime() else { return };
    let (l, addr) = listener();
    rt.block_on(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(stream.get_ref().peer_addr().expect("peer"), addr);
        let (accepted, _) = l.accept().expect("accepted");
        drop(accepted);
        drop(l);
        let refused = TcpStream::connect(addr).await.expect_err("nothing listens");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    })
    .expect("block_on");
}

#[test]
fn a_dropped_recv_is_cancelled_and_the_loop_goes_on() {
    let Some(rt) = runtime() else { return };
    let (l, addr) = listener();
    let tokio_rt = tokio_timers();
    let _entered = tokio_rt.enter();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        // Says nothing for a while, then one byte, then closes.
        std::thread::sleep(Duration::from_millis(100));
        let _ = s.write_all(b"x");
    });
    rt.block_on(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let timed_out =
            tokio::time::timeout(Duration::from_millis(20), stream.recv(vec![0; 64])).await;
        assert!(timed_out.is_err(), "nothing was sent yet");
        // The socket still works after the cancellation.
        let (n, buf) = stream.recv(vec![0; 64]).await;
        assert_eq!(n.expect("recv"), 1);
        assert_eq!(buf[0], b'x');
    })
    .expect("block_on");
    peer.join().expect("peer");
}

#[test]
fn dropping_the_runtime_with_pending_tasks_cancels_their_operations() {
    let Some(rt) = runtime() else { return };
    let (l, addr) = listener();
    let _client = std::net::TcpStream::connect(addr).expect("connect");
    let listener = TcpListener::from_std(l).expect("listener");
    rt.block_on(async move {
        // An accept that completes, and a recv that never will.
        let (stream, _) = listener.accept().await.expect("accept");
        assert!(spawn(async move {
            let _ = stream.recv(vec![0; 16]).await;
        })
        .is_ok());
        let _ = spawn(async move {
            let _ = listener.accept().await;
        });
        // One turn so that both operations are in flight.
        yield_turns(1).await;
    })
    .expect("block_on");
    let started = Instant::now();
    drop(rt);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop waits for cancellations only"
    );
}

#[test]
fn a_panicking_task_ends_alone() {
    let Some(rt) = runtime() else { return };
    let ran = Rc::new(Cell::new(false));
    let out = rt
        .block_on({
            let ran = ran.clone();
            async move {
                let _ = spawn(async { panic!("a task's own bug") });
                let _ = spawn(async move { ran.set(true) });
                yield_turns(2).await;
                1
            }
        })
        .expect("block_on");
    assert_eq!(out, 1);
    assert!(ran.get());
    assert_eq!(rt.panics(), 1);
}

/// A runtime with a pool of `count` receive buffers of 64 bytes.
fn pooled(count: u16) -> Option<Runtime> {
    if !ringloop::available() {
        eprintln!("io_uring is not available here; skipped");
        return None;
    }
    Some(Runtime::with_pool(64, count, 64).expect("runtime with a pool"))
}

#[test]
fn pooled_receives_take_a_buffer_only_while_bytes_are_in_it() {
    let Some(rt) = pooled(2) else { return };
    let (l, addr) = listener();
    // Three peers each send one message; two buffers serve all three, one at a time.
    let peers: Vec<_> = (0..3u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.write_all(&[b'a' + i; 10]).expect("write");
                s.shutdown(Shutdown::Write).expect("shutdown");
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            })
        })
        .collect();
    let got = rt
        .block_on(async move {
            let mut streams = Vec::new();
            for _ in 0..3 {
                streams.push(l.accept().expect("accept").0);
            }
            let mut got = Vec::new();
            for s in streams {
                let s = TcpStream::from_std(s).expect("stream");
                let first = s.recv_pooled().await.expect("recv").expect("bytes");
                got.push(first.to_vec());
                drop(first);
                assert!(
                    s.recv_pooled().await.expect("recv").is_none(),
                    "then the FIN"
                );
            }
            got
        })
        .expect("block_on");
    let mut got = got;
    got.sort();
    assert_eq!(got, vec![vec![b'a'; 10], vec![b'b'; 10], vec![b'c'; 10]]);
    for p in peers {
        p.join().expect("peer");
    }
}

/// A receive that leaves bytes in the socket is followed by one that reads at once; one
/// that drained it, by one that waits for bytes first (`IORING_RECVSEND_POLL_FIRST`).
/// Either way every byte arrives, in order, and the FIN after them.
#[test]
fn pooled_receives_get_every_byte_whether_or_not_bytes_wait_in_the_socket() {
    let Some(rt) = pooled(4) else { return };
    let (l, addr) = listener();
    let sent: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let expected = sent.clone();
    let peer = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        // A burst larger than a buffer (64 bytes here): bytes are left for the next receive.
        s.write_all(&sent[..600]).expect("write");
        // Then pauses, so that receives find the socket empty and wait.
        for chunk in sent[600..].chunks(100) {
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(chunk).expect("write");
        }
    });
    let (s, _) = l.accept().expect("accept");
    let got = rt
        .block_on(async move {
            let s = TcpStream::from_std(s).expect("stream");
            let mut got = Vec::new();
            while let Some(buf) = s.recv_pooled().await.expect("recv") {
                got.extend_from_slice(&buf);
            }
            got
        })
        .expect("block_on");
    peer.join().expect("peer");
    assert_eq!(got, expected);
}

#[test]
fn with_every_buffer_held_a_receive_waits_for_one_to_come_back() {
    let Some(rt) = pooled(1) else { return };
    let tokio_rt = tokio_timers();
    let _entered = tokio_rt.enter();
    let (l, addr) = listener();
    let senders: Vec<_> = (0..2u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.write_all(&[b'x' + i; 5]).expect("write");
                std::thread::sleep(Duration::from_millis(300));
            })
        })
        .collect();
    let (a, _) = l.accept().expect("accept");
    let (b, _) = l.accept().expect("accept");
    rt.block_on(async move {
        let (a, b) = (
            TcpStream::from_std(a).expect("a"),
            TcpStream::from_std(b).expect("b"),
        );
        let held = a.recv_pooled().await.expect("recv").expect("bytes");
        // The only buffer is held: b's receive cannot complete until it is dropped.
        let waited = tokio::time::timeout(Duration::from_millis(50), b.recv_pooled()).await;
        assert!(waited.is_err(), "no buffer left");
        let released_at = Instant::now();
        let release = async move {
            std::future::poll_fn(|cx| {
                if released_at.elapsed() >= Duration::from_millis(20) {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
            .await;
            drop(held);
        };
        let (got, ()) = tokio::join!(b.recv_pooled(), release);
        let got = got.expect("recv").expect("bytes");
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|&c| c == b'x' || c == b'y'));
    })
    .expect("block_on");
    for s in senders {
        s.join().expect("sender");
    }
}

#[test]
fn send_nowait_leaves_what_a_full_socket_cannot_take() {
    let Some(rt) = runtime() else { return };
    let (l, addr) = listener();
    // The peer never reads.
    let hold = std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        std::thread::sleep(Duration::from_millis(500));
        drop(s);
    });
    rt.block_on(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let chunk = vec![7u8; 1 << 20];
        let mut total = 0;
        loop {
            let (sent, back) = stream.send_nowait(chunk.clone(), 0, chunk.len()).await;
            drop(back);
            match sent {
                Ok(n) if n < chunk.len() => {
                    total += n;
                    break;
                }
                Ok(n) => total += n,
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
                    break;
                }
            }
            assert!(total < 256 << 20, "a socket buffer is not this large");
        }
        assert!(total > 0);
    })
    .expect("block_on");
    hold.join().expect("holder");
}

// ---- review tests ----

/// A task that stopped waiting for a pool buffer (its receive was dropped, by a timeout
/// say) leaves its waker in the pool's waiting list; the next buffer that comes back wakes
/// that task instead of one still waiting, which then waits with every buffer free.
#[test]
fn a_dropped_pool_waiter_does_not_swallow_the_wake_up_of_a_live_one() {
    let Some(rt) = pooled(1) else { return };
    let tokio_rt = tokio_timers();
    let _entered = tokio_rt.enter();
    let (l, addr) = listener();
    let senders: Vec<_> = (0..3u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.write_all(&[b'a' + i; 5]).expect("write");
                std::thread::sleep(Duration::from_millis(1500));
            })
        })
        .collect();
    let mut accepted: Vec<_> = (0..3).map(|_| l.accept().expect("accept").0).collect();
    std::thread::sleep(Duration::from_millis(50));
    let c = TcpStream::from_std(accepted.pop().unwrap()).expect("c");
    let b = TcpStream::from_std(accepted.pop().unwrap()).expect("b");
    let a = TcpStream::from_std(accepted.pop().unwrap()).expect("a");
    let got = Rc::new(Cell::new(None::<Duration>));
    rt.block_on({
        let got = got.clone();
        async move {
            let held = a.recv_pooled().await.expect("recv").expect("bytes");
            // W: waits for the only buffer (registered first).
            let _ = spawn({
                let got = got.clone();
                async move {
                    let _ = b.recv_pooled().await;
                    got.set(Some(Duration::ZERO));
                }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            // D: waits too (registered second), then gives up.
            let _ = spawn(async move {
                let _ = tokio::time::timeout(Duration::from_millis(20), c.recv_pooled()).await;
            });
            tokio::time::sleep(Duration::from_millis(60)).await;
            let released = Instant::now();
            drop(held);
            // W should now get the free buffer.
            while got.get().is_none() && released.elapsed() < Duration::from_millis(800) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if got.get().is_some() {
                got.set(Some(released.elapsed()));
            }
        }
    })
    .expect("block_on");
    for s in senders {
        s.join().expect("sender");
    }
    assert!(
        got.get().is_some(),
        "the live waiter never got the buffer freed 800 ms ago"
    );
}

/// An operation polled under a runtime other than the one it was submitted on would look
/// its key up in the wrong table (and could hand back a buffer the kernel still writes):
/// it panics instead, and when dropped there its memory is leaked, never freed.
#[test]
fn an_operation_polled_under_another_runtime_panics_and_keeps_its_memory() {
    let Some(rt_a) = runtime() else { return };
    let rt_b = Runtime::new(64).expect("runtime b");
    let (l, addr) = listener();
    let _a_peer = std::net::TcpStream::connect(addr).expect("connect a");
    let a = TcpStream::from_std(l.accept().expect("accept a").0).expect("a");
    // Runtime A: a recv on `a` (nothing there yet), polled once, then handed out.
    let mut fut = Box::pin(a.recv(vec![0u8; 16]));
    rt_a.block_on(poll_fn(|cx| {
        assert!(fut.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    }))
    .expect("block_on a");
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt_b.block_on(poll_fn(|cx| fut.as_mut().poll(cx)))
    }));
    let message = polled.expect_err("polling under B panics");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("another runtime") || message.contains("other than its own"),
        "{message}"
    );
    // Dropped under B: leaked, not freed (A's kernel recv may still write into it).
    rt_b.block_on(async move { drop(fut) }).expect("block_on b");
}

#[test]
fn recv_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    let (l, addr) = listener();
    let _c = std::net::TcpStream::connect(addr).expect("connect");
    let s = TcpStream::from_std(l.accept().expect("accept").0).expect("s");
    let f = s.recv(vec![0u8; 8]);
    is_send(&f);
}

#[test]
fn a_task_left_ready_runs_at_its_runtime_next_block_on_after_another_runtime_ran_here() {
    let (Some(a), Some(b)) = (runtime(), runtime()) else {
        return;
    };
    let ran = Rc::new(Cell::new(false));
    // The main future spawns a task and ends at once: the task is ready, not yet polled.
    a.block_on({
        let ran = ran.clone();
        async move {
            assert!(spawn(async move { ran.set(true) }).is_ok());
        }
    })
    .expect("block_on a");
    // Another runtime runs on this thread meanwhile, and is dropped.
    b.block_on(yield_turns(3)).expect("block_on b");
    drop(b);
    // The task is still ready: `a`'s next block_on runs it.
    let ran_then = a
        .block_on({
            let ran = ran.clone();
            async move {
                yield_turns(3).await;
                ran.get()
            }
        })
        .expect("block_on a again");
    assert!(ran_then, "the task's wake-up was lost to the other runtime");
}

#[test]
fn a_recv_dropped_outside_block_on_is_cancelled_and_takes_no_bytes() {
    let Some(rt) = runtime() else { return };
    let (l, addr) = listener();
    let tokio_rt = tokio_timers();
    let _entered = tokio_rt.enter();
    let mut client = std::net::TcpStream::connect(addr).expect("connect");
    let listener = TcpListener::from_std(l).expect("listener");
    let (stream, _) = rt
        .block_on(async { listener.accept().await.expect("accept") })
        .expect("block_on");
    // A recv polled once (its entry reaches the kernel as block_on returns), then dropped
    // where no runtime runs.
    let mut first = Box::pin(stream.recv(vec![0; 16]));
    rt.block_on(poll_fn(|cx| {
        assert!(first.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    }))
    .expect("block_on");
    drop(first);
    // A loop that looks (its own operation dropped meanwhile) before the byte arrives.
    rt.block_on(yield_turns(2)).expect("block_on");
    client.write_all(b"x").expect("write");
    // A few turns in which a recv still armed would take the byte.
    rt.block_on(yield_turns(2)).expect("block_on");
    // The byte goes to the next recv, not to the dropped one.
    let got = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(1), stream.recv(vec![0; 16])).await
        })
        .expect("block_on");
    let (n, buf) = got.expect("the byte went to the dropped recv");
    assert_eq!(n.expect("recv"), 1);
    assert_eq!(buf[0], b'x');
}
