//! Addresses that may name a host: the client side of the command line (`elastic-lb stats
//! --admin`, `elastic-lb load --target`/`--admin`), upstream addresses in the file
//! (`[[backend.upstreams]] address`) and in the admin API. The daemon's own listening
//! addresses stay literal `IP:port`.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why a command-line address could not be used; one line naming the address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveAddrError {
    /// Not `host:port`, or the host name does not resolve.
    #[error("cannot resolve \"{addr}\": {source} (expected host:port)")]
    Unresolvable {
        /// The address as given.
        addr: String,
        /// The parse or lookup error.
        source: std::io::Error,
    },
    /// The host name resolved, but to no address at all.
    #[error("\"{addr}\" resolves to no address")]
    NoAddress {
        /// The address as given.
        addr: String,
    },
}

/// Parses a client-side address (`--target`, `--admin`): `host:port`, where the host may be
/// a name such as `localhost` (the first address it resolves to is used).
///
/// Usable as a clap `value_parser`.
///
/// # Errors
///
/// [`ResolveAddrError`] naming the address when it does not parse or resolve.
pub fn resolve_addr(s: &str) -> Result<SocketAddr, ResolveAddrError> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|source| ResolveAddrError::Unresolvable {
            addr: s.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| ResolveAddrError::NoAddress {
            addr: s.to_string(),
        })
}

/// serde `deserialize_with` for an address that may name a host ([`resolve_addr`]).
///
/// Resolution blocks: files are read before the runtime starts or off its worker threads.
pub(super) fn deserialize_resolved<'de, D>(deserializer: D) -> Result<SocketAddr, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    resolve_addr(&text).map_err(serde::de::Error::custom)
}

/// Whether two listening addresses cannot both be bound: the same port, and the same IP or
/// either one a wildcard (`0.0.0.0` or `[::]` takes the port on every address). Port 0
/// (the kernel picks) never collides.
pub fn listeners_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Whether connecting to `upstream` reaches the balancer's own `listener` (same port, and
/// the same IP, or a loopback one when the listener takes every address of its family —
/// `[::]` takes IPv4 too): a proxy that forwards to itself loops until its connection limit.
pub(crate) fn upstream_is_listener(upstream: SocketAddr, listener: SocketAddr) -> bool {
    let family = listener.is_ipv6() || upstream.is_ipv4();
    upstream.port() == listener.port()
        && (upstream.ip() == listener.ip()
            || (listener.ip().is_unspecified()
                && family
                && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())))
}

#[cfg(test)]
mod tests {
    use super::listeners_collide;

    #[test]
    fn an_upstream_on_the_listeners_own_address_is_the_balancer_itself() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        let is = super::upstream_is_listener;
        assert!(is(a("127.0.0.1:7070"), a("127.0.0.1:7070")));
        assert!(is(a("127.0.0.1:7070"), a("0.0.0.0:7070")));
        assert!(is(a("[::1]:7070"), a("[::]:7070")));
        assert!(is(a("127.0.0.1:7070"), a("[::]:7070")), "dual stack");
        assert!(!is(a("[::1]:7070"), a("0.0.0.0:7070")), "IPv4 only");
        assert!(!is(a("10.0.0.5:7070"), a("0.0.0.0:7070")), "another host");
        assert!(!is(a("127.0.0.1:7071"), a("127.0.0.1:7070")));
        assert!(!is(a("127.0.0.2:7070"), a("127.0.0.1:7070")));
    }

    #[test]
    fn listeners_collide_on_one_port_when_the_ips_meet() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        assert!(listeners_collide(a("127.0.0.1:7071"), a("127.0.0.1:7071")));
        assert!(listeners_collide(a("0.0.0.0:7071"), a("127.0.0.1:7071")));
        assert!(listeners_collide(a("127.0.0.1:7071"), a("[::]:7071")));
        assert!(!listeners_collide(a("127.0.0.1:7071"), a("127.0.0.2:7071")));
        assert!(!listeners_collide(a("0.0.0.0:7070"), a("127.0.0.1:7071")));
        assert!(!listeners_collide(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    use super::*;

    #[test]
    fn literal_addresses_need_no_lookup() {
        let addr = resolve_addr("127.0.0.1:7070").expect("literal v4");
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 7070)));
        let addr = resolve_addr("[::1]:80").expect("literal v6");
        assert_eq!(addr.port(), 80);
    }

    #[test]
    fn errors_name_the_address_on_one_line() {
        // No port: rejected before any lookup.
        let e = resolve_addr("foo").expect_err("no port");
        assert!(
            matches!(&e, ResolveAddrError::Unresolvable { addr, .. } if addr == "foo"),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.starts_with("cannot resolve \"foo\": "), "{msg}");
        assert!(msg.ends_with(" (expected host:port)"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let e = ResolveAddrError::NoAddress {
            addr: "example:1".to_string(),
        };
        assert_eq!(e.to_string(), "\"example:1\" resolves to no address");
    }

    #[test]
    fn upstream_host_names_resolve_when_the_file_is_read() {
        let config = crate::config::Config::from_toml(
            "[backend]\nmode = \"proxy\"\n[[backend.upstreams]]\naddress = \"localhost:9001\"\n",
            "x.toml",
        )
        .expect("localhost resolves");
        let address = config.backend.upstreams[0].address;
        assert!(address.ip().is_loopback(), "{address}");
        assert_eq!(address.port(), 9001);
        // Two names for one address are one upstream listed twice.
        let ip = if address.is_ipv4() {
            "127.0.0.1:9001"
        } else {
            "[::1]:9001"
        };
        let text = format!(
            "[backend]\nmode = \"proxy\"\n[[backend.upstreams]]\naddress = \"localhost:9001\"\n\
             [[backend.upstreams]]\naddress = \"{ip}\"\n"
        );
        let e = crate::config::Config::from_toml(&text, "x.toml").expect_err("listed twice");
        assert!(e.to_string().contains("address listed twice"), "{e}");
    }

    #[test]
    fn an_upstream_address_needs_a_port() {
        let text =
            "[backend]\nmode = \"proxy\"\n[[backend.upstreams]]\naddress = \"127.0.0.1:0\"\n";
        let e = crate::config::Config::from_toml(text, "x.toml").expect_err("port 0");
        assert_eq!(
            e.to_string(),
            "x.toml:4: backend.upstreams.address = \"127.0.0.1:0\": port 0: an upstream is \
             connected to on the port it listens on"
        );
    }
}
