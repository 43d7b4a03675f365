//! The byte pump of a proxied connection: both directions in one task, no buffer while idle.
//!
//! Each direction reads into its worker thread's scratch buffer and writes what it read to
//! the other socket in the same poll, so a connection whose peer keeps up never owns a
//! buffer (HAProxy and nginx release theirs while idle too). Only bytes the destination
//! does not take at once are copied into the direction's own `pending` buffer, and the
//! source is not read again until they are written: a slow reader slows its writer down
//! (TCP back-pressure), never the daemon's memory.
//!
//! End of stream: a FIN read on one side is passed on with `shutdown(SHUT_WR)` on the other
//! side — unless the other direction has already ended, in which case the pump is done and
//! dropping both sockets closes them (the close sends the FIN). That saves a system call
//! per connection and is what HAProxy does.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read at most per read call (and held at most per direction when the destination
/// is slow).
pub(super) const CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read buffer, one per worker thread: a direction reads into it and writes from it
    /// within one poll, so nothing in it outlives the poll.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// Which way bytes move, for [`Pump::on_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
}

/// One direction's state.
#[derive(Debug, Default)]
struct Half {
    /// Bytes read from the source that the destination has not taken yet.
    pending: Vec<u8>,
    /// How much of `pending` has been written.
    written: usize,
    /// The source sent its FIN (read returned 0).
    eof: bool,
    /// Everything read was written and the FIN passed on (or found unnecessary).
    done: bool,
    /// Bytes read from the source.
    bytes: u64,
}

/// What a pump observes while it runs.
pub(super) trait Pump {
    /// `n` bytes were read going `way`.
    fn on_read(&self, way: Way, n: usize);

    /// The destination of `way` stopped taking bytes (`true`: the direction holds bytes
    /// back and reads no more from its source) or took all of them again (`false`).
    fn on_stall(&self, _way: Way, _stalled: bool) {}
}

/// Copies bytes both ways between `client` and `server` until both directions have ended,
/// and returns the bytes read from the client and from the server.
///
/// # Errors
///
/// The first read or write error on either socket (the connection is over).
pub(super) async fn pump(
    client: &mut TcpStream,
    server: &mut TcpStream,
    observer: &impl Pump,
) -> io::Result<(u64, u64)> {
    let mut up = Half::default();
    let mut down = Half::default();
    poll_fn(|cx| {
        if !up.done {
            let down_done = down.done;
            if let Poll::Ready(r) = up.poll(cx, client, server, down_done, Way::Up, observer) {
                r?;
            }
        }
        if !down.done {
            let up_done = up.done;
            if let Poll::Ready(r) = down.poll(cx, server, client, up_done, Way::Down, observer) {
                r?;
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok((up.bytes, down.bytes)))
        } else {
            Poll::Pending
        }
    })
    .await
}

impl Half {
    /// Moves bytes from `src` to `dst` until one of them would block (Pending), or the
    /// direction is done (Ready(Ok)), or fails.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        other_done: bool,
        way: Way,
        observer: &impl Pump,
    ) -> Poll<io::Result<()>> {
        loop {
            // What the destination did not take last time goes first.
            while self.written < self.pending.len() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
            if !self.pending.is_empty() {
                // Caught up: hold no buffer while the connection is quiet.
                self.pending = Vec::new();
                self.written = 0;
                observer.on_stall(way, false);
            }
            if self.eof {
                if !other_done {
                    // Half-close: the peer may still answer the other way.
                    ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            ready!(self.read_through(cx, src, dst, way, observer))?;
        }
    }

    /// One read from `src` into the scratch buffer and one write of it to `dst`; what
    /// `dst` does not take moves to `pending`.
    fn read_through(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        way: Way,
        observer: &impl Pump,
    ) -> Poll<io::Result<()>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut *src).poll_read(cx, &mut buf))?;
            let data = buf.filled();
            if data.is_empty() {
                self.eof = true;
                return Poll::Ready(Ok(()));
            }
            self.bytes += data.len() as u64;
            observer.on_read(way, data.len());
            let taken = match Pin::new(&mut *dst).poll_write(cx, data) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => 0,
            };
            if taken < data.len() {
                self.pending.extend_from_slice(&data[taken..]);
                observer.on_stall(way, true);
            }
            Poll::Ready(Ok(()))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[derive(Default)]
    struct Count(AtomicU64, AtomicU64);

    impl Pump for Count {
        fn on_read(&self, way: Way, n: usize) {
            match way {
                Way::Up => self.0.fetch_add(n as u64, Ordering::Relaxed),
                Way::Down => self.1.fetch_add(n as u64, Ordering::Relaxed),
            };
        }
    }

    /// Two connected pairs: (client end, proxy's client side), (proxy's server side, server end).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let a = TcpStream::connect(addr).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        let c = TcpStream::connect(addr).await.unwrap();
        let (d, _) = l.accept().await.unwrap();
        ((a, b), (c, d))
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_fins_are_passed_on() {
        let ((mut client, mut proxy_client), (mut proxy_server, mut server)) = pairs().await;
        let pumping = tokio::spawn(async move {
            let counted = Count::default();
            let r = pump(&mut proxy_client, &mut proxy_server, &counted).await;
            (r, counted.0.into_inner(), counted.1.into_inner())
        });
        // Larger than the scratch buffer and than the socket buffers: the pump must hold
        // back and resume (the server reads only after the client finished writing).
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), big.len());
        assert!(got == big);
        // The client half-closed; the server still answers, then closes.
        server
            .write_all(b"answer after the client's FIN")
            .await
            .unwrap();
        drop(server);
        let back = writer.await.unwrap();
        assert_eq!(back, b"answer after the client's FIN");
        let (r, up, down) = pumping.await.unwrap();
        assert_eq!(r.unwrap(), (big.len() as u64, 29));
        assert_eq!((up, down), (big.len() as u64, 29));
    }

    #[tokio::test]
    async fn the_server_closing_first_ends_the_pump_after_the_client_does() {
        let ((mut client, mut proxy_client), (mut proxy_server, mut server)) = pairs().await;
        let pumping = tokio::spawn(async move {
            pump(&mut proxy_client, &mut proxy_server, &Count::default()).await
        });
        client.write_all(b"PING\n").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(b"PONG\n").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"PONG\n");
        // The client may still send after the server's FIN (a half-open stream).
        client.write_all(b"late\n").await.unwrap();
        drop(client);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"late\n");
        assert_eq!(pumping.await.unwrap().unwrap(), (10, 5));
    }
}
