//! TCP over the ring: accept, connect, `recv` and `send` with owned buffers.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use std::future::poll_fn;
use std::task::Poll;

use io_uring::{cqueue, opcode, squeue, types};

use crate::op::Op;
use crate::pool::{PooledBuf, GROUP};
use crate::runtime::{with_core, IGNORED};

/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19): a `recv` waits for readiness before its
/// first attempt.
const POLL_FIRST: u16 = 1;

/// Owned memory an operation can send from: its address stays put while the operation
/// holds it.
///
/// # Safety
///
/// The kernel reads the bytes after the value has moved into the operation. `bytes` must
/// return the same memory for as long as the value lives, at an address that does not
/// change when the value moves (heap memory, not bytes stored inline).
pub unsafe trait IoBuf: Unpin + 'static {
    /// The bytes.
    fn bytes(&self) -> &[u8];
}

// SAFETY: a Vec's bytes are on the heap; moving the Vec does not move them, and nothing
// resizes it while an operation owns it.
unsafe impl IoBuf for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

// SAFETY: a pool buffer is a fixed slice of the pool's mapping, which outlives it.
unsafe impl IoBuf for PooledBuf {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A socket address in the kernel's form, on the heap (the kernel reads or writes it while
/// an operation is in flight).
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn empty() -> Box<RawAddr> {
        Box::new(RawAddr {
            // SAFETY: all-zero bytes are a valid sockaddr_storage.
            storage: unsafe { zeroed() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        })
    }

    fn from(addr: SocketAddr) -> Box<RawAddr> {
        let mut raw = RawAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in.
                unsafe {
                    std::ptr::write(
                        (&mut raw.storage as *mut libc::sockaddr_storage).cast(),
                        sin,
                    )
                };
                raw.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        (&mut raw.storage as *mut libc::sockaddr_storage).cast(),
                        sin6,
                    )
                };
                raw.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }

    fn to_socket_addr(&self) -> Option<SocketAddr> {
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in (its family says so).
                let sin: libc::sockaddr_in = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the kernel wrote a sockaddr_in6 (its family says so).
                let sin6: libc::sockaddr_in6 = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// A listening socket whose accepts go through the ring.
#[derive(Debug)]
pub struct TcpListener {
    inner: std::net::TcpListener,
}

impl TcpListener {
    /// Takes a bound, listening socket (switched to blocking mode: the ring waits for it).
    ///
    /// # Errors
    ///
    /// When its mode cannot be changed.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(false)?;
        Ok(TcpListener { inner: listener })
    }

    /// The socket, for its address and options.
    pub fn get_ref(&self) -> &std::net::TcpListener {
        &self.inner
    }

    /// The next connection, and its peer's address.
    ///
    /// # Errors
    ///
    /// What `accept4` reports (`EMFILE` and the like).
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let mut addr = RawAddr::empty();
        let entry = opcode::Accept::new(
            types::Fd(self.inner.as_raw_fd()),
            (&mut addr.storage as *mut libc::sockaddr_storage).cast(),
            &mut addr.len,
        )
        .flags(libc::SOCK_CLOEXEC)
        .build();
        // SAFETY: the entry points into `addr`, a heap allocation the operation owns.
        let done = unsafe { Op::submit(entry, addr) }
            .map_err(|(e, _)| e)?
            .returns_fd()
            .await;
        let fd = done.io()?;
        // SAFETY: a new descriptor from accept4, owned by nobody else.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd as i32) };
        let peer = done
            .data
            .to_socket_addr()
            .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
        Ok((
            TcpStream {
                inner: Some(stream),
                readable: AtomicBool::new(true),
            },
            peer,
        ))
    }
}

/// A connected TCP socket whose reads and writes go through the ring. Dropping it closes
/// it through the ring too, after the operations queued before.
#[derive(Debug)]
pub struct TcpStream {
    inner: Option<std::net::TcpStream>,
    /// The latest pooled receive left bytes in the socket (`IORING_CQE_F_SOCK_NONEMPTY`),
    /// or none completed yet: the next one tries to read at once. Otherwise it waits for
    /// bytes first (`IORING_RECVSEND_POLL_FIRST`), sparing the kernel an attempt that
    /// would find the socket empty, as it does after each answer of a request-response
    /// exchange.
    readable: AtomicBool,
}

