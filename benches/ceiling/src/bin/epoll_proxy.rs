//! The epoll floor: a TCP proxy with nothing but the copy. One thread per core, each with its
//! own `SO_REUSEPORT` listener and `epoll` set (mio, edge-triggered); per connection two
//! 16 KiB buffers; a read shorter than the buffer is taken as "drained" (as tokio does), so
//! a request costs one `recv` and one `send` on each side.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const BUF: usize = 16 * 1024;
const LISTENER: Token = Token(usize::MAX);

/// One direction: bytes read from its source and not yet written to its destination.
struct Half {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
}

/// A proxied connection: `s[0]` the client, `s[1]` the upstream; `h[0]` client to upstream.
struct Pair {
    s: [TcpStream; 2],
    h: [Half; 2],
}

/// Writes what `h` holds to `dst`; `Ok(false)` when `dst` is full.
fn flush(h: &mut Half, dst: &TcpStream) -> std::io::Result<bool> {
    while h.start < h.end {
        match (&*dst).write(&h.buf[h.start..h.end]) {
            Ok(n) => h.start += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    h.start = 0;
    h.end = 0;
    Ok(true)
}

/// Moves bytes from `s[from]` to the other socket until one of them would block.
fn pump(p: &mut Pair, from: usize) -> std::io::Result<()> {
    let (src, dst) = (&p.s[from], &p.s[1 - from]);
    let h = &mut p.h[from];
    while !h.done {
        if !flush(h, dst)? {
            return Ok(());
        }
        if h.eof {
            let _ = dst.shutdown(Shutdown::Write);
            h.done = true;
            return Ok(());
        }
        match (&*src).read(&mut h.buf) {
            Ok(0) => h.eof = true,
            Ok(n) => {
                h.end = n;
                if n < BUF {
                    flush(h, dst)?;
                    return Ok(());
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn half() -> Half {
    Half {
        buf: vec![0; BUF].into_boxed_slice(),
        start: 0,
        end: 0,
        eof: false,
        done: false,
    }
}

fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let mut listener = TcpListener::from_std(ceiling::listener(listen)?);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(256);
    let mut pairs: Slab<Pair> = Slab::new();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let entry = pairs.vacant_entry();
                    let k = entry.key();
                    let p = entry.insert(Pair {
                        s: [client, server],
                        h: [half(), half()],
                    });
                    let rw = Interest::READABLE | Interest::WRITABLE;
                    poll.registry().register(&mut p.s[0], Token(2 * k), rw)?;
                    poll.registry()
                        .register(&mut p.s[1], Token(2 * k + 1), rw)?;
                }
                continue;
            }
            let k = ev.token().0 / 2;
            let Some(p) = pairs.get_mut(k) else { continue };
            let result = pump(p, 0).and_then(|()| pump(p, 1));
            if result.is_err() || (p.h[0].done && p.h[1].done) {
                let mut p = pairs.remove(k);
                let _ = poll.registry().deregister(&mut p.s[0]);
                let _ = poll.registry().deregister(&mut p.s[1]);
            }
        }
    }
}

fn main() {
    let (listen, upstream, threads) = ceiling::args("epoll_proxy");
    ceiling::run_threads(threads, move || serve(listen, upstream));
}
