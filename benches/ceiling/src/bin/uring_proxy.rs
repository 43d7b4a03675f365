//! The io_uring ceiling: the same proxy as `epoll_proxy`, on one io_uring per thread
//! (`SINGLE_ISSUER | DEFER_TASKRUN`). Multishot accept; per connection a `connect`, then one
//! `recv` armed per direction; a completed `recv` queues the `send` to the other side, and a
//! completed `send` re-arms the `recv`. Everything queued in one pass of the loop goes to the
//! kernel in the next single `io_uring_enter`, which also waits for the next completions.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

const BUF: usize = 16 * 1024;
const ACCEPT: u64 = u64::MAX;
/// Operation kinds, in the low 3 bits of `user_data` (the connection's key above them).
const CONNECT: u64 = 0;
const RECV: u64 = 1; // + direction
const SEND: u64 = 3; // + direction

/// A proxied connection: `fds[0]` the client, `fds[1]` the upstream; direction `d` reads
/// `fds[d]` into `buf[d]` and writes it to `fds[1 - d]`.
struct Conn {
    fds: [RawFd; 2],
    buf: [Box<[u8]>; 2],
    len: [usize; 2],
    off: [usize; 2],
    eof: [bool; 2],
    /// Operations the kernel still holds (their buffers must live until they complete).
    inflight: u32,
    dead: bool,
    upstream: Box<libc::sockaddr_in>,
}

struct Loop {
    ring: IoUring,
    conns: Slab<Conn>,
}

impl Loop {
    fn push(&mut self, e: squeue::Entry) -> std::io::Result<()> {
        // SAFETY: every buffer and address an entry points to lives in a `Conn`, which is
        // only freed once no operation of it is in flight (`inflight == 0`).
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                self.ring.submit()?;
            }
        }
        Ok(())
    }

    fn recv(&mut self, k: usize, d: usize) -> std::io::Result<()> {
        let c = &mut self.conns[k];
        c.inflight += 1;
        let e = opcode::Recv::new(types::Fd(c.fds[d]), c.buf[d].as_mut_ptr(), BUF as u32)
            .build()
            .user_data(((k as u64) << 3) | (RECV + d as u64));
        self.push(e)
    }

    fn send(&mut self, k: usize, d: usize) -> std::io::Result<()> {
        let c = &mut self.conns[k];
        c.inflight += 1;
        let rest = &c.buf[d][c.off[d]..c.len[d]];
        let e = opcode::Send::new(types::Fd(c.fds[1 - d]), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(((k as u64) << 3) | (SEND + d as u64));
        self.push(e)
    }

    /// Ends a connection on an error: its pending operations complete, then it is freed.
    fn kill(&mut self, k: usize) {
        let c = &mut self.conns[k];
        if !c.dead {
            c.dead = true;
            // SAFETY: plain system calls on descriptors this connection owns.
            unsafe {
                libc::shutdown(c.fds[0], libc::SHUT_RDWR);
                libc::shutdown(c.fds[1], libc::SHUT_RDWR);
            }
        }
        self.reap(k);
    }

    fn reap(&mut self, k: usize) {
        let c = &self.conns[k];
        if c.inflight == 0 && (c.dead || (c.eof[0] && c.eof[1])) {
            let c = self.conns.remove(k);
            // SAFETY: closes the descriptors this connection owns, once.
            unsafe {
                libc::close(c.fds[0]);
                libc::close(c.fds[1]);
            }
        }
    }

    fn accepted(&mut self, client: RawFd, upstream: libc::sockaddr_in) -> std::io::Result<()> {
        let one: libc::c_int = 1;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: plain system calls; `one` outlives them.
        let server = unsafe {
            let server = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            for fd in [client, server] {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    len,
                );
            }
            server
        };
        if server < 0 {
            // SAFETY: closes the accepted descriptor, which nothing else holds.
            unsafe { libc::close(client) };
            return Ok(());
        }
        let k = self.conns.insert(Conn {
            fds: [client, server],
            buf: [
                vec![0; BUF].into_boxed_slice(),
                vec![0; BUF].into_boxed_slice(),
            ],
            len: [0; 2],
            off: [0; 2],
            eof: [false; 2],
            inflight: 1,
            dead: false,
            upstream: Box::new(upstream),
        });
        let addr: *const libc::sockaddr_in = &*self.conns[k].upstream;
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let e = opcode::Connect::new(types::Fd(server), addr.cast(), size)
            .build()
            .user_data(((k as u64) << 3) | CONNECT);
        self.push(e)
    }

    fn completed(&mut self, k: usize, kind: u64, res: i32) -> std::io::Result<()> {
        let Some(c) = self.conns.get_mut(k) else {
            return Ok(());
        };
        c.inflight -= 1;
        if c.dead || res < 0 {
            self.kill(k);
            return Ok(());
        }
        match kind {
            CONNECT => {
                self.recv(k, 0)?;
                self.recv(k, 1)
            }
            1 | 2 => {
                let d = (kind - RECV) as usize;
                if res == 0 {
                    c.eof[d] = true;
                    // SAFETY: a system call on a descriptor this connection owns.
                    unsafe { libc::shutdown(c.fds[1 - d], libc::SHUT_WR) };
                    self.reap(k);
                    Ok(())
                } else {
                    c.len[d] = res as usize;
                    c.off[d] = 0;
                    self.send(k, d)
                }
            }
            _ => {
                let d = (kind - SEND) as usize;
                c.off[d] += res as usize;
                if c.off[d] < c.len[d] {
                    self.send(k, d)
                } else {
                    self.recv(k, d)
                }
            }
        }
    }
}

fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let SocketAddr::V4(up) = upstream else {
        return Err(std::io::Error::other("uring_proxy: IPv4 upstreams only"));
    };
    let upstream = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: up.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*up.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let listener = ceiling::listener(listen)?.into_raw_fd();
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(16384)
        .build(4096)?;
    let mut lp = Loop {
        ring,
        conns: Slab::new(),
    };
    let accept = || {
        opcode::AcceptMulti::new(types::Fd(listener))
            .build()
            .user_data(ACCEPT)
    };
    lp.push(accept())?;
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    loop {
        match lp.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            lp.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &done {
            if data == ACCEPT {
                if !cqueue::more(flags) {
                    lp.push(accept())?;
                }
                if res >= 0 {
                    lp.accepted(res, upstream)?;
                }
            } else {
                lp.completed((data >> 3) as usize, data & 7, res)?;
            }
        }
    }
}

fn main() {
    let (listen, upstream, threads) = ceiling::args("uring_proxy");
    ceiling::run_threads(threads, move || serve(listen, upstream));
}
