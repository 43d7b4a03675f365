//! `forward()` on an io_uring event loop (`listener.io`): the same
//! connection, timers and outcomes, with the socket operations going through the loop's
//! ring ([`ringloop`]) instead of readiness and system calls.
//!
//! The copy keeps the epoll pump's memory rule — an idle connection owns no buffer — in the
//! ring's way: each direction keeps a `recv` armed that takes a buffer from the loop's pool
//! ([`POOL_BUFFERS`] of 16 KiB, picked by the kernel only when bytes arrive), and the bytes
//! go to the destination straight from it. Only what the destination cannot take at once
//! moves to a buffer of the connection's own, so slow readers cannot hold the pool.
//! Back-pressure is the same: a direction reads again only once the destination took
//! everything it read.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::pin;
use std::task::Poll;

use ringloop::TcpStream;

use super::activity::Activity;
use super::forward::Socket;
use super::pump::{Pump, Way, CHUNK};

/// Receive buffers in each loop's pool (of 16 KiB: 4 MiB a loop). A `recv` that
/// finds none waits for one to come back; a buffer is out only from the arrival of bytes
/// until the destination took them.
pub const POOL_BUFFERS: u16 = 256;

/// A loop's runtime: a ring of `entries` submissions and the receive-buffer pool.
///
/// # Errors
///
/// Where io_uring or its provided buffers (Linux 5.19+) are unavailable.
pub fn runtime(entries: u32) -> io::Result<ringloop::Runtime> {
    ringloop::Runtime::with_pool(entries, POOL_BUFFERS, CHUNK)
}

impl Socket for TcpStream {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        TcpStream::connect(addr).await
    }

    fn addresses(&self) -> io::Result<(SocketAddr, SocketAddr)> {
        let socket = self.get_ref();
        Ok((socket.peer_addr()?, socket.local_addr()?))
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.get_ref().take_error()
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.get_ref())
    }

    fn set_nodelay(&self) {
        let _ = self.get_ref().set_nodelay(true);
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send_all(bytes.to_vec(), 0, bytes.len()).await.0
    }

    async fn pump(client: &mut Self, server: &mut Self, observer: &Activity) -> io::Result<()> {
        pump(client, server, observer).await
    }

    async fn shutdown_write(&mut self) {
        let _ = self.get_ref().shutdown(Shutdown::Write);
    }
}

/// Copies both ways until both directions have ended; the first error ends both.
async fn pump(client: &TcpStream, server: &TcpStream, observer: &impl Pump) -> io::Result<()> {
    let (up_done, down_done) = (Cell::new(false), Cell::new(false));
    let mut up = pin!(copy(
        client,
        server,
        Way::Up,
        observer,
        &up_done,
        &down_done
    ));
    let mut down = pin!(copy(
        server,
        client,
        Way::Down,
        observer,
        &down_done,
        &up_done
    ));
    let (mut up_ended, mut down_ended) = (false, false);
    poll_fn(|cx| {
        if !up_ended {
            if let Poll::Ready(r) = up.as_mut().poll(cx) {
                r?;
                up_ended = true;
            }
        }
        if !down_ended {
            if let Poll::Ready(r) = down.as_mut().poll(cx) {
                r?;
                down_ended = true;
            }
        }
        if up_ended && down_ended {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction: `src` to `dst` until `src` ends. Its FIN is passed on with
/// `shutdown(SHUT_WR)` unless the other direction already ended (then dropping both
/// sockets closes them, as the epoll pump does).
async fn copy(
    src: &TcpStream,
    dst: &TcpStream,
    way: Way,
    observer: &impl Pump,
    done: &Cell<bool>,
    other_done: &Cell<bool>,
) -> io::Result<()> {
    loop {
        let Some(chunk) = src.recv_pooled().await? else {
            done.set(true);
            if !other_done.get() {
                dst.get_ref().shutdown(Shutdown::Write)?;
            }
            return Ok(());
        };
        let n = chunk.len();
        observer.on_read(way, n);
        // Usually the destination takes it all at once, straight from the pool's buffer.
        let (sent, chunk) = dst.send_nowait(chunk, 0, n).await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent < n {
            // A slow destination: the rest moves to a buffer of this connection's own and
            // the pool's buffer goes back; no more is read from `src` meanwhile.
            let rest = chunk.get(sent..).unwrap_or_default().to_vec();
            drop(chunk);
            let len = rest.len();
            observer.on_stall(way, true);
            dst.send_all(rest, 0, len).await.0?;
            observer.on_stall(way, false);
        }
    }
}
