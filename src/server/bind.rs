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
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    // Best effort: sessions that need it on a system without inheritance set it again.
    let _ = socket.set_nodelay(true);
    socket.bind(addr)?;
    socket.listen(backlog)
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
    async fn an_address_in_use_is_an_error() {
        let first = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 8).expect("bind");
        let addr = first.local_addr().expect("addr");
        let e = bind(addr, 8).expect_err("port taken");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
