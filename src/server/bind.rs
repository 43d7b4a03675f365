//! Binding the listening sockets with a chosen backlog (`listener.backlog`, SPEC §9).
//!
//! `TcpListener::bind` always asks for a backlog of 1024 (tokio) or 128 (std); a burst of
//! clients past it waits a full SYN retransmit (about a second) to be accepted. `main` binds
//! both the balancer's and the admin listener here, then hands them to
//! [`crate::Server::start`], which keeps taking already-bound sockets so tests can bind
//! `127.0.0.1:0` their own way.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Where Linux publishes the largest backlog it grants (`net.core.somaxconn`).
const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// Binds `addr` with `SO_REUSEADDR` (a restart need not wait for old connections in
/// TIME_WAIT) and `TCP_NODELAY` (accepted sockets inherit it on Linux, which saves a
/// system call per connection), and listens with `backlog` pending connections at most.
///
/// Must be called inside a tokio runtime.
///
/// # Errors
///
/// When the socket cannot be created, bound (address in use, not local, no permission) or
/// put into the listening state.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    // Best effort: sessions that need it on a system without inheritance set it again.
    let _ = socket.set_nodelay(true);
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The balancer's listening sockets, as the daemon will serve them.
#[derive(Debug)]
pub enum Listening {
    /// One socket, served on the runtime that starts the server (what tests bind).
    Shared(TcpListener),
    /// One socket per event-loop thread, all bound to one address ([`bind_group`]).
    Loops(Vec<std::net::TcpListener>),
}

impl From<TcpListener> for Listening {
    fn from(listener: TcpListener) -> Self {
        Listening::Shared(listener)
    }
}

impl Listening {
    /// Binds `addr` for `loops` event-loop threads, or once for the shared runtime when
    /// `loops` is 0. Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`bind`] and [`bind_group`].
    pub fn bind(addr: SocketAddr, backlog: u32, loops: usize) -> io::Result<Listening> {
        if loops == 0 {
            bind(addr, backlog).map(Listening::Shared)
        } else {
            bind_group(addr, backlog, loops).map(Listening::Loops)
        }
    }

    /// The address the sockets are bound to.
    ///
    /// # Errors
    ///
    /// When the socket's address cannot be read.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listening::Shared(listener) => listener.local_addr(),
            Listening::Loops(sockets) => sockets
                .first()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no socket"))?
                .local_addr(),
        }
    }
}

/// Binds `n` listening sockets (at least one) to `addr` with `SO_REUSEPORT`, one per event
/// loop: the kernel spreads new connections over them by a hash of the client's address
/// and port, so each loop accepts and serves its own share with no hand-off between threads
/// (nginx's `reuseport`; HAProxy binds one socket per thread the same way). Options and
/// backlog as [`bind`]. Must be called inside a tokio runtime.
///
/// `SO_REUSEPORT` would let a second process of the same user join the group and silently
/// take half of the connections. So the address is first bound once *without* it: a port
/// held by anyone — another group included — fails here with `AddrInUse`, as [`bind`] does.
/// That probe also fixes the port when `addr` asks for port 0.
///
/// # Errors
///
/// When a socket cannot be created, bound or put into the listening state.
pub fn bind_group(
    addr: SocketAddr,
    backlog: u32,
    n: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let probe = new_socket(addr)?;
    probe.set_reuseaddr(true)?;
    probe.bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    (0..n.max(1))
        .map(|_| {
            let socket = new_socket(addr)?;
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            let _ = socket.set_nodelay(true);
            socket.bind(addr)?;
            socket.listen(backlog)?.into_std()
        })
        .collect()
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
}

/// The kernel's backlog ceiling, when it can be read (Linux).
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string(SOMAXCONN_PATH)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The backlog the kernel will grant for `requested`: at most `somaxconn` when known.
pub fn effective_backlog(requested: u32, somaxconn: Option<u32>) -> u32 {
    somaxconn.map_or(requested, |ceiling| requested.min(ceiling.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn backlog_is_capped_by_somaxconn_when_known() {
        assert_eq!(effective_backlog(1024, Some(4096)), 1024);
        assert_eq!(effective_backlog(8192, Some(4096)), 4096);
        assert_eq!(effective_backlog(1024, None), 1024);
        assert_eq!(
            effective_backlog(16, Some(0)),
            1,
            "a zero ceiling still listens"
        );
    }

    #[tokio::test]
    async fn binds_port_zero_on_loopback_v4_and_v6() {
        let v4 = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 8).expect("bind v4");
        assert_ne!(v4.local_addr().expect("addr").port(), 0);
        // IPv6 may be disabled on the machine; only a successful bind is checked.
        if let Ok(v6) = bind("[::1]:0".parse().expect("v6 addr"), 8) {
            assert!(v6.local_addr().expect("addr").is_ipv6());
        }
    }

    #[tokio::test]
    async fn a_group_shares_one_port_and_no_one_else_can_join_it() {
        let group = bind_group(SocketAddr::from(([127, 0, 0, 1], 0)), 8, 3).expect("group");
        assert_eq!(group.len(), 3);
        let addr = group[0].local_addr().expect("addr");
        assert!(group.iter().all(|s| s.local_addr().ok() == Some(addr)));
        // Another group (another daemon of the same user) and a plain bind are refused.
        let e = bind_group(addr, 8, 2).expect_err("port taken by the group");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            bind(addr, 8).expect_err("taken").kind(),
            io::ErrorKind::AddrInUse
        );
        // And a group cannot take a port a plain listener holds.
        let plain = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 8).expect("bind");
        let e = bind_group(plain.local_addr().expect("addr"), 8, 2).expect_err("taken");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn every_socket_of_a_group_accepts() {
        let group = bind_group(SocketAddr::from(([127, 0, 0, 1], 0)), 64, 2).expect("group");
        let addr = group[0].local_addr().expect("addr");
        let listeners: Vec<TcpListener> = group
            .into_iter()
            .map(|s| TcpListener::from_std(s).expect("register"))
            .collect();
        // The kernel hashes each client's port: 64 clients reach both sockets.
        let mut clients = Vec::new();
        for _ in 0..64 {
            clients.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        for listener in &listeners {
            let (accepted, _) = listener.accept().await.expect("accept");
            assert!(accepted.nodelay().expect("nodelay"));
        }
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error() {
        let first = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 8).expect("bind");
        let addr = first.local_addr().expect("addr");
        let e = bind(addr, 8).expect_err("port taken");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
