//! What both minimal proxies share: the command line and the per-thread listening socket.

use std::net::{SocketAddr, TcpListener};

/// `LISTEN UPSTREAM [THREADS]`, from the command line; exits with a usage line when wrong.
pub fn args(name: &str) -> (SocketAddr, SocketAddr, usize) {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match a.as_slice() {
        [l, u] => l.parse().ok().zip(u.parse().ok()).map(|(l, u)| (l, u, 2)),
        [l, u, n] => l
            .parse()
            .ok()
            .zip(u.parse().ok())
            .zip(n.parse().ok())
            .map(|((l, u), n)| (l, u, n)),
        _ => None,
    };
    parsed.unwrap_or_else(|| {
        eprintln!(
            "usage: {name} LISTEN_ADDR UPSTREAM_ADDR [THREADS]   (IPv4, e.g. 127.0.0.1:9000)"
        );
        std::process::exit(2)
    })
}

/// A listening socket of its own for one thread (`SO_REUSEPORT`, as HAProxy's threads and
/// elastic-lb's event loops have), non-blocking.
pub fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Runs `serve` on `threads` threads and reports the first error.
pub fn run_threads(
    threads: usize,
    serve: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
) {
    let serve = std::sync::Arc::new(serve);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let serve = serve.clone();
            std::thread::spawn(move || serve())
        })
        .collect();
    for h in handles {
        if let Ok(Err(e)) = h.join() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