impl TcpStream {
    /// Takes a connected socket (switched to blocking mode: the ring waits for it).
    ///
    /// # Errors
    ///
    /// When its mode cannot be changed.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(false)?;
        Ok(TcpStream {
            inner: Some(stream),
            readable: AtomicBool::new(true),
        })
    }

    /// Gives the socket back (to move it to another thread's runtime, say). Operations
    /// queued on it before must have completed.
    pub fn into_std(mut self) -> std::net::TcpStream {
        // Only `Drop` empties it, and `self` is not dropped before this.
        self.inner
            .take()
            .expect("ringloop: TcpStream used after drop")
    }

    /// The socket, for its addresses and options (`set_nodelay`, `shutdown`, …).
    pub fn get_ref(&self) -> &std::net::TcpStream {
        // Only `Drop` takes it out.
        self.inner
            .as_ref()
            .expect("ringloop: TcpStream used after drop")
    }

    /// Opens a connection to `addr`.
    ///
    /// # Errors
    ///
    /// What `socket` or `connect` reports (`ECONNREFUSED`, `ENETUNREACH`, …).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: a plain system call; the result is checked.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned by nobody else.
        let stream = TcpStream {
            inner: Some(unsafe { std::net::TcpStream::from_raw_fd(fd) }),
            readable: AtomicBool::new(true),
        };
        let raw = RawAddr::from(addr);
        let entry = opcode::Connect::new(
            types::Fd(fd),
            (&raw.storage as *const libc::sockaddr_storage).cast(),
            raw.len,
        )
        .build();
        // SAFETY: the entry points into `raw`, a heap allocation the operation owns.
        let done = unsafe { Op::submit(entry, raw) }.map_err(|(e, _)| e)?.await;
        done.io()?;
        Ok(stream)
    }

    /// Reads into `buf` (all of its length); returns how many bytes came (0: the peer
    /// closed its side) and the buffer.
    pub async fn recv(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let entry =
            opcode::Recv::new(types::Fd(self.get_ref().as_raw_fd()), buf.as_mut_ptr(), len).build();
        // SAFETY: the entry points into `buf`'s heap memory, which the operation owns.
        match unsafe { Op::submit(entry, buf) } {
            Ok(op) => {
                let done = op.await;
                (done.io().map(|n| n as usize), done.data)
            }
            Err((e, buf)) => (Err(e), buf),
        }
    }

    /// Writes `buf[start..end]`, or the part the socket takes; returns how many bytes went
    /// and the buffer. `MSG_NOSIGNAL`: a closed peer is an `EPIPE`, not a signal.
    pub async fn send<B: IoBuf>(&self, buf: B, start: usize, end: usize) -> (io::Result<usize>, B) {
        self.send_flags(buf, start, end, libc::MSG_NOSIGNAL).await
    }

    /// As [`send`](TcpStream::send), but never waits: what the socket cannot take at once
    /// is left (`WouldBlock` when it took nothing).
    pub async fn send_nowait<B: IoBuf>(
        &self,
        buf: B,
        start: usize,
        end: usize,
    ) -> (io::Result<usize>, B) {
        self.send_flags(buf, start, end, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .await
    }

    async fn send_flags<B: IoBuf>(
        &self,
        buf: B,
        start: usize,
        end: usize,
        flags: i32,
    ) -> (io::Result<usize>, B) {
        let Some(part) = buf.bytes().get(start..end) else {
            return (Err(io::ErrorKind::InvalidInput.into()), buf);
        };
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(types::Fd(self.get_ref().as_raw_fd()), part.as_ptr(), len)
            .flags(flags)
            .build();
        // SAFETY: the entry points into `buf`'s memory, which the operation owns and which
        // does not move with it.
        match unsafe { Op::submit(entry, buf) } {
            Ok(op) => {
                let done = op.await;
                (done.io().map(|n| n as usize), done.data)
            }
            Err((e, buf)) => (Err(e), buf),
        }
    }

    /// Reads into a buffer of the runtime's pool, picked when bytes arrive (see
    /// [`Runtime::with_pool`](crate::Runtime::with_pool)); `None` when the peer closed its
    /// side. With every buffer taken, waits for one to come back.
    ///
    /// # Errors
    ///
    /// What `recv` reports, or `Unsupported` when the runtime has no pool.
    pub async fn recv_pooled(&self) -> io::Result<Option<PooledBuf>> {
        let Some(pool) = with_core(|core| core.pool.clone()).flatten() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "ringloop: this runtime has no buffer pool",
            ));
        };
        loop {
            let entry = opcode::Recv::new(
                types::Fd(self.get_ref().as_raw_fd()),
                std::ptr::null_mut(),
                0,
            )
            .buf_group(GROUP)
            .ioprio(if self.readable.load(Relaxed) {
                0
            } else {
                POLL_FIRST
            })
            .build()
            .flags(squeue::Flags::BUFFER_SELECT);
            // SAFETY: the entry points at no memory of ours; the kernel picks a pool buffer,
            // which stays valid as long as the runtime (its core holds the pool).
            let done = unsafe { Op::submit(entry, ()) }.map_err(|(e, ())| e)?.await;
            let picked = cqueue::buffer_select(done.flags).map(|id| pool.take(id, 0));
            self.readable
                .store(cqueue::sock_nonempty(done.flags), Relaxed);
            if done.result == -libc::ENOBUFS {
                drop(picked);
                let mut registered = false;
                poll_fn(|cx| {
                    if registered || !pool.wait(cx.waker()) {
                        Poll::Ready(())
                    } else {
                        registered = true;
                        Poll::Pending
                    }
                })
                .await;
                continue;
            }
            let n = done.io()? as usize;
            return match picked {
                Some(buf) if n > 0 => Ok(Some(buf.with_len(n))),
                Some(_) | None if n == 0 => Ok(None),
                _ => Err(io::Error::other(
                    "ringloop: recv completed without a buffer",
                )),
            };
        }
    }

    /// Writes all of `buf[start..end]`.
    ///
    /// # Errors
    ///
    /// The first failed `send` (`EPIPE`, `ECONNRESET`, …), or `WriteZero`.
    pub async fn send_all(
        &self,
        mut buf: Vec<u8>,
        mut start: usize,
        end: usize,
    ) -> (io::Result<()>, Vec<u8>) {
        while start < end {
            let (sent, back) = self.send(buf, start, end).await;
            buf = back;
            match sent {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => start += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        let fd = stream.into_raw_fd();
        let queued = with_core(|core| {
            let close = opcode::Close::new(types::Fd(fd)).build().user_data(IGNORED);
            // SAFETY: a close points at no memory; the descriptor is ours to close.
            unsafe { core.push(&close) }.is_ok()
        });
        if queued != Some(true) {
            // SAFETY: the descriptor this stream owned; it is closed once.
            unsafe { libc::close(fd) };
        }
    }
}

/// Bytes in the send queue of the TCP socket `fd` that its peer has not acknowledged yet
/// (`SIOCOUTQ`): it shrinks while the peer's application reads what was sent. Works on any
/// TCP socket, whatever loop it belongs to. The caller keeps `fd` open for the call; a
/// descriptor that is not a socket is refused before the `ioctl` (whose request number
/// means other things to other devices).
///
/// # Errors
///
/// `EBADF`; `ENOTSOCK` for a descriptor that is not a socket; the `ioctl`'s own (`EINVAL`
/// for a socket that is not connected).
pub fn unacked_bytes(fd: std::os::fd::RawFd) -> io::Result<u32> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `stat` through the pointer, which points at a live local.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    let mut n: libc::c_int = 0;
    // SAFETY: on a socket, TIOCOUTQ (= SIOCOUTQ) writes one c_int through the pointer, which
    // points at a live local for the duration of the call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(u32::try_from(n).unwrap_or(0))
    }
}
